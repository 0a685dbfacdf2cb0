use std::collections::HashMap;

use super::*;

fn parse(yaml: &str) -> Result<TracingConfig, String> {
    serde_yaml::from_str(yaml).map_err(|e| e.to_string())
}

/// Expands nothing: values are taken as written.
fn verbatim(_at: &str, value: &str) -> Result<String, String> {
    Ok(value.to_string())
}

fn resolve(yaml: &str) -> Result<TraceSettings, Vec<Problem>> {
    parse(yaml).unwrap().resolve(&mut verbatim)
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn from_env(pairs: &[(&str, &str)]) -> Result<Option<TraceSettings>, Vec<Problem>> {
    TraceSettings::from_env(&env(pairs))
}

#[test]
fn a_block_with_only_the_endpoint_gets_the_defaults() {
    let s = resolve("otlp_endpoint: http://127.0.0.1:4318").unwrap();
    assert_eq!(s.endpoint, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(s.protocol, Protocol::HttpProtobuf);
    assert!(s.headers.is_empty());
    assert_eq!(s.sample_ratio, 1.0);
    assert_eq!(s.service_name, "scopegate");
    assert_eq!(s.export_timeout, EXPORT_TIMEOUT);
    assert_eq!(s.batch, BatchOptions::default());
    assert_eq!(s.batch.delay, Duration::from_secs(5));
}

#[test]
fn the_whole_block_as_the_contract_shows_it() {
    let c = parse(
        r#"
otlp_endpoint: "http://collector:4317"
protocol: grpc
headers: { x-tenant: "${TENANT}" }
sample_ratio: 0.25
service_name: gateway-eu
"#,
    )
    .unwrap();
    let mut seen = Vec::new();
    let s = c
        .resolve(&mut |at: &str, value: &str| {
            seen.push((at.to_string(), value.to_string()));
            Ok("acme".to_string())
        })
        .unwrap();
    assert_eq!(
        seen,
        vec![(
            "tracing.headers.x-tenant".to_string(),
            "${TENANT}".to_string()
        )]
    );
    assert_eq!(s.endpoint, "http://collector:4317");
    assert_eq!(s.protocol, Protocol::Grpc);
    assert_eq!(
        s.headers,
        vec![("x-tenant".to_string(), "acme".to_string())]
    );
    assert_eq!(s.sample_ratio, 0.25);
    assert_eq!(s.service_name, "gateway-eu");
}

#[test]
fn http_endpoints_get_v1_traces_under_their_path() {
    let cases = [
        ("http://c:4318", "http://c:4318/v1/traces"),
        ("http://c:4318/", "http://c:4318/v1/traces"),
        ("https://c.example/otlp", "https://c.example/otlp/v1/traces"),
        (
            "https://c.example/otlp/",
            "https://c.example/otlp/v1/traces",
        ),
        // Already the full URL: kept.
        ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
        ("http://[::1]:4318", "http://[::1]:4318/v1/traces"),
    ];
    for (given, want) in cases {
        let s = resolve(&format!("otlp_endpoint: \"{given}\"")).unwrap();
        assert_eq!(s.endpoint, want, "{given}");
    }
}

#[test]
fn bad_endpoints_are_refused_with_the_field_path() {
    let cases = [
        ("collector:4318", "http:// or https://"),
        ("ftp://c:4318", "http:// or https://"),
        ("not a url", "not a URL"),
        ("http://c:4318/?x=1", "query"),
        ("http://user:secret@c:4318", "user name or password"),
    ];
    for (given, why) in cases {
        let problems = resolve(&format!("otlp_endpoint: \"{given}\"")).unwrap_err();
        assert_eq!(problems.len(), 1, "{given}: {problems:?}");
        assert_eq!(problems[0].at, "tracing.otlp_endpoint");
        assert!(
            problems[0].message.starts_with("tracing.otlp_endpoint: "),
            "{problems:?}"
        );
        assert!(problems[0].message.contains(why), "{given}: {problems:?}");
        assert!(!problems[0].message.contains("secret"), "{problems:?}");
    }
    let grpc_path = resolve("otlp_endpoint: http://c:4317/v1/traces\nprotocol: grpc").unwrap_err();
    assert!(grpc_path[0].message.contains("gRPC endpoint has no path"));
}

#[test]
fn serde_refuses_unknown_fields_and_protocols() {
    let typo = parse("otlp_endpoint: http://c:4318\nsample_rate: 0.5").unwrap_err();
    assert!(typo.contains("unknown field `sample_rate`"), "{typo}");
    let json = parse("otlp_endpoint: http://c:4318\nprotocol: http/json").unwrap_err();
    assert!(
        json.contains("http/protobuf") && json.contains("grpc"),
        "{json}"
    );
    let missing = parse("protocol: grpc").unwrap_err();
    assert!(missing.contains("otlp_endpoint"), "{missing}");
}

#[test]
fn sample_ratio_must_be_between_zero_and_one() {
    for ok in ["0", "0.0", "0.5", "1", "1.0"] {
        let s = resolve(&format!("otlp_endpoint: http://c:4318\nsample_ratio: {ok}")).unwrap();
        assert!((0.0..=1.0).contains(&s.sample_ratio));
    }
    for bad in ["-0.1", "1.5", ".nan", ".inf"] {
        let p = resolve(&format!(
            "otlp_endpoint: http://c:4318\nsample_ratio: {bad}"
        ))
        .unwrap_err();
        assert_eq!(p[0].at, "tracing.sample_ratio", "{bad}");
        assert!(p[0].message.contains("0.0 to 1.0"), "{p:?}");
    }
}

#[test]
fn header_problems_name_the_header_and_never_quote_its_value() {
    let c = parse(
        r#"
otlp_endpoint: http://c:4318
headers:
  "bad name": v
  content-type: text/plain
  connection: close
  X-Token: "secret-one"
  x-token: "secret-two"
  x-line: "secret\nbreak"
  x-unset: "${NOPE}"
"#,
    )
    .unwrap();
    let problems = c
        .resolve(&mut |at: &str, value: &str| {
            if value.contains("${NOPE}") {
                Err(format!(
                    "environment variable NOPE is not set (used in {at})"
                ))
            } else {
                Ok(value.to_string())
            }
        })
        .unwrap_err();
    let text: Vec<String> = problems.iter().map(|p| p.message.clone()).collect();
    let all = text.join("\n");
    assert!(!all.contains("secret"), "{all}");
    let find = |at: &str| {
        problems
            .iter()
            .find(|p| p.at == at)
            .unwrap_or_else(|| panic!("no problem at {at}: {all}"))
    };
    assert!(find("tracing.headers.bad name")
        .message
        .contains("not a valid HTTP header name"));
    assert!(find("tracing.headers.content-type")
        .message
        .contains("exporter"));
    assert!(find("tracing.headers.connection")
        .message
        .contains("hop-by-hop"));
    // `X-Token` sorts before `x-token`; the second is the duplicate.
    assert!(find("tracing.headers.x-token")
        .message
        .contains("set twice"));
    assert!(find("tracing.headers.x-line")
        .message
        .contains("not a valid header value"));
    assert_eq!(
        find("tracing.headers.x-unset").message,
        "environment variable NOPE is not set (used in tracing.headers.x-unset)"
    );
    assert_eq!(problems.len(), 6, "{all}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let p = resolve("otlp_endpoint: nope\nsample_ratio: 2\nservice_name: \"\"").unwrap_err();
    let at: Vec<&str> = p.iter().map(|p| p.at.as_str()).collect();
    assert_eq!(
        at,
        [
            "tracing.otlp_endpoint",
            "tracing.sample_ratio",
            "tracing.service_name"
        ]
    );
}

#[test]
fn without_an_endpoint_variable_tracing_is_off() {
    assert_eq!(from_env(&[]).unwrap(), None);
    assert_eq!(
        from_env(&[
            ("OTEL_SERVICE_NAME", "x"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap(),
        None
    );
    // Empty counts as unset.
    assert_eq!(
        from_env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", " "),
        ])
        .unwrap(),
        None
    );
}

#[test]
fn the_generic_endpoint_is_a_base_the_traces_endpoint_a_full_url() {
    let base = from_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])
        .unwrap()
        .unwrap();
    assert_eq!(base.endpoint, "http://c:4318/v1/traces");
    assert_eq!(base.protocol, Protocol::HttpProtobuf);
    assert_eq!(base.sample_ratio, 1.0);
    assert_eq!(base.service_name, "scopegate");
    let full = from_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:9999/custom/traces",
        ),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(full.endpoint, "http://c:9999/custom/traces");
    let with_path = from_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c/otlp/")])
        .unwrap()
        .unwrap();
    assert_eq!(with_path.endpoint, "https://c/otlp/v1/traces");
}

