use super::*;
use crate::limits::response::testing::chunkings;

/// An OpenAI chat stream as sent with `stream_options.include_usage`.
const CHAT_WITH_USAGE: &str = r#"data: {"id":"chatcmpl-B9P8v1","object":"chat.completion.chunk","created":1741580000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B9P8v1","object":"chat.completion.chunk","created":1741580000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B9P8v1","object":"chat.completion.chunk","created":1741580000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"content":" there, \"friend\"!"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B9P8v1","object":"chat.completion.chunk","created":1741580000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}

data: {"id":"chatcmpl-B9P8v1","object":"chat.completion.chunk","created":1741580000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}

data: [DONE]

"#;

/// The same stream as sent without `include_usage`.
const CHAT_WITHOUT_USAGE: &str = r#"data: {"id":"chatcmpl-B9P8v1","object":"chat.completion.chunk","created":1741580000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-B9P8v1","object":"chat.completion.chunk","created":1741580000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-B9P8v1","object":"chat.completion.chunk","created":1741580000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"content":" there, \"friend\"!"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-B9P8v1","object":"chat.completion.chunk","created":1741580000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}

data: [DONE]

"#;

/// "Hello" + ` there, "friend"!`
const CHAT_TEXT_BYTES: u64 = 5 + 17;

/// A chat stream whose answer is a tool call, with usage requested.
const CHAT_TOOL_CALL: &str = r#"data: {"id":"chatcmpl-T","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-T","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-T","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-T","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":null}

data: {"id":"chatcmpl-T","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":80,"completion_tokens":16,"total_tokens":96}}

data: [DONE]

"#;

/// A legacy completions stream with `include_usage`.
const COMPLETIONS_WITH_USAGE: &str = r#"data: {"id":"cmpl-AZ1","object":"text_completion","created":1741580000,"choices":[{"text":"\n\n","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct","usage":null}

