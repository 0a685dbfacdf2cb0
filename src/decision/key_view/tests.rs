//! The view's fields, built from a snapshot and readings.

use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::identity::keys::{build_snapshot, digest_hex, KeysDocument};
use crate::limits::view::UsageReading;

const NOW: UnixMillis = 1_796_083_200_000 + 5 * 86_400_000; // 2026-12-06

fn world() -> (RouteTable, Snapshot) {
    let yaml = format!(
        r#"
organisations:
  - id: org_acme
    workspaces:
      - id: ws_research
        models: ["gpt-4o*", "text-embedding-3-small"]
        rate_limits: [{{ type: tokens, unit: rpm, value: 2000000 }}]
        usage_limits: {{ type: cost, credit_limit: 500, periodic_reset: monthly }}
keys:
  - id: key_bot
    name: Research bot
    type: workspace-service
    workspace_id: ws_research
    secrets:
      - sha256: "{bot}"
        expires_at: "2026-12-20T00:00:00Z"
    expires_at: "2027-06-01T00:00:00Z"
    scopes: [completions.write, logs.view]
    models: ["gpt-4o-mini"]
    max_concurrent_requests: 8
    rate_limits:
      - {{ type: requests, unit: rpm, value: 600 }}
      - {{ type: tokens, unit: rpm, value: 200000 }}
    usage_limits: {{ type: tokens, credit_limit: 10000000, periodic_reset: monthly }}
  - id: key_admin
    type: organisation-service
    sha256: "{admin}"
    scopes: [workspaces.read]
model_prices:
  "gpt-4o*": {{ input: 2.5, output: 10 }}
"#,
        bot = digest_hex(b"bot"),
        admin = digest_hex(b"admin"),
    );
    let table = RouteTable::build(&[], true).expect("routes");
    let doc: KeysDocument = serde_yaml::from_str(&yaml).expect("yaml");
    let snap = build_snapshot(&doc, table.registry()).expect("valid");
    (table, snap)
}

fn rate(remaining: u64, ms: u64) -> RateReading {
    RateReading {
        remaining,
        reset: Duration::from_millis(ms),
    }
}

#[test]
fn every_field_of_the_reference_example() {
    let (table, snap) = world();
    let (k, _) = snap.key_by_id("key_bot").expect("key");
    let readings = [
        (
            Scope::Key,
            Reading {
                requests: vec![rate(597, 300)],
                tokens: vec![rate(191_708, 2490)],
                usage: Some(UsageReading {
                    used: 1_234_567.0,
                    reserved: 4196.0,
                }),
                in_flight: 1,
            },
        ),
        (
            Scope::Workspace,
            Reading {
                requests: vec![],
                tokens: vec![rate(1_987_000, 390)],
                usage: Some(UsageReading {
                    used: 12.0314,
                    reserved: 0.000476,
                }),
                in_flight: 0,
            },
        ),
    ];
    let secret_end = 1_797_724_800_000; // 2026-12-20
    let body = render(&table, &snap, k, Some(secret_end), &readings, NOW);
    let v: Value = serde_json::from_str(&body).expect("json");
    // The reference's field order, for people reading it with curl.
    assert!(
        body.starts_with(r#"{"key":{"id":"key_bot","name":"Research bot","type":"workspace-service","organisation_id":"org_acme""#),
        "{body}"
    );
    assert!(
        body.contains(r#"{"scope":"key","type":"usage","kind":"tokens","limit":10000000,"used":1234567,"reserved":4196,"remaining":8761237,"period":"2026-12","resets_at":"2027-01-01T00:00:00Z"}"#),
        "{body}"
    );
    assert_eq!(v["key"]["id"], "key_bot");
    assert_eq!(v["key"]["name"], "Research bot");
    assert_eq!(v["key"]["type"], "workspace-service");
    assert_eq!(v["key"]["organisation_id"], "org_acme");
    assert_eq!(v["key"]["workspace_id"], "ws_research");
    assert_eq!(v["key"]["user_id"], Value::Null);
    assert_eq!(
        v["key"]["scopes"],
        serde_json::json!(["completions.write", "logs.view"])
    );
    assert_eq!(
        v["key"]["expires_at"], "2026-12-20T00:00:00Z",
        "the secret's, earlier"
    );
    assert_eq!(v["models"]["key"], serde_json::json!(["gpt-4o-mini"]));
    assert_eq!(
        v["models"]["workspace"],
        serde_json::json!(["gpt-4o*", "text-embedding-3-small"])
    );
    let limits = v["limits"].as_array().expect("limits");
    assert_eq!(
        limits[0],
        serde_json::json!({"scope": "key", "type": "requests", "unit": "rpm", "limit": 600,
            "remaining": 597, "reset_seconds": 0.3})
    );
    assert_eq!(
        limits[1],
        serde_json::json!({"scope": "key", "type": "tokens", "unit": "rpm", "limit": 200000,
            "remaining": 191708, "reset_seconds": 2.49})
    );
    assert_eq!(
        limits[2],
        serde_json::json!({"scope": "key", "type": "usage", "kind": "tokens", "limit": 10000000,
            "used": 1234567, "reserved": 4196, "remaining": 8761237, "period": "2026-12",
            "resets_at": "2027-01-01T00:00:00Z"})
    );
    assert_eq!(
        limits[3],
        serde_json::json!({"scope": "key", "type": "concurrency", "limit": 8, "in_flight": 1})
    );
    assert_eq!(limits[4]["scope"], "workspace");
    assert_eq!(limits[4]["type"], "tokens");
    assert_eq!(limits[5]["kind"], "cost");
    assert_eq!(limits[5]["limit"], 500);
    let remaining = limits[5]["remaining"].as_f64().expect("number");
    assert!((remaining - 487.968124).abs() < 1e-9, "{remaining}");
    assert_eq!(limits.len(), 6);
}

#[test]
fn a_key_without_limits_or_workspace_has_nulls_and_no_limits() {
    let (table, snap) = world();
    let (k, _) = snap.key_by_id("key_admin").expect("key");
    let v: Value = serde_json::from_str(&render(&table, &snap, k, None, &[], NOW)).expect("json");
    assert_eq!(v["key"]["workspace_id"], Value::Null);
    assert_eq!(v["key"]["expires_at"], Value::Null);
    assert_eq!(
        v["models"],
        serde_json::json!({"key": null, "workspace": null})
    );
    assert_eq!(v["limits"], serde_json::json!([]));
}

#[test]
fn an_overspent_budget_has_nothing_remaining() {
    let (table, snap) = world();
    let (k, _) = snap.key_by_id("key_bot").expect("key");
    let readings = [(
        Scope::Key,
        Reading {
            usage: Some(UsageReading {
                used: 10_000_500.0,
                reserved: 0.0,
            }),
            ..Reading::default()
        },
    )];
    let v: Value =
        serde_json::from_str(&render(&table, &snap, k, None, &readings, NOW)).expect("json");
    let usage = v["limits"]
        .as_array()
        .and_then(|l| l.iter().find(|i| i["type"] == "usage"))
        .expect("usage");
    assert_eq!(usage["remaining"], 0);
    // A reading missing for a limit (never admitted) reads as whole.
    assert_eq!(
        v["limits"][0]["remaining"], 0,
        "no reading: nothing reported"
    );
}