#[test]
fn grpc_from_the_protocol_variables() {
    let g = from_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(g.protocol, Protocol::Grpc);
    assert_eq!(g.endpoint, "http://c:4317");
    // The traces-specific variable wins.
    let h = from_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(h.protocol, Protocol::HttpProtobuf);
    assert_eq!(h.endpoint, "http://c:4318/v1/traces");
    let json = from_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
    ])
    .unwrap_err();
    assert_eq!(json[0].at, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
    assert!(json[0].message.contains("not supported"), "{json:?}");
}

#[test]
fn ratio_and_service_name_from_the_environment() {
    let s = from_env(&[
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        ),
        ("OTEL_TRACES_SAMPLER_ARG", " 0.1 "),
        ("OTEL_SERVICE_NAME", "edge"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(s.sample_ratio, 0.1);
    assert_eq!(s.service_name, "edge");
    for bad in ["1.5", "-1", "half", "NaN"] {
        let p = from_env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER_ARG", bad),
        ])
        .unwrap_err();
        assert_eq!(p[0].at, "OTEL_TRACES_SAMPLER_ARG", "{bad}");
    }
    let p = from_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")]).unwrap_err();
    assert_eq!(p[0].at, "OTEL_EXPORTER_OTLP_ENDPOINT");
    assert!(p[0].message.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: "));
}

#[test]
fn debug_output_never_shows_a_header_value() {
    let c = parse("otlp_endpoint: http://c:4318\nheaders: { x-token: secret-value }").unwrap();
    let shown = format!("{c:?}");
    assert!(
        shown.contains("x-token") && !shown.contains("secret-value"),
        "{shown}"
    );
    let s = c.resolve(&mut verbatim).unwrap();
    let shown = format!("{s:?}");
    assert!(
        shown.contains("x-token") && !shown.contains("secret-value"),
        "{shown}"
    );
}