data: {"id":"cmpl-AZ1","object":"text_completion","created":1741580000,"choices":[{"text":"This is a test","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct","usage":null}

data: {"id":"cmpl-AZ1","object":"text_completion","created":1741580000,"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"model":"gpt-3.5-turbo-instruct","usage":null}

data: {"id":"cmpl-AZ1","object":"text_completion","created":1741580000,"model":"gpt-3.5-turbo-instruct","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}

data: [DONE]

"#;

/// The same completions stream without `include_usage`.
const COMPLETIONS_WITHOUT_USAGE: &str = r#"data: {"id":"cmpl-AZ1","object":"text_completion","created":1741580000,"choices":[{"text":"\n\n","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}

data: {"id":"cmpl-AZ1","object":"text_completion","created":1741580000,"choices":[{"text":"This is a test","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}

data: {"id":"cmpl-AZ1","object":"text_completion","created":1741580000,"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"model":"gpt-3.5-turbo-instruct"}

data: [DONE]

"#;

/// A Responses API stream.
const RESPONSES: &str = r#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_67c9fdcecf","object":"response","created_at":1741290958,"status":"in_progress","error":null,"model":"gpt-4.1-2025-04-14","output":[],"usage":null,"metadata":{}}}

event: response.in_progress
data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_67c9fdcecf","object":"response","created_at":1741290958,"status":"in_progress","model":"gpt-4.1-2025-04-14","output":[],"usage":null}}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_67c9fdcf37","type":"message","status":"in_progress","role":"assistant","content":[]}}

event: response.content_part.added
data: {"type":"response.content_part.added","sequence_number":3,"item_id":"msg_67c9fdcf37","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_67c9fdcf37","output_index":0,"content_index":0,"delta":"Hi"}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_67c9fdcf37","output_index":0,"content_index":0,"delta":" there! ✨"}

event: response.output_text.done
data: {"type":"response.output_text.done","sequence_number":6,"item_id":"msg_67c9fdcf37","output_index":0,"content_index":0,"text":"Hi there! ✨"}

event: response.output_item.done
data: {"type":"response.output_item.done","sequence_number":7,"output_index":0,"item":{"id":"msg_67c9fdcf37","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there! ✨","annotations":[]}]}}

event: response.completed
data: {"type":"response.completed","sequence_number":8,"response":{"id":"resp_67c9fdcecf","object":"response","created_at":1741290958,"status":"completed","error":null,"model":"gpt-4.1-2025-04-14","output":[{"id":"msg_67c9fdcf37","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there! ✨","annotations":[]}]}],"usage":{"input_tokens":37,"input_tokens_details":{"cached_tokens":0},"output_tokens":11,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48},"metadata":{}}}

"#;

/// An Anthropic messages stream with a text block and a tool-use block.
const ANTHROPIC: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-20250514","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":20,"cache_read_input_tokens":300,"output_tokens":2}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", let's check."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"Paris\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"#;

/// Feeds `input` every way it can arrive, checks every way gives the same
/// output and observation, and returns them.
fn run(strip: bool, input: &str) -> (String, Observed) {
    let mut answers = chunkings(input.as_bytes()).into_iter().map(|chunks| {
        let mut tap = SseTap::new(strip);
        let mut out = Vec::new();
        for chunk in chunks {
            let before = out.len();
            tap.feed(chunk, &mut out);
            if !strip {
                assert_eq!(&out[before..], chunk, "pass-through must forward at once");
            }
        }
        tap.finish(&mut out);
        (out, tap.observed())
    });
    let first = answers.next().unwrap_or_default();
    for (i, other) in answers.enumerate() {
        assert_eq!(other.1, first.1, "chunking {i} observes differently");
        assert!(other.0 == first.0, "chunking {i} forwards different bytes");
    }
    (String::from_utf8_lossy(&first.0).into_owned(), first.1)
}

fn reported(input: u64, output: u64) -> Option<Reported> {
    Some(Reported {
        input,
        output,
        ..Reported::default()
    })
}

fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

fn cr(text: &str) -> String {
    text.replace('\n', "\r")
}

#[test]
fn chat_stream_passes_through_and_reports_the_usage_chunk() {
    let (out, seen) = run(false, CHAT_WITH_USAGE);
    assert_eq!(out, CHAT_WITH_USAGE);
    assert_eq!(seen.reported, reported(9, 6));
    assert_eq!(seen.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!(seen.generated_bytes, CHAT_TEXT_BYTES);
}

#[test]
fn strip_mode_gives_the_client_the_stream_without_include_usage() {
    let (out, seen) = run(true, CHAT_WITH_USAGE);
    assert_eq!(out, CHAT_WITHOUT_USAGE);
    assert_eq!(seen.reported, reported(9, 6));
    assert_eq!(seen.generated_bytes, CHAT_TEXT_BYTES);
}

#[test]
fn strip_mode_handles_crlf_and_cr_framing() {
    for frame in [crlf, cr] {
        let (out, seen) = run(true, &frame(CHAT_WITH_USAGE));
        assert_eq!(out, frame(CHAT_WITHOUT_USAGE));
        assert_eq!(seen.reported, reported(9, 6));
        let (out, seen) = run(false, &frame(CHAT_WITH_USAGE));
        assert_eq!(out, frame(CHAT_WITH_USAGE));
        assert_eq!(seen.reported, reported(9, 6));
    }
}

#[test]
fn strip_mode_leaves_a_stream_without_usage_untouched() {
    let (out, seen) = run(true, CHAT_WITHOUT_USAGE);
    assert_eq!(out, CHAT_WITHOUT_USAGE);
    assert_eq!(seen.reported, None);
    assert_eq!(seen.generated_bytes, CHAT_TEXT_BYTES);
}

#[test]
fn completions_stream_reports_usage_and_strips_to_the_plain_stream() {
    let (out, seen) = run(false, COMPLETIONS_WITH_USAGE);
    assert_eq!(out, COMPLETIONS_WITH_USAGE);
    assert_eq!(seen.reported, reported(5, 7));
    assert_eq!(seen.model.as_deref(), Some("gpt-3.5-turbo-instruct"));
    assert_eq!(seen.generated_bytes, 2 + 14);
    let (out, stripped) = run(true, COMPLETIONS_WITH_USAGE);
    assert_eq!(out, COMPLETIONS_WITHOUT_USAGE);
    assert_eq!(stripped, seen);
}

#[test]
fn chat_tool_call_arguments_count_as_generated() {
    let (_, seen) = run(false, CHAT_TOOL_CALL);
    assert_eq!(seen.reported, reported(80, 16));
    assert_eq!(seen.generated_bytes, r#"{"city":"Paris"}"#.len() as u64);
}

#[test]
fn responses_stream_reports_usage_from_response_completed() {
    for input in [RESPONSES.to_owned(), crlf(RESPONSES)] {
        let (out, seen) = run(false, &input);
        assert_eq!(out, input);
        assert_eq!(seen.reported, reported(37, 11));
        assert_eq!(seen.model.as_deref(), Some("gpt-4.1-2025-04-14"));
        assert_eq!(seen.generated_bytes, "Hi there! ✨".len() as u64);
    }
}

#[test]
fn anthropic_stream_reports_start_input_plus_cache_and_last_delta_output() {
    for input in [ANTHROPIC.to_owned(), crlf(ANTHROPIC), cr(ANTHROPIC)] {
        let (out, seen) = run(false, &input);
        assert_eq!(out, input);
        assert_eq!(
            seen.reported,
            Some(Reported {
                input: 472 + 20 + 300,
                output: 89,
                cached_input: 300,
                cache_write: 20
            })
        );
        assert_eq!(seen.model.as_deref(), Some("claude-sonnet-4-20250514"));
        let text = "Okay, let's check.".len() + r#"{"location": "Paris"}"#.len();
        assert_eq!(seen.generated_bytes, text as u64);
    }
}

#[test]
fn anthropic_event_name_alone_identifies_the_event() {
    // Without `type` in the data, the `event:` line names it.
    let input = "event: message_start\ndata: {\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":3}}}\n\n\
                 event: message_delta\ndata: {\"usage\":{\"output_tokens\":4}}\n\n";
    let (_, seen) = run(false, input);
    assert_eq!(seen.reported, reported(3, 4));
    assert_eq!(seen.model.as_deref(), Some("claude-x"));
}

#[test]
fn anthropic_delta_repeating_input_counts_replaces_the_start() {
    let input = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"cache_read_input_tokens\":5}}}\n\n\
                 event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4}}\n\n\
                 event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":50,\"output_tokens\":9}}\n\n";
    let (_, seen) = run(false, input);
    assert_eq!(
        seen.reported,
        Some(Reported {
            input: 60,
            output: 9,
            cached_input: 50,
            cache_write: 0
        })
    );
}

#[test]
fn anthropic_stream_cut_before_message_delta_reports_no_usage() {
    let cut = ANTHROPIC.find("event: message_delta").unwrap_or(0);
    let (_, seen) = run(false, &ANTHROPIC[..cut]);
    assert_eq!(seen.reported, None);
    assert_eq!(seen.reported_input.map(|r| r.input), Some(472 + 20 + 300));
    assert_eq!(seen.model.as_deref(), Some("claude-sonnet-4-20250514"));
    assert!(seen.generated_bytes > 0);
}

#[test]
fn stream_cut_before_the_usage_chunk_reports_no_usage_but_counts_text() {
    let cut = CHAT_WITH_USAGE.find(r#"data: {"id":"chatcmpl-B9P8v1","object":"chat.completion.chunk","created":1741580000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[],"#).unwrap_or(0);
    for strip in [false, true] {
        let (out, seen) = run(strip, &CHAT_WITH_USAGE[..cut]);
        assert_eq!(seen.reported, None);
        assert_eq!(seen.generated_bytes, CHAT_TEXT_BYTES);
        if strip {
            assert_eq!(out, CHAT_WITHOUT_USAGE.replace("data: [DONE]\n\n", ""));
        }
    }
}

#[test]
fn an_event_the_stream_cuts_short_is_forwarded_but_not_read() {
    // The usage chunk without its closing blank line.
    let cut = CHAT_WITH_USAGE.find("data: [DONE]").unwrap_or(0) - 1;
    for strip in [false, true] {
        let (out, seen) = run(strip, &CHAT_WITH_USAGE[..cut]);
        assert_eq!(seen.reported, None);
        assert!(out.ends_with("\"rejected_prediction_tokens\":0}}}\n"));
    }
}

#[test]
fn strip_mode_forwards_an_event_as_soon_as_its_blank_line_arrives() {
    let mut tap = SseTap::new(true);
    let mut out = Vec::new();
    let first_end = CHAT_WITH_USAGE.find("\n\n").unwrap_or(0) + 2;
    let first = &CHAT_WITH_USAGE.as_bytes()[..first_end];
    // Everything but the blank line: held.
    tap.feed(&first[..first.len() - 1], &mut out);
    assert!(out.is_empty());
    // The blank line: released, edited.
    tap.feed(&first[first.len() - 1..], &mut out);
    let expected_end = CHAT_WITHOUT_USAGE.find("\n\n").unwrap_or(0) + 2;
    assert_eq!(out, CHAT_WITHOUT_USAGE.as_bytes()[..expected_end]);
    // A piece ending on an event boundary goes out whole, at once.
    out.clear();
    let second_end = first_end + CHAT_WITH_USAGE[first_end..].find("\n\n").unwrap_or(0) + 2;
    tap.feed(&CHAT_WITH_USAGE.as_bytes()[first_end..second_end], &mut out);
    assert!(out.ends_with(b"\n\n"));
    assert!(!out.is_empty());
}

#[test]
fn crlf_split_between_cr_and_lf_after_a_dropped_event_drops_the_lf_too() {
    let usage_only =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\r\n\r\n";
    let done = "data: [DONE]\r\n\r\n";
    let mut tap = SseTap::new(true);
    let mut out = Vec::new();
    tap.feed(&usage_only.as_bytes()[..usage_only.len() - 1], &mut out);
    // The event ended at the `\r`: dropped already, nothing out.
    assert!(out.is_empty());
    tap.feed(b"\n", &mut out);
    tap.feed(done.as_bytes(), &mut out);
    tap.finish(&mut out);
    assert_eq!(out, done.as_bytes());
    assert_eq!(tap.observed().reported, reported(1, 2));
}

#[test]
fn null_usage_member_is_cut_wherever_it_sits() {
    let cases = [
        (r#"{"usage":null,"a":1}"#, r#"{"a":1}"#),
        (r#"{"a":1,"usage":null}"#, r#"{"a":1}"#),
        (
            r#"{"a":1,"usage":null,"b":[1,{"usage":null}]}"#,
            r#"{"a":1,"b":[1,{"usage":null}]}"#,
        ),
        (r#"{"a":1, "usage": null, "b":2}"#, r#"{"a":1, "b":2}"#),
        (r#"{ "a" : "}" , "usage" : null }"#, r#"{ "a" : "}" }"#),
        (r#"{"usage":null}"#, r#"{}"#),
        (
            r#"{"choices":[{"delta":{"content":"\"usage\":null,"}}],"usage":null}"#,
            r#"{"choices":[{"delta":{"content":"\"usage\":null,"}}]}"#,
        ),
    ];
    for (with, without) in cases {
        let input = format!("data: {with}\n\n");
        let (out, _) = run(true, &input);
        assert_eq!(out, format!("data: {without}\n\n"), "{with}");
    }
}

#[test]
fn nested_or_non_null_usage_is_not_touched() {
    for data in [
        r#"{"a":{"usage":null}}"#,
        r#"{"usage":0,"choices":[{}]}"#,
        r#"{"usage":"null"}"#,
        r#"{"\u0075sage":null}"#,
        r#"[{"usage":null}]"#,
    ] {
        let input = format!("data: {data}\n\n");
        let (out, _) = run(true, &input);
        assert_eq!(out, input);
    }
}

#[test]
fn multi_line_data_is_joined_and_read_but_not_edited() {
    let input = "data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}],\ndata: \"usage\":null}\n\n\
                 data: {\"choices\":[{\"delta\":{\"content\":\"cd\"}}],\"usage\":\n\
                 data: {\"prompt_tokens\":2,\"completion_tokens\":3}}\n\n";
    let (out, seen) = run(true, input);
    assert_eq!(out, input);
    assert_eq!(seen.reported, reported(2, 3));
    assert_eq!(seen.generated_bytes, 4);
}

#[test]
fn comments_missing_space_and_other_fields_follow_the_framing_rules() {
    let input = ": keep-alive\n\nid: 7\nretry: 100\n: note\ndata:{\"choices\":[],\n\
                 data:\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n\
                 data\n\n\
                 event: message\ndata:  {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5}}\n\n";
    let (out, seen) = run(false, input);
    assert_eq!(out, input);
    // Two spaces after the colon: the value keeps one, and is still JSON.
    assert_eq!(seen.reported, reported(4, 5));
}

#[test]
fn usage_only_chunk_with_other_fields_is_dropped_whole_in_strip_mode() {
    let input = ": hi\n\nid: 5\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
    let (out, seen) = run(true, input);
    assert_eq!(out, ": hi\n\ndata: [DONE]\n\n");
    assert_eq!(seen.reported, reported(1, 2));
}

#[test]
fn usage_is_not_dropped_when_the_chunk_also_has_choices() {
    // Some servers put usage on the last content chunk.
    let input = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
    let (out, seen) = run(true, input);
    assert_eq!(out, input);
    assert_eq!(seen.reported, reported(1, 2));
}

#[test]
fn malformed_usage_reports_nothing() {
    for usage in [
        r#"{"prompt_tokens":"9","completion_tokens":6}"#,
        r#"{"prompt_tokens":9,"completion_tokens":-6}"#,
        r#"{"prompt_tokens":9.5,"completion_tokens":6}"#,
        r#"[]"#,
        r#""9""#,
    ] {
        let input = format!("data: {{\"choices\":[],\"usage\":{usage}}}\n\ndata: [DONE]\n\n");
        let (_, seen) = run(false, &input);
        assert_eq!(seen.reported, None, "{usage}");
    }
    let input = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":\"1\",\"output_tokens\":1}}}\n\n";
    assert_eq!(run(false, input).1.reported, None);
    let input =
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":null}}}\n\n\
                 data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n";
    assert_eq!(run(false, input).1.reported, None);
}

#[test]
fn garbage_and_broken_framing_report_nothing() {
    for input in [
        "\u{0}\u{1}\u{ff}garbage",
        "data: {not json}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}\n\n",
        "\n\n\n\r\r\r\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
        "dat: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\ndata: [DONE]",
        ":::::\n:\n\n",
    ] {
        for strip in [false, true] {
            let (out, seen) = run(strip, input);
            assert_eq!(seen.reported, None, "{input:?}");
            if !input.contains("usage") {
                assert_eq!(out, input);
            }
        }
    }
}

#[test]
fn an_event_of_any_size_is_read_without_being_held() {
    // 3 MiB of data in one event, usage after it; then a small usage-only chunk.
    let filler = "x".repeat(3 << 20);
    let input = format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{filler}\"}}}}],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":1}}}}\n\n\
         data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":8}}}}\n\n"
    );
    let pieces: Vec<&[u8]> = input.as_bytes().chunks(64 * 1024 + 7).collect();
    for strip in [false, true] {
        let mut tap = SseTap::new(strip);
        let mut out = Vec::new();
        tap.feed(pieces[0], &mut out);
        // Even stripping, the big event is not held past the hold cap.
        assert!(tap.held.len() <= HOLD_CAP);
        assert!(out.len() >= pieces[0].len() - HOLD_CAP);
        for piece in &pieces[1..] {
            tap.feed(piece, &mut out);
            assert!(tap.held.capacity() <= HOLD_CAP);
        }
        tap.finish(&mut out);
        let seen = tap.observed();
        assert_eq!(seen.reported, reported(7, 8));
        assert_eq!(seen.generated_bytes, filler.len() as u64);
        if strip {
            // The big one went out untouched; the small usage-only one is dropped.
            let (big, _) = input.split_at(input.find("\n\n").unwrap_or(0) + 2);
            assert_eq!(out, big.as_bytes());
        } else {
            assert_eq!(out, input.as_bytes());
        }
    }
    // Usage in the big event alone is read too.
    let (big, _) = input.split_at(input.find("\n\n").unwrap_or(0) + 2);
    let mut tap = SseTap::new(false);
    for piece in big.as_bytes().chunks(4093) {
        tap.observe(piece);
    }
    assert_eq!(tap.observed().reported, reported(1, 1));
}

#[test]
fn strip_mode_forwards_a_big_event_once_it_outgrows_the_hold() {
    let mut tap = SseTap::new(true);
    let mut out = Vec::new();
    let head = format!("data: {{\"usage\":null,\"pad\":\"{}", "y".repeat(HOLD_CAP));
    tap.feed(head.as_bytes(), &mut out);
    assert_eq!(out, head.as_bytes(), "held bytes go out once over the cap");
    tap.feed(b"\"}\n", &mut out);
    tap.feed(b"\n", &mut out);
    assert!(out.ends_with(b"\"}\n\n"));
    assert_eq!(out.len(), head.len() + 4);
    // The next event is held and edited again.
    out.clear();
    tap.feed(b"data: {\"a\":1,\"usage\":null}\n\n", &mut out);
    assert_eq!(out, b"data: {\"a\":1}\n\n");
}

#[test]
fn an_event_name_too_long_to_be_a_kind_names_none() {
    let long = "z".repeat(KIND_CAP + 1);
    let input = format!(
        "event: {long}\ndata: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":1}}}}\n\n\
         data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":2,\"completion_tokens\":2}}}}\n\n"
    );
    let mut tap = SseTap::new(false);
    let mut out = Vec::new();
    for piece in input.as_bytes().chunks(1000) {
        tap.feed(piece, &mut out);
    }
    assert_eq!(tap.observed().reported, reported(2, 2));
    // A long name is no kind: `message_start` below is read as a chunk.
    let input = format!(
        r#"event: message_start{long}
data: {{"message":{{"usage":{{"input_tokens":3}}}},"usage":{{"prompt_tokens":4}}}}

"#
    );
    let (_, seen) = run(false, &input);
    assert_eq!(seen.reported, reported(4, 0));
}

