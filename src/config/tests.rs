use super::*;

const MINIMAL: &str = "\
listen: \"127.0.0.1:8080\"
keys_file: keys.yaml
upstreams:
  completions:
    url: \"http://127.0.0.1:9001\"
  admin:
    url: \"http://127.0.0.1:9002\"
";

fn path() -> &'static Path {
    Path::new("config/scopegate.yaml")
}

/// Parses with a fixed environment: `OPENAI_API_KEY=sk-test`, `EMPTY=`.
fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
    parse_with_env(text, path(), &|name| match name {
        "OPENAI_API_KEY" => Ok("sk-test".to_string()),
        "EMPTY" => Ok(String::new()),
        _ => Err(EnvError::NotSet),
    })
}

fn config(text: &str) -> Config {
    match parse(text) {
        Ok(c) => c,
        Err(d) => panic!("expected a valid config, got {d:#?}"),
    }
}

fn plain(addresses: &[&str]) -> Vec<Listener> {
    addresses.iter().map(|a| Listener::plain(*a)).collect()
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected the config to be refused"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn defaults_fill_what_is_not_written() {
    let c = config(MINIMAL);
    assert_eq!(c.path, path());
    assert_eq!(c.listen, plain(&["127.0.0.1:8080"]));
    assert_eq!(c.metrics_listen, None);
    assert_eq!(c.threads, None);
    assert_eq!(c.reload_poll_interval_ms, 1000);
    assert_eq!(c.max_inspect_body_bytes, 65536);
    assert_eq!(c.log_format, LogFormat::Pretty);
    assert_eq!(c.shutdown_grace_period_seconds, 30);
    assert_eq!(c.header_read_timeout_ms, 10_000);
    assert_eq!(c.idle_timeout_ms, 60_000);
    assert_eq!(c.max_client_connections, 10_000);
    assert!(c.routes.is_empty());
    assert!(c.builtin_routes);
    let up = &c.upstreams.completions;
    assert_eq!(
        (
            up.tls,
            up.host.as_str(),
            up.port,
            up.authority.as_str(),
            up.sni.as_str()
        ),
        (false, "127.0.0.1", 9001, "127.0.0.1:9001", "127.0.0.1")
    );
    assert_eq!((up.connect_timeout_ms, up.read_timeout_ms), (2000, 600_000));
    assert!(up.set_headers.is_empty());
    assert_eq!(up.ca_file, None);
}

#[test]
fn the_shipped_example_is_valid() {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/scopegate.yaml"
    ));
    let c = config(text);
    assert_eq!(c.keys_file, Path::new("config/keys.yaml"));
    assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:9464"));
    assert_eq!(c.threads, Some(2));
    // The demo's WebSocket step (docs/demo.md 9) needs this opted-in route.
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].path, "/v1/realtime");
    assert_eq!(c.routes[0].upgrade.as_deref(), Some("websocket"));
}

