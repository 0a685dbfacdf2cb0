use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

fn facts(body: &str) -> JsonFacts {
    match read_json_body(body.as_bytes()) {
        Ok(f) => f,
        Err(e) => panic!("{body}: {e}"),
    }
}

fn refused(body: &str) -> String {
    match read_json_body(body.as_bytes()) {
        Ok(f) => panic!("{body} was read as {f:?}"),
        Err(e) => e.0,
    }
}

fn injected(body: &str) -> Option<String> {
    inject_include_usage(body.as_bytes()).map(|b| String::from_utf8(b).expect("utf-8"))
}

// ---- read_json_body -------------------------------------------------------

#[test]
fn json_facts_are_read_from_the_top_level() {
    assert_eq!(
        facts(
            r#"{"model":"gpt-4o","messages":[{"model":"x","stream":false}],
                "max_tokens":100,"stream":true,"stream_options":{"include_usage":false}}"#
        ),
        JsonFacts {
            model: Some("gpt-4o".into()),
            max_output: Some(100),
            stream: true,
            include_usage: Some(false),
            n: None,
            background: false,
        }
    );
    assert_eq!(facts("{}"), JsonFacts::default());
    assert_eq!(facts(" \n{ }\t"), JsonFacts::default());
}

#[test]
fn nested_fields_do_not_count() {
    let f = facts(r#"{"input":{"model":"m","Model":"n","stream":true},"x":[{"max_tokens":9}]}"#);
    assert_eq!(f, JsonFacts::default());
}

#[test]
fn escaped_keys_are_read_decoded() {
    assert_eq!(facts(r#"{"mod\u0065l":"m"}"#).model.as_deref(), Some("m"));
    assert!(refused(r#"{"mod\u0065l":"m","model":"n"}"#).contains("more than once"));
}

#[test]
fn largest_requested_output_is_the_maximum() {
    assert_eq!(facts(r#"{"max_tokens":10}"#).max_output, Some(10));
    assert_eq!(
        facts(r#"{"max_completion_tokens":20}"#).max_output,
        Some(20)
    );
    assert_eq!(facts(r#"{"max_output_tokens":30}"#).max_output, Some(30));
    assert_eq!(
        facts(r#"{"max_tokens":10,"max_completion_tokens":50,"max_output_tokens":30}"#).max_output,
        Some(50)
    );
    assert_eq!(facts(r#"{"max_tokens":null}"#).max_output, None);
    assert_eq!(facts(r#"{"max_tokens":0}"#).max_output, Some(0));
}

#[test]
fn n_and_background_are_read() {
    let f = facts(r#"{"n":3,"background":true,"messages":[{"n":9}]}"#);
    assert_eq!((f.n, f.background), (Some(3), true));
    let f = facts(r#"{"n":null,"background":null}"#);
    assert_eq!((f.n, f.background), (None, false));
    assert!(!facts(r#"{"background":false}"#).background);
    assert_eq!(facts(r#"{"n":0}"#).n, Some(0));
    for (body, says) in [
        (r#"{"n":-1}"#, "`n` must be a non-negative integer"),
        (r#"{"n":1.5}"#, "`n` must be a non-negative integer"),
        (r#"{"n":"2"}"#, "`n` must be a non-negative integer"),
        (
            r#"{"background":"true"}"#,
            "`background` must be true or false",
        ),
        (r#"{"background":1}"#, "`background` must be true or false"),
        // An upstream parser could read either one: refused, not guessed.
        (r#"{"n":1,"n":8}"#, "`n` appears more than once"),
        (r#"{"background":false,"Background":true}"#, "`Background`"),
        (r#"{"N":4}"#, "`N`"),
    ] {
        let msg = refused(body);
        assert!(msg.contains(says), "{body}: {msg}");
    }
}

#[test]
fn requested_output_must_be_a_non_negative_integer() {
    for v in ["-1", "1.5", "100.0", "1e3", "\"100\"", "true", "[1]", "{}"] {
        let msg = refused(&format!(r#"{{"max_tokens":{v}}}"#));
        assert!(
            msg.contains("`max_tokens` must be a non-negative integer"),
            "{v}: {msg}"
        );
    }
    assert!(refused(r#"{"max_output_tokens":-5}"#).contains("max_output_tokens"));
    assert!(refused(r#"{"max_tokens":18446744073709551616}"#).contains("max_tokens"));
}

#[test]
fn model_must_be_a_string() {
    for v in ["1", "null", "true", "[\"a\"]", "{\"a\":1}"] {
        let msg = refused(&format!(r#"{{"model":{v}}}"#));
        assert_eq!(msg, "`model` must be a string", "{v}");
    }
    assert_eq!(facts(r#"{"model":""}"#).model.as_deref(), Some(""));
    assert_eq!(
        facts(r#"{"model":"gpt\u00e9"}"#).model.as_deref(),
        Some("gpté")
    );
}

#[test]
fn stream_is_true_only_when_it_is_true() {
    assert!(facts(r#"{"stream":true}"#).stream);
    assert!(!facts(r#"{"stream":false}"#).stream);
    assert!(!facts(r#"{"stream":null}"#).stream);
    assert!(!facts(r#"{}"#).stream);
    for v in ["\"true\"", "1", "[]"] {
        let msg = refused(&format!(r#"{{"stream":{v}}}"#));
        assert_eq!(msg, "`stream` must be true or false", "{v}");
    }
}

#[test]
fn stream_options_must_be_an_object_with_a_boolean() {
    assert_eq!(facts(r#"{"stream_options":null}"#).include_usage, None);
    assert_eq!(facts(r#"{"stream_options":{}}"#).include_usage, None);
    assert_eq!(
        facts(r#"{"stream_options":{"include_usage":true}}"#).include_usage,
        Some(true)
    );
    assert_eq!(
        facts(r#"{"stream_options":{"include_usage":null}}"#).include_usage,
        None
    );
    assert!(refused(r#"{"stream_options":true}"#).contains("must be an object"));
    assert!(refused(r#"{"stream_options":[]}"#).contains("must be an object"));
    assert!(refused(r#"{"stream_options":{"include_usage":"yes"}}"#)
        .contains("`stream_options.include_usage` must be true or false"));
}

#[test]
fn repeated_guarded_fields_are_refused() {
    for name in GUARDED {
        let body = format!(r#"{{"{name}":null,"a":1,"{name}":null}}"#);
        let msg = refused(&body);
        assert_eq!(msg, format!("`{name}` appears more than once in the body"));
    }
    assert!(refused(r#"{"model":"a","model":"a"}"#).contains("more than once"));
    assert!(
        refused(r#"{"stream_options":{"include_usage":true,"include_usage":false}}"#)
            .contains("`include_usage` appears more than once in `stream_options`")
    );
}

#[test]
fn case_variants_of_guarded_fields_are_refused() {
    for key in [
        "Model",
        "MODEL",
        "mOdel",
        "Stream",
        "STREAM_OPTIONS",
        "Max_Tokens",
        "max_completion_TOKENS",
        "MAX_OUTPUT_TOKENS",
    ] {
        let msg = refused(&format!(r#"{{"{key}":null}}"#));
        assert!(msg.contains(&format!("`{key}`")), "{key}: {msg}");
        assert!(msg.contains("in lower case"), "{key}: {msg}");
    }
    assert!(refused(r#"{"model":"a","Model":"b"}"#).contains("`Model`"));
    assert!(refused(r#"{"Model":"b","model":"a"}"#).contains("`Model`"));
    assert!(refused(r#"{"stream_options":{"Include_Usage":true}}"#).contains("`Include_Usage`"));
}

#[test]
fn keys_go_folds_into_ascii_are_case_variants() {
    // Go's encoding/json folds `ſ` (U+017F) to `s` and the Kelvin sign
    // (U+212A) to `k`.
    assert!(refused("{\"\u{17F}tream\":true}").contains("in lower case"));
    assert!(refused("{\"max_to\u{212A}ens\":1}").contains("in lower case"));
    assert!(
        refused("{\"stream_options\":{\"include_u\u{17F}age\":true}}").contains("in lower case")
    );
    // Other non-ASCII look-alikes are plain unknown fields.
    assert_eq!(facts("{\"mоdel\":1}"), JsonFacts::default()); // Cyrillic о
}

#[test]
fn non_objects_and_broken_json_are_refused() {
    for body in ["[]", "\"model\"", "1", "null", "true"] {
        assert_eq!(refused(body), "the body must be a JSON object", "{body}");
    }
    for body in [
        "",
        "   ",
        "{",
        "{\"model\":}",
        "{\"a\":1} {\"b\":2}",
        "{\"a\":1}x",
        "not json",
        "\u{feff}{}",
        "{'a':1}",
    ] {
        assert!(
            refused(body).starts_with("the body is not valid JSON"),
            "{body:?}"
        );
    }
    assert!(read_json_body(&[b'{', b'"', 0xff, b'"', b':', b'1', b'}']).is_err());
}

#[test]
fn deep_nesting_is_refused_or_read_without_overflow() {
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    // Skipped values are not built, so depth costs nothing but time.
    let _ = read_json_body(deep.as_bytes());
    let deep_model = format!(
        "{{\"model\":{}1{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(read_json_body(deep_model.as_bytes()).is_err());
    let unclosed = format!("{{\"a\":{}", "[".repeat(100_000));
    assert!(read_json_body(unclosed.as_bytes()).is_err());
}

// ---- inject_include_usage -------------------------------------------------

#[test]
fn nothing_is_injected_without_a_stream_or_with_usage_already_on() {
    assert_eq!(injected(r#"{"model":"m"}"#), None);
    assert_eq!(injected(r#"{"stream":false}"#), None);
    assert_eq!(injected(r#"{"stream":null}"#), None);
    assert_eq!(
        injected(r#"{"stream":true,"stream_options":{"include_usage":true}}"#),
        None
    );
    assert_eq!(injected(r#"{"stream":true,"Model":"x"}"#), None);
    assert_eq!(injected(r#"[{"stream":true}]"#), None);
    assert_eq!(injected("not json"), None);
}

#[test]
fn absent_stream_options_are_inserted_after_the_opening_brace() {
    assert_eq!(
        injected(r#"{"model":"m","stream":true}"#).as_deref(),
        Some(r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#)
    );
    assert_eq!(
        injected("  \n{ \"stream\" : true }\n").as_deref(),
        Some("  \n{\"stream_options\":{\"include_usage\":true}, \"stream\" : true }\n")
    );
}

#[test]
fn include_usage_is_added_to_existing_stream_options() {
    assert_eq!(
        injected(r#"{"stream":true,"stream_options":{}}"#).as_deref(),
        Some(r#"{"stream":true,"stream_options":{"include_usage":true}}"#)
    );
    assert_eq!(
        injected(r#"{"stream":true,"stream_options":{ }}"#).as_deref(),
        Some(r#"{"stream":true,"stream_options":{"include_usage":true }}"#)
    );
    assert_eq!(
        injected(r#"{"stream_options": {"x": {"include_usage":false}}, "stream":true}"#).as_deref(),
        Some(
            r#"{"stream_options": {"include_usage":true,"x": {"include_usage":false}}, "stream":true}"#
        )
    );
}

#[test]
fn false_or_null_include_usage_is_replaced_in_place() {
    assert_eq!(
        injected("{\"stream\":true,\"stream_options\":{\"a\":1,\"include_usage\" :\n false }}")
            .as_deref(),
        Some("{\"stream\":true,\"stream_options\":{\"a\":1,\"include_usage\" :\n true }}")
    );
    assert_eq!(
        injected(r#"{"stream":true,"stream_options":{"include_usage":null}}"#).as_deref(),
        Some(r#"{"stream":true,"stream_options":{"include_usage":true}}"#)
    );
    assert_eq!(
        injected(r#"{"stream":true,"stream_options":null}"#).as_deref(),
        Some(r#"{"stream":true,"stream_options":{"include_usage":true}}"#)
    );
}

#[test]
fn unicode_and_escapes_elsewhere_are_kept_byte_for_byte() {
    let body =
        r#"{"messages":[{"content":"héllo \"wörld\" 🦀 \u00e9 {\"stream\":1}"}],"stream":true}"#;
    let out = injected(body).expect("injected");
    let prefix = r#"{"stream_options":{"include_usage":true},"#;
    assert_eq!(out, format!("{prefix}{}", &body[1..]));
}

#[test]
fn invalid_bodies_are_not_injected() {
    assert_eq!(injected(r#"{"stream":true,"stream":true}"#), None);
    assert_eq!(injected(r#"{"stream":true,"stream_options":1}"#), None);
    assert_eq!(injected(r#"{"stream":true"#), None);
}

/// A JSON object whose values are arbitrary JSON, written with random
/// whitespace, for the property tests.
fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z\u{e9}\u{1F980}\"\\\\ {}\\[\\]:,]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Writes `v` compactly or pretty, with extra spaces after every comma and
/// colon outside strings when `spaced`.
fn write(v: &Value, pretty: bool, spaced: bool) -> String {
    let text = if pretty {
        serde_json::to_string_pretty(v).expect("serialises")
    } else {
        serde_json::to_string(v).expect("serialises")
    };
    if !spaced {
        return text;
    }
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        out.push(c);
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ',' | ':' | '{' | '[') {
            out.push_str(" \t");
        }
    }
    format!("\r\n {out} \n")
}

proptest! {
    #[test]
    fn injection_sets_only_include_usage(
        fields in prop::collection::btree_map("[a-z_]{1,6}", arb_value(), 0..5),
        options in prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            prop::collection::btree_map("[a-z_]{1,6}", arb_value(), 0..3)
                .prop_map(|m| Some(Value::Object(m.into_iter().collect()))),
        ],
        include_usage in prop_oneof![Just(None), Just(Some(Value::Null)), Just(Some(json!(false)))],
        pretty in any::<bool>(),
        spaced in any::<bool>(),
    ) {
        let mut original = serde_json::Map::new();
        for (k, v) in fields {
            if !GUARDED.contains(&k.as_str()) {
                original.insert(k, v);
            }
        }
        original.insert("stream".into(), json!(true));
        match options {
            None => {}
            Some(Value::Object(mut o)) => {
                o.remove(INCLUDE_USAGE);
                if let Some(iu) = include_usage {
                    o.insert(INCLUDE_USAGE.into(), iu);
                }
                original.insert("stream_options".into(), Value::Object(o));
            }
            Some(other) => {
                original.insert("stream_options".into(), other);
            }
        }
        let original = Value::Object(original);
        let body = write(&original, pretty, spaced);
        let out = inject_include_usage(body.as_bytes()).expect("injects");
        let parsed: Value = serde_json::from_slice(&out).expect("still JSON");

        let mut expected = original.clone();
        let slot = &mut expected["stream_options"];
        if !slot.is_object() {
            *slot = json!({});
        }
        slot[INCLUDE_USAGE] = json!(true);
        prop_assert_eq!(&parsed, &expected);

        // The output reads as injected and needs nothing more.
        prop_assert_eq!(read_json_body(&out).map(|f| f.include_usage), Ok(Some(true)));
        prop_assert_eq!(inject_include_usage(&out), None);
        // Only the edit changed: the body is prefix + (at most `false`) + suffix.
        let b = body.as_bytes();
        let prefix = b.iter().zip(&out).take_while(|(x, y)| x == y).count();
        let room = b.len().min(out.len()) - prefix;
        let suffix = b.iter().rev().zip(out.iter().rev()).take_while(|(x, y)| x == y).count().min(room);
        prop_assert!(b.len() - prefix - suffix <= "false".len());
    }

    #[test]
    fn reading_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = read_json_body(&bytes);
        let _ = inject_include_usage(&bytes);
    }

    #[test]
    fn reading_json_like_text_never_panics(text in "[{}\\[\\]\":,a-z0-9 \\\\]{0,40}") {
        let _ = read_json_body(text.as_bytes());
        let _ = inject_include_usage(text.as_bytes());
    }
}

// ---- query_models ---------------------------------------------------------

#[test]
fn semicolons_in_query_values_are_read_both_ways() {
    let models: Vec<String> = query_models(Some("model=gpt-4o-mini;evil&a=1;MODEL=z"))
        .into_iter()
        .map(Cow::into_owned)
        .collect();
    assert_eq!(models, vec!["gpt-4o-mini;evil", "gpt-4o-mini", "z"]);
}

#[test]
fn query_models_reads_every_spelling_of_model() {
    let models = |q| {
        query_models(q)
            .into_iter()
            .map(Cow::into_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(models(Some("model=gpt-4o")), vec!["gpt-4o"]);
    assert_eq!(
        models(Some("a=1&model=x&Model=y;MODEL=z&x=2")),
        vec!["x", "y;MODEL=z", "y", "z"]
    );
    assert_eq!(
        models(Some("model[]=a&model%5B%5D=b&model[0]=c&%6Dodel=d")),
        vec!["a", "b", "c", "d"]
    );
    assert_eq!(
        models(Some("model=gpt%2D4o+x&model")),
        vec!["gpt-4o x", "gpt-4o+x", ""]
    );
    assert_eq!(models(Some("+model=a& model =b")), vec!["a", "b"]);
    assert!(models(Some("models=a&model_id=b&xmodel=c&model[=d&mod=e")).is_empty());
    assert!(models(Some("x=1%3Bmodel=y")).is_empty());
    assert!(models(Some("")).is_empty());
    assert!(models(None).is_empty());
}

// ---- multipart_models -----------------------------------------------------

const CT: &[u8] = b"multipart/form-data; boundary=XyZ";

fn form(parts: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (headers, content) in parts {
        body.extend_from_slice(b"--XyZ\r\n");
        body.extend_from_slice(headers.as_bytes());
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(content.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--XyZ--\r\n");
    body
}

fn field(name: &str) -> String {
    format!("Content-Disposition: form-data; name=\"{name}\"\r\n")
}

#[test]
fn multipart_model_fields_are_read_in_order() {
    let body = form(&[
        (&field("file"), "binary --XyZ\n--XyZ data"),
        (&field("model"), "whisper-1"),
        (
            "content-disposition: form-data; name=MODEL\r\nContent-Type: text/plain\r\n",
            "gpt-4o-transcribe",
        ),
        (&field("model[]"), "x"),
        (&field("prompt"), "model"),
    ]);
    assert_eq!(
        multipart_models(CT, &body),
        Ok(vec![
            "whisper-1".to_owned(),
            "gpt-4o-transcribe".to_owned(),
            "x".to_owned()
        ])
    );
}

#[test]
fn multipart_content_types_take_quoted_or_plain_boundaries() {
    let body = form(&[(&field("model"), "m")]);
    for ct in [
        &b"multipart/form-data; boundary=XyZ"[..],
        b"Multipart/Form-Data;boundary=\"XyZ\"",
        b"multipart/form-data; charset=utf-8; BOUNDARY=XyZ ",
    ] {
        assert_eq!(multipart_models(ct, &body), Ok(vec!["m".to_owned()]));
    }
    for ct in [
        &b"multipart/form-data"[..],
        b"multipart/mixed; boundary=XyZ",
        b"application/json",
        b"multipart/form-data; boundary=",
        b"multipart/form-data; boundary=\"\"",
        b"multipart/form-data; boundary=XyZ; boundary=XyZ",
        b"multipart/form-data; boundary*=XyZ",
        b"multipart/form-data; boundary=\"XyZ",
        b"multipart/form-data; boundary=\"X\\yZ\"",
        b"multipart/form-data; boundary XyZ",
    ] {
        assert!(
            multipart_models(ct, &body).is_err(),
            "{}",
            String::from_utf8_lossy(ct)
        );
    }
    let long = format!("multipart/form-data; boundary={}", "a".repeat(71));
    assert!(multipart_models(long.as_bytes(), &body).is_err());
}

#[test]
fn empty_forms_and_parts_without_names_are_fine() {
    assert_eq!(multipart_models(CT, b"--XyZ--"), Ok(vec![]));
    assert_eq!(multipart_models(CT, b"--XyZ--\r\nepilogue"), Ok(vec![]));
    let body = form(&[("", "no headers"), ("X-Other: 1\r\n", "")]);
    assert_eq!(multipart_models(CT, &body), Ok(vec![]));
    let body = form(&[(&field("model"), "")]);
    assert_eq!(multipart_models(CT, &body), Ok(vec![String::new()]));
}

#[test]
fn malformed_multipart_bodies_are_refused() {
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"preamble\r\n--XyZ\r\n\r\nx\r\n--XyZ--".to_vec(),
        // LF-only line ends.
        b"--XyZ\nContent-Disposition: form-data; name=\"model\"\n\nm\n--XyZ--".to_vec(),
        // No close delimiter.
        b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm".to_vec(),
        // Headers never end.
        b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n--XyZ--".to_vec(),
        // Padding after a boundary.
        b"--XyZ \r\n\r\nx\r\n--XyZ--".to_vec(),
        // A longer boundary-like line inside a part.
        b"--XyZ\r\n\r\nx\r\n--XyZabc\r\n--XyZ--".to_vec(),
        // Folded header.
        b"--XyZ\r\nContent-Disposition: form-data;\r\n name=\"model\"\r\n\r\nm\r\n--XyZ--".to_vec(),
        // Header without a colon, header name with a space.
        b"--XyZ\r\nbroken\r\n\r\nm\r\n--XyZ--".to_vec(),
        b"--XyZ\r\nContent-Disposition : form-data; name=model\r\n\r\nm\r\n--XyZ--".to_vec(),
        // Bare CR inside a header value.
        b"--XyZ\r\nX-A: 1\rContent-Disposition: form-data; name=model\r\n\r\nm\r\n--XyZ--".to_vec(),
    ];
    for body in cases {
        assert!(
            multipart_models(CT, &body).is_err(),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[test]
fn ambiguous_model_parts_are_refused() {
    for headers in [
        // RFC 2231 names, decoded by some parsers only.
        "Content-Disposition: form-data; name*=UTF-8''model\r\n".to_owned(),
        "Content-Disposition: form-data; name=\"x\"; name*0=model\r\n".to_owned(),
        // Repeated name, repeated header.
        "Content-Disposition: form-data; name=\"x\"; name=\"model\"\r\n".to_owned(),
        format!("{}{}", field("x"), field("model")),
        // Escapes in quoted strings.
        "Content-Disposition: form-data; name=\"mo\\del\"\r\n".to_owned(),
        "Content-Disposition: form-data; filename=\"a\\\"; name=\"model\"\r\n".to_owned(),
        // An encoded model value.
        format!(
            "{}Content-Transfer-Encoding: quoted-printable\r\n",
            field("model")
        ),
        format!("{}Content-Transfer-Encoding: base64\r\n", field("model")),
    ] {
        let body = form(&[(&headers, "bW9kZWw=")]);
        assert!(multipart_models(CT, &body).is_err(), "{headers}");
    }
    let ok = form(&[(
        &format!("{}Content-Transfer-Encoding: 8bit\r\n", field("model")),
        "m",
    )]);
    assert_eq!(multipart_models(CT, &ok), Ok(vec!["m".to_owned()]));
    let other = form(&[(
        &format!("{}Content-Transfer-Encoding: base64\r\n", field("file")),
        "AAAA",
    )]);
    assert_eq!(multipart_models(CT, &other), Ok(vec![]));
}

#[test]
fn non_utf8_model_values_are_refused() {
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n".to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(b"\r\n--XyZ--");
    assert!(multipart_models(CT, &body).is_err());
}

#[test]
fn file_parts_named_model_still_name_a_model() {
    let body = form(&[(
        "Content-Disposition: form-data; name=\"model\"; filename=\"m.txt\"\r\n",
        "gpt-4o",
    )]);
    assert_eq!(multipart_models(CT, &body), Ok(vec!["gpt-4o".to_owned()]));
}

proptest! {
    #[test]
    fn multipart_parsing_never_panics(
        body in prop::collection::vec(prop_oneof![
            Just(b"--XyZ".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"Content-Disposition: form-data; name=\"model\"".to_vec()),
            Just(b"--".to_vec()),
            prop::collection::vec(any::<u8>(), 0..4),
        ], 0..12)
    ) {
        let body: Vec<u8> = body.concat();
        let _ = multipart_models(CT, &body);
    }

    #[test]
    fn well_formed_forms_give_back_their_model_values(
        values in prop::collection::vec(("[a-zA-Z0-9_ ]{0,6}", "[a-z0-9\\-. ]{0,12}"), 0..6)
    ) {
        let headers: Vec<String> = values.iter().map(|(n, _)| field(n)).collect();
        let parts: Vec<(&str, &str)> = headers
            .iter()
            .zip(&values)
            .map(|(h, (_, v))| (h.as_str(), v.as_str()))
            .collect();
        let expected: Vec<String> = values
            .iter()
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case("model"))
            .map(|(_, v)| v.clone())
            .collect();
        prop_assert_eq!(multipart_models(CT, &form(&parts)), Ok(expected));
    }
}

#[test]
fn invalid_utf8_anywhere_is_not_json() {
    // Found by the `request_body` fuzz target: a skipped string value.
    assert!(read_json_body(b"{\"x\":\"\xe7pmini\",\"model\":\"m\"}").is_err());
    assert_eq!(
        inject_include_usage(b"{\"stream\":true,\"x\":\"\xff\"}"),
        None
    );
}