#[test]
fn observe_reads_like_feed_without_forwarding() {
    for input in [CHAT_WITH_USAGE, RESPONSES, ANTHROPIC] {
        let mut tap = SseTap::new(false);
        for piece in input.as_bytes().chunks(13) {
            tap.observe(piece);
        }
        assert_eq!(tap.observed(), run(false, input).1);
    }
}

#[test]
fn stream_usage_reports_cached_input_in_every_shape() {
    let chat = CHAT_WITH_USAGE.replace(
        r#""prompt_tokens_details":{"cached_tokens":0"#,
        r#""prompt_tokens_details":{"cached_tokens":8"#,
    );
    let responses = RESPONSES.replace(
        r#""input_tokens_details":{"cached_tokens":0}"#,
        r#""input_tokens_details":{"cached_tokens":32}"#,
    );
    let cases = [
        (chat, (9, 6, 8, 0)),
        (responses, (37, 11, 32, 0)),
        (ANTHROPIC.to_owned(), (472 + 20 + 300, 89, 300, 20)),
    ];
    for (input, (input_tokens, output, cached, written)) in cases {
        let (_, seen) = run(false, &input);
        assert_eq!(
            seen.reported,
            Some(Reported {
                input: input_tokens,
                output,
                cached_input: cached,
                cache_write: written
            })
        );
    }
}

