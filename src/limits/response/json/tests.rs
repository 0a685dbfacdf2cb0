use super::*;
use crate::limits::response::testing::chunkings;
use crate::limits::response::Reported;

const CHAT: &str = r#"{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4o-mini-2024-07-18",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Hello! How can I assist you today?",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
    "completion_tokens_details": { "reasoning_tokens": 0, "audio_tokens": 0,
      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0 }
  },
  "service_tier": "default",
  "system_fingerprint": "fp_06737a9306"
}"#;

const CHAT_TOOL_CALL: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o",
"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
"function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],
"usage":{"prompt_tokens":50,"completion_tokens":17,"total_tokens":67}}"#;

const COMPLETIONS: &str = r#"{"id":"cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7","object":"text_completion","created":1589478378,
"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb",
"choices":[{"text":"\n\nThis is indeed a test","index":0,"logprobs":null,"finish_reason":"length"}],
"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;

const EMBEDDINGS: &str = r#"{"object":"list","data":[{"object":"embedding","embedding":[0.0023064255,-0.009327292,
-0.0028842222,0.015797347],"index":0}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;

const RESPONSES: &str = r#"{"id":"resp_67ccd2bed1ec8190","object":"response","created_at":1741476542,"status":"completed",
"error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-4.1-2025-04-14",
"output":[{"type":"message","id":"msg_67ccd2bf17f0","status":"completed","role":"assistant",
"content":[{"type":"output_text","text":"In a peaceful grove beneath a silver moon.","annotations":[]}]}],
"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,
"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled",
"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,
"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123},"user":null,"metadata":{}}"#;