#[test]
fn every_setting_is_read() {
    let text = "\
listen: [\"127.0.0.1:8080\", \"[::1]:8080\"]
metrics_listen: \"127.0.0.1:9464\"
threads: 4
keys_file: /etc/scopegate/keys.yaml
reload_poll_interval_ms: 50
max_inspect_body_bytes: 67108864
log_format: json
shutdown_grace_period_seconds: 5
upstreams:
  completions:
    url: \"https://API.example.com/\"
    connect_timeout_ms: 100
    read_timeout_ms: 200
    set_headers:
      Authorization: \"Bearer ${OPENAI_API_KEY}\"
      x-literal: \"$${NOT_EXPANDED} costs $5\"
  admin:
    url: \"https://[::1]:8443\"
routes:
  - { methods: [GET], path: \"/v1/reports/{id}\", plane: control, scopes: [reports.read] }
  - { methods: [POST, PUT], path: \"/v1/reports\", plane: data, scopes_all: [reports.write, logs.write] }
builtin_routes: false
";
    let c = config(text);
    assert_eq!(c.listen, plain(&["127.0.0.1:8080", "[::1]:8080"]));
    assert_eq!(c.threads, Some(4));
    assert_eq!(c.keys_file, Path::new("/etc/scopegate/keys.yaml"));
    assert_eq!(c.reload_poll_interval_ms, 50);
    assert_eq!(c.max_inspect_body_bytes, 64 * 1024 * 1024);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.shutdown_grace_period_seconds, 5);
    let up = &c.upstreams.completions;
    assert_eq!(up.url, "https://API.example.com");
    assert_eq!(
        (
            up.tls,
            up.host.as_str(),
            up.port,
            up.authority.as_str(),
            up.sni.as_str()
        ),
        (
            true,
            "api.example.com",
            443,
            "api.example.com",
            "api.example.com"
        )
    );
    assert_eq!((up.connect_timeout_ms, up.read_timeout_ms), (100, 200));
    assert_eq!(
        up.set_headers,
        vec![
            ("authorization".to_string(), "Bearer sk-test".to_string()),
            (
                "x-literal".to_string(),
                "${NOT_EXPANDED} costs $5".to_string()
            ),
        ]
    );
    let admin = &c.upstreams.admin;
    assert_eq!(
        (
            admin.host.as_str(),
            admin.port,
            admin.authority.as_str(),
            admin.sni.as_str()
        ),
        ("[::1]", 8443, "[::1]:8443", "::1")
    );
    assert_eq!(c.routes.len(), 2);
    assert!(!c.builtin_routes);
    assert_eq!(
        c.extra_route_scopes().collect::<Vec<_>>(),
        vec!["reports.read", "reports.write", "logs.write"]
    );
}

#[test]
fn listen_is_one_address_or_a_list() {
    assert_eq!(config(MINIMAL).listen, plain(&["127.0.0.1:8080"]));
    let list = MINIMAL.replace(
        "listen: \"127.0.0.1:8080\"",
        "listen:\n  - 127.0.0.1:8080\n  - \"[::]:8081\"",
    );
    assert_eq!(
        config(&list).listen,
        plain(&["127.0.0.1:8080", "[::]:8081"])
    );
    let bad = MINIMAL.replace(
        "listen: \"127.0.0.1:8080\"",
        "listen: [\"localhost:8080\", \"127.0.0.1:8080\", \"127.0.0.1:8080\"]",
    );
    assert_eq!(
        errors(&bad),
        vec![
            "config/scopegate.yaml:1:10: listen: `localhost:8080` is not an IP:PORT address such as 127.0.0.1:8080 or [::]:8080 (host names are not resolved here)",
            "config/scopegate.yaml:1:46: listen: `127.0.0.1:8080` is listed twice",
        ]
    );
    let empty = MINIMAL.replace("listen: \"127.0.0.1:8080\"", "listen: []");
    assert_eq!(
        errors(&empty),
        vec![
            "config/scopegate.yaml:1:9: listen: needs at least one address, such as 127.0.0.1:8080"
        ]
    );
    let number = MINIMAL.replace("listen: \"127.0.0.1:8080\"", "listen: 8080");
    assert_eq!(
        errors(&number),
        vec!["config/scopegate.yaml:1:9: listen: invalid type: integer `8080`, expected an address such as \"127.0.0.1:8080\", a mapping with `address` and `tls`, or a list of them"]
    );
}

#[test]
fn relative_keys_file_resolves_against_the_config_folder() {
    assert_eq!(config(MINIMAL).keys_file, Path::new("config/keys.yaml"));
    let nested = MINIMAL.replace("keys_file: keys.yaml", "keys_file: ../secrets/keys.yaml");
    assert_eq!(
        config(&nested).keys_file,
        Path::new("config/../secrets/keys.yaml")
    );
    let bare = parse_with_env(MINIMAL, Path::new("scopegate.yaml"), &|_| {
        Err(EnvError::NotSet)
    })
    .expect("valid");
    assert_eq!(bare.keys_file, Path::new("keys.yaml"));
}

#[test]
fn unknown_fields_are_errors_at_their_position() {
    let top = format!("{MINIMAL}metrics_listn: \"127.0.0.1:9464\"\n");
    assert_eq!(
        errors(&top),
        vec!["config/scopegate.yaml:8:1: unknown field `metrics_listn` (did you mean `metrics_listen`?)"]
    );
    let nested = MINIMAL.replace(
        "    url: \"http://127.0.0.1:9002\"",
        "    url: \"http://127.0.0.1:9002\"\n    read_timeout: 5",
    );
    assert_eq!(
        errors(&nested),
        vec!["config/scopegate.yaml:8:5: upstreams.admin: unknown field `read_timeout` (did you mean `read_timeout_ms`?)"]
    );
    let route = format!(
        "{MINIMAL}routes:\n  - {{ methods: [GET], path: /x, plane: data, scope: [a.b] }}\n"
    );
    assert_eq!(
        errors(&route),
        vec![
            "config/scopegate.yaml:9:46: routes[0]: unknown field `scope` (did you mean `scopes`?)"
        ]
    );
}

#[test]
fn wrong_types_and_missing_fields_name_the_field() {
    let text = MINIMAL.replace("keys_file: keys.yaml\n", "");
    assert_eq!(
        errors(&text),
        vec!["config/scopegate.yaml:1:1: missing field `keys_file`"]
    );
    let text = format!("{MINIMAL}threads: many\n");
    assert_eq!(
        errors(&text),
        vec!["config/scopegate.yaml:8:10: threads: invalid type: string \"many\", expected usize"]
    );
    let text = format!("{MINIMAL}log_format: xml\n");
    assert_eq!(
        errors(&text),
        vec!["config/scopegate.yaml:8:13: log_format: unknown variant `xml`, expected `pretty` or `json`"]
    );
}

#[test]
fn env_vars_expand_in_set_headers() {
    let with = |value: &str| {
        MINIMAL.replace(
            "    url: \"http://127.0.0.1:9001\"",
            &format!("    url: \"http://127.0.0.1:9001\"\n    set_headers:\n      authorization: \"{value}\""),
        )
    };
    let header = |value: &str| {
        config(&with(value)).upstreams.completions.set_headers[0]
            .1
            .clone()
    };
    assert_eq!(header("Bearer ${OPENAI_API_KEY}"), "Bearer sk-test");
    assert_eq!(
        header("${OPENAI_API_KEY}${OPENAI_API_KEY}"),
        "sk-testsk-test"
    );
    assert_eq!(header("$5 $$ $x ${OPENAI_API_KEY}"), "$5 $$ $x sk-test");
    assert_eq!(header("$${OPENAI_API_KEY}"), "${OPENAI_API_KEY}");
    assert_eq!(
        errors(&with("Bearer ${MISSING_KEY}")),
        vec!["config/scopegate.yaml:7:22: environment variable MISSING_KEY is not set (used in upstreams.completions.set_headers.authorization)"]
    );
    assert_eq!(
        errors(&with("Bearer ${EMPTY}")),
        vec!["config/scopegate.yaml:7:22: environment variable EMPTY is empty (used in upstreams.completions.set_headers.authorization)"]
    );
    assert_eq!(
        errors(&with("Bearer ${OPENAI-KEY}")),
        vec!["config/scopegate.yaml:7:22: upstreams.completions.set_headers.authorization: `${OPENAI-KEY}` is not a variable name (letters, digits and `_`); write `$${` for a literal `${`"]
    );
    assert_eq!(
        errors(&with("Bearer ${OPENAI_API_KEY")),
        vec!["config/scopegate.yaml:7:22: upstreams.completions.set_headers.authorization: `${` without a closing `}`; write `$${` for a literal `${`"]
    );
}

#[test]
fn env_vars_come_from_the_process_environment() {
    // A name no other test uses, so setting it cannot disturb them.
    std::env::set_var("SCOPEGATE_TEST_PROVIDER_KEY_4242", "sk-from-env");
    let text = MINIMAL.replace(
        "    url: \"http://127.0.0.1:9001\"",
        "    url: \"http://127.0.0.1:9001\"\n    set_headers: { authorization: \"Bearer ${SCOPEGATE_TEST_PROVIDER_KEY_4242}\" }",
    );
    let c = parse_config_str(&text, path()).expect("valid");
    assert_eq!(
        c.upstreams.completions.set_headers[0].1,
        "Bearer sk-from-env"
    );
    let unset = text.replace("4242", "4243");
    let e = parse_config_str(&unset, path()).expect_err("unset");
    assert_eq!(
        e[0].message,
        "environment variable SCOPEGATE_TEST_PROVIDER_KEY_4243 is not set (used in upstreams.completions.set_headers.authorization)"
    );
}

#[test]
fn set_headers_may_not_touch_what_the_proxy_owns() {
    let text = MINIMAL.replace(
        "    url: \"http://127.0.0.1:9002\"",
        "    url: \"http://127.0.0.1:9002\"
    set_headers:
      X-Scopegate-Key-Id: forged
      Connection: close
      host: example.com
      content-length: \"0\"
      x-request-id: fixed
      \"bad header\": x
      x-ok: one
      X-OK: two
      x-bad-value: \"a\\nb\"",
    );
    assert_eq!(
        errors(&text),
        vec![
            "config/scopegate.yaml:9:27: upstreams.admin.set_headers.X-Scopegate-Key-Id: `x-scopegate-key-id` cannot be set here: x-scopegate-* headers carry the proxy's verdict about the caller's key, which the upstream trusts",
            "config/scopegate.yaml:10:19: upstreams.admin.set_headers.Connection: `connection` cannot be set here: it is a hop-by-hop header, managed per connection",
            "config/scopegate.yaml:11:13: upstreams.admin.set_headers.host: `host` cannot be set here: the Host header is the upstream url's authority",
            "config/scopegate.yaml:12:23: upstreams.admin.set_headers.content-length: `content-length` cannot be set here: the body's length is the proxy's to set",
            "config/scopegate.yaml:13:21: upstreams.admin.set_headers.x-request-id: `x-request-id` cannot be set here: the proxy sets a request id per request",
            "config/scopegate.yaml:14:21: upstreams.admin.set_headers.bad header: `bad header` is not a valid HTTP header name",
            "config/scopegate.yaml:16:13: upstreams.admin.set_headers.X-OK: `x-ok` is set twice",
            "config/scopegate.yaml:17:20: upstreams.admin.set_headers.x-bad-value: the value (after expanding variables) is not a valid header value: it has a line break, control character or non-ASCII character",
        ]
    );
}

#[test]
fn upstream_urls() {
    let ok = |url: &str| parse_url(url).expect(url);
    assert_eq!(
        ok("http://localhost"),
        ParsedUrl {
            tls: false,
            host: "localhost".into(),
            port: 80
        }
    );
    assert_eq!(
        ok("HTTPS://Api.OpenAI.com:443/"),
        ParsedUrl {
            tls: true,
            host: "api.openai.com".into(),
            port: 443
        }
    );
    assert_eq!(
        ok("http://10.0.0.1:8080"),
        ParsedUrl {
            tls: false,
            host: "10.0.0.1".into(),
            port: 8080
        }
    );
    assert_eq!(
        ok("https://[2001:db8::1]"),
        ParsedUrl {
            tls: true,
            host: "[2001:db8::1]".into(),
            port: 443
        }
    );
    assert_eq!(ok("http://svc_name.ns.svc:80").host, "svc_name.ns.svc");
    for (url, why) in [
        ("127.0.0.1:9001", "must start with http:// or https://"),
        ("ftp://x", "must start with http:// or https://"),
        ("http://x/v1", "no path, query or fragment"),
        ("http://x?a=b", "no path, query or fragment"),
        ("http://x//", "no path, query or fragment"),
        ("http://user:pw@x", "must not carry credentials"),
        ("http://", "is not a host name"),
        ("http://x:", "is not a port"),
        ("http://x:0", "is not a port"),
        ("http://x:65536", "is not a port"),
        ("http://x:+80", "is not a port"),
        ("http://-x.com", "is not a host name"),
        ("http://a..b", "is not a host name"),
        ("http://a b", "is not a host name"),
        ("http://[::1", "`[` without `]`"),
        ("http://[::g]", "is not an IPv6 address"),
        ("http://[::1]x", "only `:port` may follow"),
    ] {
        let e = parse_url(url).expect_err(url);
        assert!(e.contains(why), "{url}: {e}");
    }
}

#[test]
fn url_problems_are_positioned() {
    let text = MINIMAL.replace("\"http://127.0.0.1:9002\"", "\"http://127.0.0.1:9002/v1\"");
    assert_eq!(
        errors(&text),
        vec!["config/scopegate.yaml:7:10: upstreams.admin.url: `http://127.0.0.1:9002/v1` must be scheme, host and port only, with no path, query or fragment: request paths go upstream unchanged"]
    );
}

#[test]
fn authority_carries_the_port_only_when_not_the_default() {
    let text = MINIMAL
        .replace("http://127.0.0.1:9001", "https://api.example.com:8443")
        .replace("http://127.0.0.1:9002", "http://admin.internal:80");
    let c = config(&text);
    assert_eq!(c.upstreams.completions.authority, "api.example.com:8443");
    assert_eq!(c.upstreams.admin.authority, "admin.internal");
}

#[test]
fn ca_file_resolves_and_must_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").expect("write");
    let text = MINIMAL
        .replace("http://127.0.0.1:9001", "https://127.0.0.1:9001")
        .replace(
            "    url: \"https://127.0.0.1:9001\"",
            "    url: \"https://127.0.0.1:9001\"\n    ca_file: ca.pem",
        );
    let file = dir.path().join("scopegate.yaml");
    let env: Env<'_> = &|_| Err(EnvError::NotSet);
    let c = parse_with_env(&text, &file, env).expect("valid");
    assert_eq!(
        c.upstreams.completions.ca_file,
        Some(dir.path().join("ca.pem"))
    );

    let missing = text.replace("ca_file: ca.pem", "ca_file: nope.pem");
    let e = parse_with_env(&missing, &file, env).expect_err("missing");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].message
            .starts_with("upstreams.completions.ca_file: cannot read `"),
        "{e:?}"
    );
    assert_eq!(e[0].position, Some((6, 14)));

    let plain_http = text.replace("https://", "http://");
    let e = parse_with_env(&plain_http, &file, env).expect_err("http");
    assert_eq!(
        e[0].message,
        "upstreams.completions.ca_file: is only used with an https:// url"
    );
}