#[test]
fn anthropic_stream_cut_after_message_start_tells_the_input_it_reported() {
    let cut = ANTHROPIC.find("event: message_delta").unwrap_or(0);
    let (_, seen) = run(false, &ANTHROPIC[..cut]);
    assert_eq!(seen.reported, None);
    assert_eq!(
        seen.reported_input,
        Some(Reported {
            input: 472 + 20 + 300,
            output: 0,
            cached_input: 300,
            cache_write: 20
        })
    );
    // Once the stream is whole the reported usage is all there is.
    let (_, seen) = run(false, ANTHROPIC);
    assert_eq!(seen.reported_input, None);
}

#[test]
fn the_type_member_may_come_after_what_it_qualifies() {
    let input = "data: {\"delta\":{\"text\":\"abcd\"},\"index\":0,\"type\":\"content_block_delta\"}\n\n\
                 data: {\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":5}},\"type\":\"message_start\"}\n\n\
                 data: {\"usage\":{\"output_tokens\":6},\"type\":\"message_delta\"}\n\n\
                 data: {\"delta\":\"xyz\",\"type\":\"response.output_text.delta\"}\n\n";
    let (_, seen) = run(false, input);
    assert_eq!(seen.reported, reported(5, 6));
    assert_eq!(seen.model.as_deref(), Some("claude-x"));
    assert_eq!(seen.generated_bytes, 4 + 3);
}

/// `depth` nested arrays and objects: `{"a":[{"a":[ ... ]}]}`.
fn nested(depth: usize) -> String {
    let mut out = String::with_capacity(depth * 8);
    for _ in 0..depth {
        out.push_str(r#"{"a":["#);
    }
    out.push('1');
    for _ in 0..depth {
        out.push_str("]}");
    }
    out
}

#[test]
fn usage_after_a_deeply_nested_tool_schema_is_read() {
    for depth in [130, 10_000] {
        let input = format!(
            "event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"model\":\"gpt-x\",\"tools\":[{{\"parameters\":{}}}],\"usage\":{{\"input_tokens\":20,\"output_tokens\":3}}}}}}\n\n",
            nested(depth)
        );
        let mut tap = SseTap::new(false);
        for piece in input.as_bytes().chunks(777) {
            tap.observe(piece);
        }
        let seen = tap.observed();
        assert_eq!(seen.reported, reported(20, 3), "depth {depth}");
        assert_eq!(seen.model.as_deref(), Some("gpt-x"));
    }
}
