//! A key's own view (docs/reference.md#a-keys-own-view): the answer to
//! `GET /v1/scopegate/key`, built from the keys snapshot and the state of
//! the key's limits as the counter store read it. Pure: the readings come
//! in, a JSON body goes out; the proxy answers it itself.

use serde_json::{json, Value};

use crate::decision::routes::RouteTable;
use crate::identity::keys::{KeyIdx, Snapshot, UnixMillis};
use crate::limits::rate::RateLimit;
use crate::limits::view::{unit_of, RateReading, Reading};
use crate::limits::{period, Limits, Scope};

/// The path the proxy answers itself, for any valid key, never forwarded.
pub const PATH: &str = "/v1/scopegate/key";

/// RFC 3339 (UTC, seconds) of a Unix time in milliseconds.
pub fn rfc3339(ms: UnixMillis) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// A JSON number: an integer when the value is a whole number (token
/// counts, token budgets), else as it is (dollars).
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// Seconds, to the millisecond.
fn seconds(d: std::time::Duration) -> Value {
    json!((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

fn rate_item(
    scope: Scope,
    kind: &str,
    value: u64,
    period: std::time::Duration,
    r: RateReading,
) -> Value {
    json!({
        "scope": scope.as_str(),
        "type": kind,
        "unit": unit_of(period),
        "limit": value,
        "remaining": r.remaining,
        "reset_seconds": seconds(r.reset),
    })
}

/// The `limits` items of one subject.
fn limit_items(
    scope: Scope,
    requests: &[RateLimit],
    limits: &Limits,
    reading: &Reading,
    now_ms: UnixMillis,
    out: &mut Vec<Value>,
) {
    for (l, r) in requests.iter().zip(&reading.requests) {
        out.push(rate_item(
            scope,
            "requests",
            u64::from(l.value),
            l.period,
            *r,
        ));
    }
    for (l, r) in limits.token_rates.iter().zip(&reading.tokens) {
        out.push(rate_item(scope, "tokens", l.value, l.period, *r));
    }
    if let (Some(u), Some(r)) = (limits.usage, reading.usage) {
        let p = period::period_of(u.reset, now_ms);
        out.push(json!({
            "scope": scope.as_str(),
            "type": "usage",
            "kind": u.kind.as_str(),
            "limit": number(u.credit_limit),
            "used": number(r.used),
            "reserved": number(r.reserved),
            "remaining": number((u.credit_limit - r.used - r.reserved).max(0.0)),
            "period": p.key,
            "resets_at": p.end_ms.and_then(rfc3339),
        }));
    }
    if let Some(max) = limits.max_concurrent {
        out.push(json!({
            "scope": scope.as_str(),
            "type": "concurrency",
            "limit": max,
            "in_flight": reading.in_flight,
        }));
    }
}

/// The view of `key`, whose presented secret expires at `secret_expires`,
/// with the readings of the key's and its workspace's limits (a subject
/// without any limit has none: its limits list is empty anyway).
pub fn render(
    table: &RouteTable,
    snap: &Snapshot,
    key: KeyIdx,
    secret_expires: Option<UnixMillis>,
    readings: &[(Scope, Reading)],
    now_ms: UnixMillis,
) -> String {
    let k = snap.key(key);
    let ws = k.workspace.map(|w| snap.workspace(w));
    let expires = match (k.expires_at, secret_expires) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    fn list(l: &Limits) -> Option<Vec<&str>> {
        l.models.as_ref().map(|m| m.iter().map(|p| &**p).collect())
    }
    let mut limits = Vec::new();
    let empty = Reading::default();
    let reading = |scope: Scope| {
        readings
            .iter()
            .find(|(s, _)| *s == scope)
            .map_or(&empty, |(_, r)| r)
    };
    limit_items(
        Scope::Key,
        &k.rate_limits,
        &k.limits,
        reading(Scope::Key),
        now_ms,
        &mut limits,
    );
    if let Some(w) = ws {
        limit_items(
            Scope::Workspace,
            &w.rate_limits,
            &w.limits,
            reading(Scope::Workspace),
            now_ms,
            &mut limits,
        );
    }
    json!({
        "key": {
            "id": &*k.id,
            "name": &*k.name,
            "type": k.key_type.as_str(),
            "organisation_id": &*snap.organisation(k.organisation).id,
            "workspace_id": ws.map(|w| &*w.id),
            "user_id": k.user_id.as_deref(),
            "scopes": table.registry().names_of(&k.scopes),
            "expires_at": expires.and_then(rfc3339),
        },
        "models": {
            "key": list(&k.limits),
            "workspace": ws.and_then(|w| list(&w.limits)),
        },
        "limits": limits,
    })
    .to_string()
}

#[cfg(test)]
mod tests;
