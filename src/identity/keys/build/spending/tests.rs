//! spending limits through the loader: what a valid file yields, and every
//! rule's message with its `FILE:LINE:COL`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::diag::Diagnostic;
use crate::identity::keys::{digest_hex, parse_keys_str, Snapshot};
use crate::identity::scopes::ScopeRegistry;

/// A file with every spending field on a workspace and a key; line numbers
/// matter to the tests below.
fn full() -> String {
    format!(
        "\
organisations:
  - id: org_acme
    workspaces:
      - id: ws_research
        models: [\"gpt-4o*\", \"text-embedding-3-small\"]
        rate_limits:
          - {{ type: requests, unit: rps, value: 50 }}
          - {{ type: tokens, unit: rpm, value: 2000000 }}
        usage_limits: {{ type: cost, credit_limit: 500, alert_threshold: 400, periodic_reset: monthly }}
keys:
  - id: key_bot
    type: workspace-service
    workspace_id: ws_research
    sha256: \"{}\"
    scopes: [completions.write]
    models: [\"gpt-4o-mini\"]
    max_concurrent_requests: 8
    rate_limits:
      - {{ type: requests, unit: rpm, value: 600 }}
      - {{ type: tokens, unit: rpm, value: 200000 }}
    usage_limits:
      type: tokens
      credit_limit: 10000000
      alert_threshold: 8000000
      periodic_reset: monthly
model_prices:
  \"gpt-4o-mini\": {{ input: 0.15, output: 0.60 }}
  \"gpt-4o*\":     {{ input: 2.50, output: 10.00 }}
",
        digest_hex(b"bot")
    )
}

fn load(text: &str) -> Result<Snapshot, Vec<Diagnostic>> {
    parse_keys_str(text, Path::new("keys.yaml"), &ScopeRegistry::builtin())
}

/// The diagnostics as printed.
fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected the file to be refused:\n{text}"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

/// `full()` with one replacement, which must apply.
fn with(from: &str, to: &str) -> String {
    let text = full();
    assert!(text.contains(from), "{from:?} not in the file");
    text.replacen(from, to, 1)
}

fn patterns(list: &[&str]) -> Option<Arc<[Arc<str>]>> {
    Some(list.iter().map(|p| Arc::from(*p)).collect())
}

#[test]
fn a_file_with_every_limit_loads_into_limits() {
    let s = match load(&full()) {
        Ok(s) => s,
        Err(d) => panic!("{d:#?}"),
    };
    let (idx, key) = s.key_by_id("key_bot").expect("key");
    assert_eq!(
        key.limits(),
        &Limits {
            models: patterns(&["gpt-4o-mini"]),
            token_rates: vec![TokenRate {
                value: 200_000,
                period: Duration::from_secs(60)
            }],
            usage: Some(UsageLimit {
                kind: UsageKind::Tokens,
                credit_limit: 10_000_000.0,
                alert_threshold: Some(8_000_000.0),
                reset: Some(Reset::Monthly),
            }),
            max_concurrent: Some(8),
        }
    );
    assert_eq!(
        key.rate_limits,
        vec![RateLimit {
            value: 600,
            period: Duration::from_secs(60)
        }],
        "only request limits are request rate limits"
    );

    let (ws_idx, ws) = s.workspace_by_id("ws_research").expect("workspace");
    assert_eq!(key.workspace, Some(ws_idx));
    assert_eq!(
        ws.limits(),
        &Limits {
            models: patterns(&["gpt-4o*", "text-embedding-3-small"]),
            token_rates: vec![TokenRate {
                value: 2_000_000,
                period: Duration::from_secs(60)
            }],
            usage: Some(UsageLimit {
                kind: UsageKind::Cost,
                credit_limit: 500.0,
                alert_threshold: Some(400.0),
                reset: Some(Reset::Monthly),
            }),
            max_concurrent: None,
        }
    );
    assert_eq!(
        ws.rate_limits,
        vec![RateLimit {
            value: 50,
            period: Duration::from_secs(1)
        }]
    );
    let (k, w) = s.limits_for(idx);
    assert_eq!((k, w), (key.limits(), Some(ws.limits())));
    assert!(k.needs_body() && k.counts_tokens());

    let prices: Vec<(&str, Price)> = s
        .model_prices()
        .iter()
        .map(|(p, price)| (&**p, *price))
        .collect();
    assert_eq!(
        prices,
        vec![
            ("gpt-4o-mini", Price::flat(0.15, 0.60)),
            ("gpt-4o*", Price::flat(2.50, 10.00)),
        ],
        "file order"
    );
}

#[test]
fn limits_are_optional_and_default_to_none() {
    let text = "\
organisations:
  - id: o
    workspaces:
      - id: w
        slug: s
";
    let s = load(text).expect("valid");
    let (_, ws) = s.workspace_by_id("w").expect("by id");
    assert_eq!(ws.limits(), &Limits::default());
    assert!(ws.rate_limits.is_empty());
    assert!(s.workspace_by_id("s").is_none(), "a slug is not an id");
    assert!(s.model_prices().is_empty());
}

#[test]
fn model_prices_keep_file_order_even_against_sorting() {
    let text = with(
        "  \"gpt-4o-mini\": {",
        "  zeta: { input: 1, output: 2 }\n  alpha: { input: 0, output: 0 }\n  \"gpt-4o-mini\": {",
    );
    let s = load(&text).expect("valid");
    let order: Vec<&str> = s.model_prices().iter().map(|(p, _)| &**p).collect();
    assert_eq!(order, ["zeta", "alpha", "gpt-4o-mini", "gpt-4o*"]);
}

#[test]
fn a_model_pattern_is_not_empty() {
    assert_eq!(
        errors(&with(
            "models: [\"gpt-4o-mini\"]",
            "models: [\"gpt-4o-mini\", \"\"]"
        )),
        vec!["keys.yaml:16:29: keys[0] (key_bot): models[1]: model pattern must not be empty"]
    );
}

#[test]
fn a_model_pattern_is_visible_ascii_of_bounded_length() {
    let long = "m".repeat(257);
    let text = with("\"text-embedding-3-small\"", "\"text embedding\"")
        .replace("[\"gpt-4o-mini\"]", &format!("[{long}]"));
    assert_eq!(
        errors(&text),
        vec![
            "keys.yaml:5:29: organisations[0].workspaces[0] (ws_research): models[1]: model pattern `text embedding` must be 1 to 256 visible ASCII characters without spaces (`*` matches any run of characters)",
            &format!("keys.yaml:16:14: keys[0] (key_bot): models[0]: model pattern `{}…` must be 1 to 256 visible ASCII characters without spaces (`*` matches any run of characters)", "m".repeat(80)),
        ]
    );
}

#[test]
fn an_empty_model_list_is_refused() {
    assert_eq!(
        errors(&with("models: [\"gpt-4o-mini\"]", "models: []")),
        vec!["keys.yaml:16:13: keys[0] (key_bot): models: models is empty, which would refuse every model; omit it to allow any model, or list the patterns this key may use"]
    );
}

#[test]
fn credit_limit_is_finite_and_positive() {
    let text = with("credit_limit: 500,", "credit_limit: 0,")
        .replace("credit_limit: 10000000", "credit_limit: .inf");
    assert_eq!(
        errors(&text),
        vec![
            "keys.yaml:9:51: organisations[0].workspaces[0] (ws_research): usage_limits.credit_limit: credit_limit must be a finite number greater than 0",
            "keys.yaml:23:21: keys[0] (key_bot): usage_limits.credit_limit: credit_limit must be a finite number greater than 0",
        ]
    );
    assert_eq!(
        errors(&with("credit_limit: 10000000", "credit_limit: -1")),
        vec!["keys.yaml:23:21: keys[0] (key_bot): usage_limits.credit_limit: credit_limit must be a finite number greater than 0"]
    );
}

#[test]
fn alert_threshold_is_between_zero_and_credit_limit() {
    let text = with("alert_threshold: 400,", "alert_threshold: 500.5,")
        .replace("alert_threshold: 8000000", "alert_threshold: -1");
    assert_eq!(
        errors(&text),
        vec![
            "keys.yaml:9:73: organisations[0].workspaces[0] (ws_research): usage_limits.alert_threshold: alert_threshold (500.5) must not exceed credit_limit (500)",
            "keys.yaml:24:24: keys[0] (key_bot): usage_limits.alert_threshold: alert_threshold must be a finite number of at least 0",
        ]
    );
    // Equal is fine.
    assert!(load(&with("alert_threshold: 400,", "alert_threshold: 500,")).is_ok());
}

#[test]
fn cost_needs_model_prices() {
    let text = full();
    let cut = text.find("model_prices:").expect("prices");
    assert_eq!(
        errors(&text[..cut]),
        vec!["keys.yaml:9:31: organisations[0].workspaces[0] (ws_research): usage_limits.type: a usage limit of type `cost` needs `model_prices`: the price of each model in US dollars per million tokens"]
    );
}

#[test]
fn at_most_one_usage_limit() {
    let text = with(
        "    usage_limits:\n      type: tokens\n",
        "    usage_limits:\n      - { type: cost, credit_limit: 5 }\n      - type: tokens\n",
    )
    .replace(
        "      credit_limit: 10000000",
        "        credit_limit: 10000000",
    )
    .replace(
        "      alert_threshold: 8000000",
        "        alert_threshold: 8000000",
    )
    .replace(
        "      periodic_reset: monthly",
        "        periodic_reset: monthly",
    );
    assert_eq!(
        errors(&text),
        vec!["keys.yaml:23:9: keys[0] (key_bot): usage_limits[1]: at most one usage_limits per key (also usage_limits[0])"]
    );
    // A list of one is the mapping form.
    let one = with(
        "usage_limits: { type: cost, credit_limit: 500, alert_threshold: 400, periodic_reset: monthly }",
        "usage_limits: [{ type: cost, credit_limit: 500, alert_threshold: 400, periodic_reset: monthly }]",
    );
    let a = load(&one).expect("valid");
    let b = load(&full()).expect("valid");
    assert_eq!(
        a.workspace_by_id("ws_research").map(|(_, w)| w.limits()),
        b.workspace_by_id("ws_research").map(|(_, w)| w.limits())
    );
}

#[test]
fn periodic_reset_is_daily_weekly_or_monthly_with_a_hint() {
    assert_eq!(
        errors(&with("periodic_reset: monthly\n", "periodic_reset: mothly\n")),
        vec!["keys.yaml:25:23: keys[0] (key_bot): usage_limits.periodic_reset: unknown periodic_reset `mothly` (did you mean `monthly`?); expected `daily`, `weekly` or `monthly` (omit it for a budget that never resets)"]
    );
    let s = load(&with(
        "periodic_reset: monthly\n",
        "periodic_reset: weekly\n",
    ))
    .expect("ok");
    let (_, k) = s.key_by_id("key_bot").expect("key");
    assert_eq!(k.limits().usage.and_then(|u| u.reset), Some(Reset::Weekly));
    let never = full().replace("      periodic_reset: monthly\n", "");
    let s = load(&never).expect("ok");
    let (_, k) = s.key_by_id("key_bot").expect("key");
    assert_eq!(k.limits().usage.map(|u| u.reset), Some(None));
}

#[test]
fn usage_limit_type_is_tokens_or_cost_with_a_hint() {
    assert_eq!(
        errors(&with("      type: tokens\n", "      type: token\n")),
        vec!["keys.yaml:22:13: keys[0] (key_bot): usage_limits.type: unknown usage limit type `token` (did you mean `tokens`?); expected `tokens` or `cost`"]
    );
}

#[test]
fn token_rate_value_is_at_least_one_and_may_exceed_u32() {
    assert_eq!(
        errors(&with("value: 200000 }", "value: 0 }")),
        vec!["keys.yaml:20:43: keys[0] (key_bot): rate_limits[1].value: rate limit value must be at least 1"]
    );
    let s = load(&with("value: 200000 }", "value: 10000000000 }")).expect("ok");
    let (_, k) = s.key_by_id("key_bot").expect("key");
    assert_eq!(k.limits().token_rates[0].value, 10_000_000_000);
}

#[test]
fn a_unit_appears_once_per_type() {
    let text = with(
        "          - { type: tokens, unit: rpm, value: 2000000 }\n",
        "          - { type: tokens, unit: rpm, value: 2000000 }\n          - { type: tokens, unit: rpm, value: 5 }\n",
    );
    assert_eq!(
        errors(&text),
        vec!["keys.yaml:9:35: organisations[0].workspaces[0] (ws_research): rate_limits[2].unit: a second `rpm` tokens limit (also rate_limits[1]); each unit may appear once per type and workspace"]
    );
}

#[test]
fn rate_limit_type_is_requests_or_tokens() {
    assert_eq!(
        errors(&with("{ type: tokens, unit: rpm, value: 200000 }", "{ type: token, unit: rpm, value: 200000 }")),
        vec!["keys.yaml:20:17: keys[0] (key_bot): rate_limits[1].type: unknown rate limit type `token` (did you mean `tokens`?); expected `requests` or `tokens`"]
    );
}

#[test]
fn max_concurrent_requests_is_at_least_one() {
    assert_eq!(
        errors(&with("max_concurrent_requests: 8", "max_concurrent_requests: 0")),
        vec!["keys.yaml:17:30: keys[0] (key_bot): max_concurrent_requests: max_concurrent_requests must be at least 1"]
    );
    assert_eq!(
        errors(&with("max_concurrent_requests: 8", "max_concurrent_requests: 4294967296")),
        vec!["keys.yaml:17:30: keys[0] (key_bot): max_concurrent_requests: max_concurrent_requests must be at most 4294967295"]
    );
}

#[test]
fn max_concurrent_requests_is_for_keys_only() {
    let text = with(
        "        models: [\"gpt-4o*\"",
        "        max_concurrent_requests: 3\n        models: [\"gpt-4o*\"",
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("keys.yaml:5:9: organisations[0].workspaces[0] (ws_research): unknown field `max_concurrent_requests`"),
        "{}",
        e[0]
    );
}

#[test]
fn prices_are_finite_and_not_negative() {
    let text = with(
        "{ input: 0.15, output: 0.60 }",
        "{ input: -0.15, output: .nan }",
    );
    assert_eq!(
        errors(&text),
        vec![
            "keys.yaml:27:27: model_prices[0].input: price `input` must be a finite number of at least 0 (US dollars per million tokens)",
            "keys.yaml:27:42: model_prices[0].output: price `output` must be a finite number of at least 0 (US dollars per million tokens)",
        ]
    );
}

#[test]
fn price_patterns_are_not_empty_and_unique() {
    let text = with(
        "  \"gpt-4o*\":",
        "  \"\": { input: 1, output: 1 }\n  gpt-4o-mini:",
    );
    let e = errors(&text);
    assert_eq!(
        e,
        vec![
            "keys.yaml:28:3: model_prices[1]: model pattern must not be empty",
            "keys.yaml:29:3: model_prices[2]: duplicate model pattern `gpt-4o-mini` (also model_prices[0])",
        ]
    );
}

#[test]
fn unknown_fields_in_limits_are_errors_with_positions() {
    let e = errors(&with(
        "      alert_threshold: 8000000\n",
        "      alert: 8000000\n",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("keys.yaml:24:7: keys[0] (key_bot): usage_limits: unknown field `alert`"),
        "{}",
        e[0]
    );
    let e = errors(&with("output: 10.00 }", "output: 10.00, cached: 1 }"));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(
        e,
        vec!["keys.yaml:28:48: model_prices.gpt-4o*: unknown field `cached` (did you mean `cached_input`?)"],
        "no echo about `type: cost` needing prices"
    );
}

#[test]
fn every_limit_problem_is_listed_at_once() {
    let text = with("max_concurrent_requests: 8", "max_concurrent_requests: 0")
        .replace("periodic_reset: monthly }", "periodic_reset: yearly }")
        .replace("{ input: 0.15,", "{ input: -1,");
    let e = errors(&text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].starts_with("keys.yaml:9:"), "{e:#?}");
    assert!(e[1].starts_with("keys.yaml:17:"), "{e:#?}");
    assert!(e[2].starts_with("keys.yaml:27:"), "{e:#?}");
}

#[test]
fn a_changed_token_limit_changes_the_keys_limits() {
    let reg = ScopeRegistry::builtin();
    let file = Path::new("keys.yaml");
    let first = parse_keys_str(&full(), file, &reg).expect("valid");
    let text = with("value: 200000 }", "value: 300000 }");
    let second = parse_keys_str(&text, file, &reg).expect("valid");
    let changed = |s: &Snapshot| s.key_by_id("key_bot").map(|(_, k)| k.limits().clone());
    assert_ne!(changed(&first), changed(&second));
}

#[test]
fn cached_input_and_cache_write_prices_default_to_input() {
    let text = with(
        "{ input: 2.50, output: 10.00 }",
        "{ input: 2.50, output: 10.00, cached_input: 1.25, cache_write: 3.125 }",
    );
    let s = load(&text).expect("valid");
    let prices: Vec<Price> = s.model_prices().iter().map(|(_, p)| *p).collect();
    assert_eq!(prices[0], Price::flat(0.15, 0.60), "defaults: input");
    assert_eq!(
        prices[1],
        Price {
            input: 2.50,
            output: 10.00,
            cached_input: 1.25,
            cache_write: 3.125,
        }
    );
    // The serde reader (a shape the fast reader leaves to it) agrees.
    let slow = with(
        "{ input: 2.50, output: 10.00 }",
        "\n    input: 2.50\n    output: 10.00\n    cached_input: 1.25\n    cache_write: 3.125\n  ",
    );
    let s = load(&slow).expect("valid");
    assert_eq!(s.model_prices()[1].1.cache_write, 3.125);
}

#[test]
fn a_negative_cached_price_is_refused() {
    let text = with(
        "{ input: 2.50, output: 10.00 }",
        "{ input: 2.50, output: 10.00, cached_input: -1 }",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("model_prices[1].cached_input: price `cached_input` must be a finite"),
        "{errs:?}"
    );
}