#[test]
fn limits_are_checked() {
    let text = format!(
        "{MINIMAL}threads: 0\nreload_poll_interval_ms: 10\nmax_inspect_body_bytes: 0\nmetrics_listen: \"127.0.0.1:8080\"\n"
    );
    assert_eq!(
        errors(&text),
        vec![
            "config/scopegate.yaml:8:10: threads: must be at least 1 (omit it for one per CPU)",
            "config/scopegate.yaml:9:26: reload_poll_interval_ms: must be at least 50 (filesystem events and SIGHUP reload at once; the poll is a fallback)",
            "config/scopegate.yaml:10:25: max_inspect_body_bytes: must be at least 1",
            "config/scopegate.yaml:11:17: metrics_listen: `127.0.0.1:8080` is also a proxy listen address",
        ]
    );
    let zero_timeout = format!("{MINIMAL}body_read_timeout_ms: 0\n");
    assert_eq!(
        errors(&zero_timeout),
        vec!["config/scopegate.yaml:8:23: body_read_timeout_ms: must be at least 1 (milliseconds a read body may take to arrive whole)"]
    );
    let big = format!("{MINIMAL}max_inspect_body_bytes: 67108865\n");
    assert_eq!(
        errors(&big),
        vec!["config/scopegate.yaml:8:25: max_inspect_body_bytes: must be at most 67108864 (64 MiB): inspected bodies are held in memory"]
    );
    let timeouts = MINIMAL.replace(
        "    url: \"http://127.0.0.1:9002\"",
        "    url: \"http://127.0.0.1:9002\"\n    connect_timeout_ms: 0",
    );
    assert_eq!(
        errors(&timeouts),
        vec!["config/scopegate.yaml:8:25: upstreams.admin.connect_timeout_ms: must be at least 1"]
    );
}