const ANTHROPIC: &str = r#"{"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant",
"model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"Hi! My name is Claude."}],
"stop_reason":"end_turn","stop_sequence":null,
"usage":{"input_tokens":2095,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":503}}"#;

/// Feeds `body` every way it can arrive and checks each gives the same answer.
fn observe(body: &str) -> Observed {
    let mut answers = chunkings(body.as_bytes()).into_iter().map(|chunks| {
        let mut tap = JsonTap::new();
        for chunk in chunks {
            tap.feed(chunk);
        }
        tap.finish()
    });
    let first = answers.next().unwrap_or_default();
    for (i, other) in answers.enumerate() {
        assert_eq!(other, first, "chunking {i} disagrees");
    }
    first
}

fn reported(input: u64, output: u64) -> Option<Reported> {
    Some(Reported {
        input,
        output,
        ..Reported::default()
    })
}

#[test]
fn chat_body_reports_usage_model_and_content_bytes() {
    let seen = observe(CHAT);
    assert_eq!(seen.reported, reported(19, 10));
    assert_eq!(seen.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!(
        seen.generated_bytes,
        "Hello! How can I assist you today?".len() as u64
    );
}

#[test]
fn chat_tool_call_counts_arguments_as_generated() {
    let seen = observe(CHAT_TOOL_CALL);
    assert_eq!(seen.reported, reported(50, 17));
    assert_eq!(seen.generated_bytes, r#"{"city":"Paris"}"#.len() as u64);
}

#[test]
fn completions_body_reports_usage_and_text_bytes() {
    let seen = observe(COMPLETIONS);
    assert_eq!(seen.reported, reported(5, 7));
    assert_eq!(seen.model.as_deref(), Some("gpt-3.5-turbo-instruct"));
    assert_eq!(
        seen.generated_bytes,
        "\n\nThis is indeed a test".len() as u64
    );
}

#[test]
fn embeddings_body_reports_prompt_tokens_and_no_output() {
    let seen = observe(EMBEDDINGS);
    assert_eq!(seen.reported, reported(8, 0));
    assert_eq!(seen.model.as_deref(), Some("text-embedding-3-small"));
    assert_eq!(seen.generated_bytes, 0);
}

#[test]
fn responses_body_reports_input_and_output_tokens() {
    let seen = observe(RESPONSES);
    assert_eq!(seen.reported, reported(36, 87));
    assert_eq!(seen.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert_eq!(
        seen.generated_bytes,
        "In a peaceful grove beneath a silver moon.".len() as u64
    );
}

#[test]
fn anthropic_body_adds_cache_tokens_to_input() {
    let seen = observe(ANTHROPIC);
    assert_eq!(
        seen.reported,
        Some(Reported {
            input: 2095 + 100 + 2000,
            output: 503,
            cached_input: 2000,
            cache_write: 100
        })
    );
    assert_eq!(seen.model.as_deref(), Some("claude-sonnet-4-20250514"));
    assert_eq!(seen.generated_bytes, "Hi! My name is Claude.".len() as u64);
}

#[test]
fn error_body_reports_nothing() {
    let body = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    assert_eq!(observe(body), Observed::default());
}

#[test]
fn malformed_usage_reports_no_usage_but_keeps_the_rest() {
    let body = r#"{"model":"gpt-4o","choices":[{"message":{"content":"abcd"}}],
        "usage":{"prompt_tokens":"19","completion_tokens":10}}"#;
    let seen = observe(body);
    assert_eq!(seen.reported, None);
    assert_eq!(seen.model.as_deref(), Some("gpt-4o"));
    assert_eq!(seen.generated_bytes, 4);
}

#[test]
fn malformed_or_truncated_json_reports_nothing() {
    for body in [
        "",
        "not json",
        "[1,2,3]",
        "\"usage\"",
        &CHAT[..CHAT.len() - 2],
        &ANTHROPIC[..ANTHROPIC.len() / 2],
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2}} trailing"#,
        r#"{"model":7,"usage":{"prompt_tokens":1}}x"#,
    ] {
        assert_eq!(observe(body).reported, None, "{body}");
    }
}

#[test]
fn odd_member_types_are_ignored_not_fatal() {
    let body = r#"{"model":7,"choices":"none","output":{},"content":null,
        "usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
    let seen = observe(body);
    assert_eq!(seen.reported, reported(3, 4));
    assert_eq!(seen.model, None);
    assert_eq!(seen.generated_bytes, 0);
}

#[test]
fn responses_body_reports_cached_input() {
    let body = RESPONSES.replace(
        r#""input_tokens_details":{"cached_tokens":0}"#,
        r#""input_tokens_details":{"cached_tokens":30}"#,
    );
    let seen = observe(&body);
    assert_eq!(
        seen.reported.map(|r| (r.input, r.cached_input)),
        Some((36, 30))
    );
}

#[test]
fn chat_body_reports_cached_input() {
    let body = CHAT.replace(r#""cached_tokens": 0"#, r#""cached_tokens": 16"#);
    let seen = observe(&body);
    assert_eq!(
        seen.reported,
        Some(Reported {
            input: 19,
            output: 10,
            cached_input: 16,
            cache_write: 0
        })
    );
}

#[test]
fn escaped_keys_and_text_read_as_decoded() {
    // `\u0075sage` is `usage`; `\n` and `\u00e9` are 1 and 2 bytes of text,
    // a surrogate pair 4.
    let body = r#"{"mod\u0065l":"gpt\u002d4o","choices":[{"message":{"content":"a\nb\u00e9\ud83d\ude00"}}],
        "\u0075sage":{"prompt_tokens":1,"completion_tokens":2}}"#;
    let seen = observe(body);
    assert_eq!(seen.reported, reported(1, 2));
    assert_eq!(seen.model.as_deref(), Some("gpt-4o"));
    assert_eq!(seen.generated_bytes, 3 + 2 + 4);
}

#[test]
fn the_last_occurrence_of_a_member_wins() {
    let body = r#"{"model":"a","model":"b","choices":[{"text":"xx","text":"yyy"}],
        "usage":{"prompt_tokens":1,"completion_tokens":1},"usage":{"prompt_tokens":2,"completion_tokens":2}}"#;
    let seen = observe(body);
    assert_eq!(seen.reported, reported(2, 2));
    assert_eq!(seen.model.as_deref(), Some("b"));
    assert_eq!(seen.generated_bytes, 3);
    let body = r#"{"model":"a","model":null,"usage":{"prompt_tokens":1},"usage":null}"#;
    assert_eq!(observe(body), Observed::default());
}

#[test]
fn a_model_too_long_to_price_is_ignored() {
    let long = "m".repeat(crate::limits::response::MODEL_CAP + 1);
    let body = format!(r#"{{"model":"{long}","usage":{{"prompt_tokens":1}}}}"#);
    let seen = observe(&body);
    assert_eq!(seen.model, None);
    assert_eq!(seen.reported, reported(1, 0));
}
