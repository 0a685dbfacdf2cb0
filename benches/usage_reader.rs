//! Criterion bench of reading usage out of an answer: the old whole-parse
//! readers (serde_json over the whole body, or over each event's data; kept
//! as the fuzzing reference in `scopegate::fuzzing`) against the streaming
//! readers (`JsonTap`, `SseTap`), on a typical chat answer of ~1.5 KiB and a
//! typical chat stream of ~50 chunks, fed as the network would (pieces of
//! 1,400 bytes).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use scopegate::fuzzing::{reference_json, whole_parse_sse};
use scopegate::limits::response::{JsonTap, SseTap};

/// A chat completion of about 1.5 KiB, as OpenAI sends it.
fn chat_answer() -> Vec<u8> {
    let content = "Sure! Here is a short overview of how the proxy counts tokens: it reserves \
        an estimate before forwarding, then replaces the reservation by the usage the upstream \
        reported once the answer ends. When no usage is reported, the answer is estimated from \
        the bytes of generated text it carried, a quarter of a token per byte. Cached input is \
        counted apart so it can be priced apart. Budgets are kept per key and per workspace, for \
        the current period, and survive restarts. Is there anything else you would like to know \
        about it, or shall I go into the details of one of these steps?";
    format!(
        r#"{{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4o-mini-2024-07-18",
  "choices": [
    {{
      "index": 0,
      "message": {{
        "role": "assistant",
        "content": "{content}",
        "refusal": null,
        "annotations": []
      }},
      "logprobs": null,
      "finish_reason": "stop"
    }}
  ],
  "usage": {{
    "prompt_tokens": 419,
    "completion_tokens": 118,
    "total_tokens": 537,
    "prompt_tokens_details": {{ "cached_tokens": 256, "audio_tokens": 0 }},
    "completion_tokens_details": {{ "reasoning_tokens": 0, "audio_tokens": 0,
      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0 }}
  }},
  "service_tier": "default",
  "system_fingerprint": "fp_06737a9306"
}}"#
    )
    .into_bytes()
}

/// A chat stream of 50 chunks with `include_usage`: a role chunk, 47 content
/// chunks, a finish chunk, the usage chunk, `[DONE]`.
fn chat_stream() -> Vec<u8> {
    let head = r#"{"id":"chatcmpl-B9P8v1","object":"chat.completion.chunk","created":1741580000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":["#;
    let mut out = String::new();
    let mut chunk = |choices: &str, usage: &str| {
        out.push_str(&format!("data: {head}{choices}],\"usage\":{usage}}}\n\n"));
    };
    chunk(
        r#"{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}"#,
        "null",
    );
    for i in 0..47 {
        chunk(
            &format!(
                r#"{{"index":0,"delta":{{"content":" token{i}"}},"logprobs":null,"finish_reason":null}}"#
            ),
            "null",
        );
    }
    chunk(
        r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}"#,
        "null",
    );
    // The usage-only chunk has no choices.
    out.push_str(&format!(
        "data: {}],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":48,\"total_tokens\":57,\"prompt_tokens_details\":{{\"cached_tokens\":0,\"audio_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}}}}\n\n",
        head
    ));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

const PIECE: usize = 1400;

fn bench_json(c: &mut Criterion) {
    let body = chat_answer();
    // Both readers must find the same thing, or the comparison means nothing.
    let mut tap = JsonTap::new();
    tap.feed(&body);
    assert_eq!(Some(tap.finish()), reference_json(&body));
    let mut group = c.benchmark_group("usage_json_chat_answer");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("whole_parse_serde", |b| {
        b.iter(|| {
            // The old reader collected the body, then parsed it.
            let mut held = Vec::new();
            for piece in body.chunks(PIECE) {
                held.extend_from_slice(black_box(piece));
            }
            black_box(reference_json(&held))
        })
    });
    group.bench_function("streaming", |b| {
        b.iter(|| {
            let mut tap = JsonTap::new();
            for piece in body.chunks(PIECE) {
                tap.feed(black_box(piece));
            }
            black_box(tap.finish())
        })
    });
    group.finish();
}

fn bench_sse(c: &mut Criterion) {
    let stream = chat_stream();
    let mut tap = SseTap::new(false);
    tap.observe(&stream);
    assert_eq!(tap.observed(), whole_parse_sse(&stream));
    assert!(tap.observed().reported.is_some());
    let mut group = c.benchmark_group("usage_sse_chat_stream_50_chunks");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("whole_parse_serde", |b| {
        b.iter(|| black_box(whole_parse_sse(black_box(&stream))))
    });
    group.bench_function("streaming", |b| {
        b.iter(|| {
            let mut tap = SseTap::new(false);
            for piece in stream.chunks(PIECE) {
                tap.observe(black_box(piece));
            }
            black_box(tap.observed())
        })
    });
    group.bench_function("streaming_strip", |b| {
        let mut out = Vec::with_capacity(stream.len());
        b.iter(|| {
            out.clear();
            let mut tap = SseTap::new(true);
            for piece in stream.chunks(PIECE) {
                tap.feed(black_box(piece), &mut out);
            }
            tap.finish(&mut out);
            black_box(tap.observed())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_json, bench_sse);
criterion_main!(benches);