#[test]
fn header_read_timeout_is_read_and_cannot_be_off_or_beyond_a_minute() {
    let c = config(&format!("{MINIMAL}header_read_timeout_ms: 1500\n"));
    assert_eq!(c.header_read_timeout_ms, 1500);
    assert_eq!(
        config(&format!("{MINIMAL}header_read_timeout_ms: 60000\n")).header_read_timeout_ms,
        60_000
    );
    for bad in ["0", "60001"] {
        assert_eq!(
            errors(&format!("{MINIMAL}header_read_timeout_ms: {bad}\n")),
            vec![
                "config/scopegate.yaml:8:25: header_read_timeout_ms: must be between 1 and \
                  60000 (60 s): the header deadline cannot be turned off, and pingora already \
                  ends a connection whose single read waits 60 s"
            ],
            "{bad}"
        );
    }
}

#[test]
fn idle_timeout_is_read_and_cannot_be_off_or_beyond_an_hour() {
    let c = config(&format!("{MINIMAL}idle_timeout_ms: 300\n"));
    assert_eq!(c.idle_timeout_ms, 300);
    assert_eq!(
        config(&format!("{MINIMAL}idle_timeout_ms: 3600000\n")).idle_timeout_ms,
        3_600_000
    );
    for bad in ["0", "3600001"] {
        assert_eq!(
            errors(&format!("{MINIMAL}idle_timeout_ms: {bad}\n")),
            vec![
                "config/scopegate.yaml:8:18: idle_timeout_ms: must be between 1 and 3600000 \
                 (1 hour): an idle client connection cannot be kept for ever"
            ],
            "{bad}"
        );
    }
}

#[test]
fn max_client_connections_is_read_and_cannot_be_off() {
    let c = config(&format!("{MINIMAL}max_client_connections: 2\n"));
    assert_eq!(c.max_client_connections, 2);
    for bad in ["0", "1000001"] {
        assert_eq!(
            errors(&format!("{MINIMAL}max_client_connections: {bad}\n")),
            vec![
                "config/scopegate.yaml:8:25: max_client_connections: must be between 1 and \
                 1000000: the bound on open client connections cannot be turned off"
            ],
            "{bad}"
        );
    }
}

#[test]
fn extra_routes_get_light_checks_with_positions() {
    let text = format!(
        "{MINIMAL}routes:
  - {{ methods: [get], path: \"/v1/x/{{id}}\", plane: data, scopes: [x.read] }}
  - {{ methods: [GET], path: \"v1/y\", plane: data, scopes: [x.read] }}
  - {{ methods: [GET], path: \"/v1//y\", plane: data, scopes: [x.read] }}
  - {{ methods: [GET], path: \"/v1/y/{{a}}/{{a}}\", plane: data, scopes: [x.read] }}
  - {{ methods: [GET], path: \"/v1/y/a{{id}}\", plane: data, scopes: [x.read] }}
  - {{ methods: [GET], path: \"/v1/y/{{1d}}\", plane: data, scopes: [x.read] }}
  - {{ methods: [GET], path: \"/v1/z\", plane: data }}
  - {{ methods: [GET], path: \"/v1/z\", plane: data, scopes: [a.b], scopes_all: [c.d] }}
  - {{ methods: [], path: \"/v1/w\", plane: data, scopes: [\"x.*\"] }}
  - {{ methods: [GET, GET], path: \"/v1/v/{{a}}\", plane: data, scopes: [x.read] }}
  - {{ methods: [GET], path: \"/v1/v/{{b}}\", plane: control, scopes: [x.read] }}
"
    );
    assert_eq!(
        errors(&text),
        vec![
            "config/scopegate.yaml:9:17: routes[0].methods[0]: `get` is not an upper-case HTTP method such as GET, POST, PUT, PATCH or DELETE",
            "config/scopegate.yaml:10:29: routes[1].path: path `v1/y` must start with `/`",
            "config/scopegate.yaml:11:29: routes[2].path: path `/v1//y` has an empty segment",
            "config/scopegate.yaml:12:29: routes[3].path: path `/v1/y/{a}/{a}`: parameter `{a}` appears twice",
            "config/scopegate.yaml:13:29: routes[4].path: path `/v1/y/a{id}`: segment `a{id}` may not contain `{`, `}`, `*`, `%`, `?`, `#`, `\\`, spaces or control characters; parameters are whole segments like `{id}`",
            "config/scopegate.yaml:14:29: routes[5].path: path `/v1/y/{1d}`: parameter `{1d}` must be a name of letters, digits and `_`",
            "config/scopegate.yaml:15:5: routes[6]: needs `scopes` (any of) or `scopes_all` (all of)",
            "config/scopegate.yaml:16:17: routes[7].methods[0]: GET /v1/z is already routed by routes[6]",
            "config/scopegate.yaml:16:78: routes[7]: give either `scopes` (any of) or `scopes_all` (all of), not both",
            "config/scopegate.yaml:17:16: routes[8].methods: a route needs at least one method",
            "config/scopegate.yaml:17:57: routes[8].scopes[0]: `x.*` is not a scope name: routes name plain scopes like `reports.read` (no wildcards)",
            "config/scopegate.yaml:18:22: routes[9].methods[1]: `GET` is listed twice",
            "config/scopegate.yaml:19:17: routes[10].methods[0]: GET /v1/v/{b} is already routed by routes[9]",
        ]
    );
}

#[test]
fn route_upgrade_is_websocket_on_a_get_route_or_an_error() {
    let text = format!(
        "{MINIMAL}routes:
  - {{ methods: [GET], path: \"/v1/rt\", plane: data, scopes: [x.read], upgrade: websocket }}
"
    );
    assert_eq!(
        config(&text).routes[0].upgrade.as_deref(),
        Some("websocket")
    );
    let text = format!(
        "{MINIMAL}routes:
  - {{ methods: [GET], path: \"/v1/a\", plane: data, scopes: [x.read], upgrade: h2c }}
  - {{ methods: [POST], path: \"/v1/b\", plane: data, scopes: [x.read], upgrade: websocket }}
"
    );
    assert_eq!(
        errors(&text),
        vec![
            "config/scopegate.yaml:9:78: routes[0].upgrade: `h2c` is not an upgrade this proxy forwards: the only value is `websocket`",
            "config/scopegate.yaml:10:79: routes[1].upgrade: `upgrade: websocket` needs GET among the route's methods (a WebSocket handshake is a GET)",
        ]
    );
}

#[test]
fn builtin_routes_off_needs_routes() {
    let text = format!("{MINIMAL}builtin_routes: false\n");
    assert_eq!(
        errors(&text),
        vec!["config/scopegate.yaml:8:17: builtin_routes: is false and `routes` is empty, so every request would be answered 404"]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = MINIMAL
        .replace("listen: \"127.0.0.1:8080\"", "listen: \"127.0.0.1\"")
        .replace("http://127.0.0.1:9001", "127.0.0.1:9001")
        .replace("http://127.0.0.1:9002", "http://127.0.0.1:9002/admin");
    let e = errors(&format!("{text}reload_poll_interval_ms: 1\n"));
    assert_eq!(e.len(), 4, "{e:#?}");
}

#[test]
fn files_that_are_not_a_config() {
    assert_eq!(
        errors(""),
        vec!["config/scopegate.yaml: config file is empty"]
    );
    assert_eq!(
        errors("# nothing yet\n"),
        vec!["config/scopegate.yaml: config file is empty: it has comments but no settings"]
    );
    assert_eq!(
        errors("listen"),
        vec!["config/scopegate.yaml:1:1: config file must be a mapping of settings (docs/reference.md#server-config), but it is a single value"]
    );
    assert_eq!(
        errors("# settings\n- listen\n"),
        vec!["config/scopegate.yaml:2:1: config file must be a mapping of settings (docs/reference.md#server-config), but it is a list"]
    );
    let e = errors("listen: [\"127.0.0.1:8080\"\nkeys_file: x\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("config/scopegate.yaml:2:"), "{}", e[0]);
    assert!(e[0].contains("invalid YAML: "), "{}", e[0]);
    // A half-written file never panics.
    let full = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/scopegate.yaml"
    ));
    for cut in (0..full.len()).filter(|c| full.is_char_boundary(*c)) {
        let _ = parse(&full[..cut]);
    }
}

#[test]
fn load_config_reads_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("scopegate.yaml");
    std::fs::write(&file, MINIMAL).expect("write");
    let c = load_config(&file).expect("valid");
    assert_eq!(c.keys_file, dir.path().join("keys.yaml"));
    let e = load_config(&dir.path().join("missing.yaml")).expect_err("missing");
    assert!(
        e[0].to_string()
            .ends_with("missing.yaml: config file not found"),
        "{e:?}"
    );
}

#[test]
fn default_config_path_honours_the_environment() {
    // Only this test touches SCOPEGATE_CONFIG.
    std::env::remove_var("SCOPEGATE_CONFIG");
    assert_eq!(default_config_path(), Path::new("config/scopegate.yaml"));
    std::env::set_var("SCOPEGATE_CONFIG", "/etc/scopegate.yaml");
    assert_eq!(default_config_path(), Path::new("/etc/scopegate.yaml"));
    std::env::remove_var("SCOPEGATE_CONFIG");
}

// ---------------------------------------------------------------------------
// TLS listeners (the reference on HTTPS listeners).

/// A config folder holding empty `tls/server.pem`, `tls/server-key.pem` and
/// `tls/clients-ca.pem` (the config only checks they are files).
fn tls_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("tls")).expect("mkdir");
    for f in ["server.pem", "server-key.pem", "clients-ca.pem"] {
        std::fs::write(dir.path().join("tls").join(f), "").expect("write");
    }
    dir
}

fn parse_in(dir: &Path, text: &str) -> Result<Config, Vec<Diagnostic>> {
    parse_with_env(text, &dir.join("scopegate.yaml"), &|_| {
        Err(EnvError::NotSet)
    })
}

fn with_listen(listen: &str) -> String {
    MINIMAL.replace("listen: \"127.0.0.1:8080\"", listen)
}

#[test]
fn tls_listener_entries_sit_beside_plain_ones_with_paths_from_the_config_folder() {
    let dir = tls_dir();
    let text = with_listen(
        "listen:
  - \"127.0.0.1:8080\"
  - address: \"0.0.0.0:8443\"
    tls:
      cert_file: tls/server.pem
      key_file: tls/server-key.pem
      client_ca_file: tls/clients-ca.pem
  - address: \"[::1]:8444\"
    tls: { cert_file: tls/server.pem, key_file: tls/server-key.pem }
    http2: false",
    );
    let c = parse_in(dir.path(), &text).expect("valid");
    let tls = |cert: &str, key: &str, ca: Option<&str>, http2: bool| {
        Some(ListenerTls {
            cert_file: dir.path().join(cert),
            key_file: dir.path().join(key),
            client_ca_file: ca.map(|ca| dir.path().join(ca)),
            http2,
        })
    };
    assert_eq!(
        c.listen,
        vec![
            Listener::plain("127.0.0.1:8080"),
            Listener {
                address: "0.0.0.0:8443".into(),
                tls: tls(
                    "tls/server.pem",
                    "tls/server-key.pem",
                    Some("tls/clients-ca.pem"),
                    true
                ),
            },
            Listener {
                address: "[::1]:8444".into(),
                tls: tls("tls/server.pem", "tls/server-key.pem", None, false),
            },
        ]
    );
}

#[test]
fn one_tls_mapping_alone_is_a_listen_value_too() {
    let dir = tls_dir();
    let text = with_listen(
        "listen: { address: \"127.0.0.1:8443\", tls: { cert_file: tls/server.pem, key_file: tls/server-key.pem } }",
    );
    let c = parse_in(dir.path(), &text).expect("valid");
    assert_eq!(c.listen.len(), 1);
    assert!(c.listen[0].tls.as_ref().is_some_and(|t| t.http2));
}

#[test]
fn unknown_fields_in_a_listener_are_errors_with_positions() {
    let dir = tls_dir();
    let typo = with_listen(
        "listen:
  - address: \"127.0.0.1:8443\"
    tls:
      cert_file: tls/server.pem
      key_file: tls/server-key.pem
      client_ca: tls/clients-ca.pem",
    );
    let e = parse_in(dir.path(), &typo).expect_err("refused");
    let msg = e[0].to_string();
    assert!(
        msg.contains(":6:7: ") && msg.contains("unknown field `client_ca`"),
        "{msg}"
    );
    let outer = with_listen("listen:\n  - address: \"127.0.0.1:8443\"\n    http3: true");
    let e = parse_in(dir.path(), &outer).expect_err("refused");
    let msg = e[0].to_string();
    assert!(
        msg.contains(":3:5: ") && msg.contains("unknown field `http3`"),
        "{msg}"
    );
}

#[test]
fn missing_tls_files_and_http2_without_tls_are_reported_where_written() {
    let dir = tls_dir();
    let text = with_listen(
        "listen:
  - address: \"127.0.0.1:8443\"
    tls:
      cert_file: tls/nope.pem
      key_file: tls
  - address: \"127.0.0.1:8443\"
    http2: true",
    );
    let e: Vec<String> = parse_in(dir.path(), &text)
        .expect_err("refused")
        .iter()
        .map(ToString::to_string)
        .collect();
    let at = |line_col: &str, needle: &str| {
        assert!(
            e.iter()
                .any(|m| m.contains(&format!("scopegate.yaml:{line_col}: ")) && m.contains(needle)),
            "no `{needle}` at {line_col} in {e:#?}"
        );
    };
    at("4:18", "listen[0].tls.cert_file: cannot read");
    at("5:17", "listen[0].tls.key_file: ");
    at("5:17", "is not a regular file");
    at("6:14", "`127.0.0.1:8443` is listed twice");
    at(
        "7:12",
        "listen[1].http2: HTTP/2 is offered by ALPN on TLS listeners only",
    );
    assert_eq!(e.len(), 4, "{e:#?}");
}

#[test]
fn default_output_reservation_defaults_to_4096_and_is_bounded() {
    assert_eq!(config(MINIMAL).default_output_reservation, 4096);
    for n in [0, 1, 100_000_000] {
        let text = format!("{MINIMAL}default_output_reservation: {n}\n");
        assert_eq!(config(&text).default_output_reservation, n);
    }
    assert_eq!(
        errors(&format!("{MINIMAL}default_output_reservation: 100000001\n")),
        vec!["config/scopegate.yaml:8:29: default_output_reservation: must be at most 100000000 tokens (0 reserves no output for requests that name no maximum)"]
    );
    assert!(
        errors(&format!("{MINIMAL}default_output_reservation: -1\n"))[0]
            .starts_with("config/scopegate.yaml:8:")
    );
}

#[test]
fn route_meter_is_for_data_posts_without_upgrade_or_an_error() {
    let text = format!(
        "{MINIMAL}routes:
  - {{ methods: [POST], path: \"/openai/deployments/{{d}}/chat/completions\", plane: data, scopes: [x.read], meter: chat }}
"
    );
    assert_eq!(
        config(&text).routes[0].meter,
        Some(crate::limits::UsageApi::Chat)
    );
    let text = format!(
        "{MINIMAL}routes:
  - {{ methods: [POST], path: \"/v1/a\", plane: control, scopes: [x.read], meter: chat }}
  - {{ methods: [GET, POST], path: \"/v1/b\", plane: data, scopes: [x.read], upgrade: websocket, meter: responses }}
  - {{ methods: [GET], path: \"/v1/c\", plane: data, scopes: [x.read], meter: embeddings }}
"
    );
    assert_eq!(
        errors(&text),
        vec![
            "config/scopegate.yaml:9:80: routes[0].meter: `meter: chat` is for data-plane routes: control-plane answers carry no token usage",
            "config/scopegate.yaml:10:102: routes[1].meter: `meter: responses` cannot be combined with `upgrade`: the traffic of an upgraded connection is never read, so it cannot be counted",
            "config/scopegate.yaml:11:76: routes[2].meter: `meter: embeddings` counts POST requests, and this route has no POST",
        ]
    );
    let unknown = format!(
        "{MINIMAL}routes:
  - {{ methods: [POST], path: \"/v1/a\", plane: data, scopes: [x.read], meter: rerank }}
"
    );
    let e = errors(&unknown);
    assert!(
        e[0].starts_with("config/scopegate.yaml:9:") && e[0].contains("rerank"),
        "{e:?}"
    );
}

#[test]
fn the_tracing_block_is_read_with_its_variables_and_positions() {
    assert_eq!(config(MINIMAL).tracing, None, "no block, no OTEL_*: off");
    let text = format!(
        "{MINIMAL}tracing:\n  otlp_endpoint: \"http://127.0.0.1:4318\"\n  headers: {{ x-tenant: \
         \"${{OPENAI_API_KEY}}\" }}\n  sample_ratio: 0.25\n"
    );
    let t = config(&text).tracing.expect("on");
    assert_eq!(t.endpoint, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(
        t.headers,
        vec![("x-tenant".to_string(), "sk-test".to_string())]
    );
    assert_eq!(t.sample_ratio, 0.25);
    assert_eq!(t.batch.delay, std::time::Duration::from_secs(5));
    let debug = format!("{t:?}");
    assert!(!debug.contains("sk-test"), "{debug}");

    let unknown = format!("{MINIMAL}tracing:\n  otlp_endpoint: \"http://c:4318\"\n  ratio: 1\n");
    let e = errors(&unknown);
    assert!(e[0].contains("ratio"), "{e:?}");
    let bad = format!(
        "{MINIMAL}tracing:\n  otlp_endpoint: \"c:4318\"\n  headers: {{ x-a: \"${{NOPE}}\" }}\n  \
         sample_ratio: 2\n"
    );
    let e = errors(&bad);
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e.iter()
            .any(|m| m.contains(":9:18:") && m.contains("tracing.otlp_endpoint")),
        "{e:?}"
    );
    assert!(e.iter().any(|m| m.contains("NOPE is not set")), "{e:?}");
    assert!(
        e.iter().any(|m| m.contains("tracing.sample_ratio")),
        "{e:?}"
    );
}

#[test]
fn the_standard_variables_turn_tracing_on_without_a_block() {
    let env = |name: &str| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Ok("http://collector:4317".to_string()),
        "OTEL_EXPORTER_OTLP_PROTOCOL" => Ok("grpc".to_string()),
        "OTEL_BSP_SCHEDULE_DELAY" => Ok("200".to_string()),
        _ => Err(EnvError::NotSet),
    };
    let c = parse_with_env(MINIMAL, path(), &env).expect("valid");
    let t = c.tracing.expect("on");
    assert_eq!(t.endpoint, "http://collector:4317");
    assert_eq!(t.protocol, traces::Protocol::Grpc);
    assert_eq!(t.batch.delay, std::time::Duration::from_millis(200));
    let too_slow = |name: &str| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Ok("http://collector:4318".to_string()),
        "OTEL_BSP_SCHEDULE_DELAY" => Ok("60000".to_string()),
        _ => Err(EnvError::NotSet),
    };
    let e = parse_with_env(MINIMAL, path(), &too_slow).expect_err("refused");
    assert!(
        e[0].to_string().contains("OTEL_BSP_SCHEDULE_DELAY"),
        "{e:?}"
    );
}
