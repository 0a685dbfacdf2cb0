//! A key's own view (docs/reference.md#a-keys-own-view): the answer to
//! `GET /v1/scopegate/key`, built from the keys snapshot and the state of
//! the key's limits as the counter store read it. Pure: the readings come
//! in, a JSON body goes out; the proxy answers it itself.

use serde::Serialize;
use serde_json::Value;

use crate::decision::routes::RouteTable;
use crate::identity::keys::{KeyIdx, OrgIdx, Snapshot, UnixMillis, WsIdx};
use crate::identity::scopes::ScopeSet;
use crate::identity::token::VerifiedIdentity;
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
        Value::from(v as i64)
    } else {
        Value::from(v)
    }
}

/// Seconds, to the millisecond.
fn seconds(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

// The answer's shape, field by field in the reference's order (a struct
// keeps its fields' order; a JSON map would sort them).

#[derive(Serialize)]
struct View<'a> {
    key: KeyPart<'a>,
    models: Models<'a>,
    limits: Vec<Item>,
}

#[derive(Serialize)]
struct KeyPart<'a> {
    id: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    organisation_id: &'a str,
    workspace_id: Option<&'a str>,
    user_id: Option<&'a str>,
    scopes: Vec<&'a str>,
    expires_at: Option<String>,
}

#[derive(Serialize)]
struct Models<'a> {
    key: Option<Vec<&'a str>>,
    workspace: Option<Vec<&'a str>>,
}

/// One `limits` item.
#[derive(Serialize)]
#[serde(untagged)]
enum Item {
    Rate {
        scope: &'static str,
        #[serde(rename = "type")]
        type_: &'static str,
        unit: Option<&'static str>,
        limit: u64,
        remaining: u64,
        reset_seconds: f64,
    },
    Usage {
        scope: &'static str,
        #[serde(rename = "type")]
        type_: &'static str,
        kind: &'static str,
        limit: Value,
        used: Value,
        reserved: Value,
        remaining: Value,
        period: String,
        resets_at: Option<String>,
    },
    Concurrency {
        scope: &'static str,
        #[serde(rename = "type")]
        type_: &'static str,
        limit: u32,
        in_flight: u32,
    },
}

fn rate_item(
    scope: Scope,
    kind: &'static str,
    value: u64,
    period: std::time::Duration,
    r: RateReading,
) -> Item {
    Item::Rate {
        scope: scope.as_str(),
        type_: kind,
        unit: unit_of(period),
        limit: value,
        remaining: r.remaining,
        reset_seconds: seconds(r.reset),
    }
}

/// The `limits` items of one subject.
fn limit_items(
    scope: Scope,
    requests: &[RateLimit],
    limits: &Limits,
    reading: &Reading,
    now_ms: UnixMillis,
    out: &mut Vec<Item>,
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
        out.push(Item::Usage {
            scope: scope.as_str(),
            type_: "usage",
            kind: u.kind.as_str(),
            limit: number(u.credit_limit),
            used: number(r.used),
            reserved: number(r.reserved),
            remaining: number((u.credit_limit - r.used - r.reserved).max(0.0)),
            period: p.key.to_string(),
            resets_at: p.end_ms.and_then(rfc3339),
        });
    }
    if let Some(max) = limits.max_concurrent {
        out.push(Item::Concurrency {
            scope: scope.as_str(),
            type_: "concurrency",
            limit: max,
            in_flight: reading.in_flight,
        });
    }
}

/// Whose view it is: a key, or a verified identity token acting as one.
struct Owner<'a> {
    id: &'a str,
    name: &'a str,
    kind: &'a str,
    organisation: OrgIdx,
    workspace: Option<WsIdx>,
    user_id: Option<&'a str>,
    scopes: &'a ScopeSet,
    expires_at: Option<UnixMillis>,
    rate_limits: &'a [RateLimit],
    limits: &'a Limits,
    /// The scope of its own counters in the readings.
    counters: Scope,
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
    let expires_at = match (k.expires_at, secret_expires) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let owner = Owner {
        id: &k.id,
        name: &k.name,
        kind: k.key_type.as_str(),
        organisation: k.organisation,
        workspace: k.workspace,
        user_id: k.user_id.as_deref(),
        scopes: &k.scopes,
        expires_at,
        rate_limits: &k.rate_limits,
        limits: &k.limits,
        counters: Scope::Key,
    };
    render_owner(table, snap, &owner, readings, now_ms)
}

/// The view of a verified identity token: it acts as a workspace key of its
/// organisation's `key_type`, named `token:<subject>`; its own limits (shown
/// with `scope: key`) are its subject's counters, and its `expires_at` is the
/// token's `exp`.
pub fn render_token(
    table: &RouteTable,
    snap: &Snapshot,
    id: &VerifiedIdentity,
    readings: &[(Scope, Reading)],
    now_ms: UnixMillis,
) -> String {
    let owner = Owner {
        id: &id.key_id,
        name: &id.subject,
        kind: id.key_type.as_str(),
        organisation: id.organisation,
        workspace: Some(id.workspace),
        user_id: id.user_id.as_deref(),
        scopes: &id.scopes,
        expires_at: Some(id.expires_at),
        rate_limits: id.rate_limits(),
        limits: id.limits(),
        counters: Scope::Token,
    };
    render_owner(table, snap, &owner, readings, now_ms)
}

fn render_owner(
    table: &RouteTable,
    snap: &Snapshot,
    owner: &Owner<'_>,
    readings: &[(Scope, Reading)],
    now_ms: UnixMillis,
) -> String {
    fn list(l: &Limits) -> Option<Vec<&str>> {
        l.models.as_ref().map(|m| m.iter().map(|p| &**p).collect())
    }
    let ws = owner.workspace.map(|w| snap.workspace(w));
    let empty = Reading::default();
    let reading = |scope: Scope| {
        readings
            .iter()
            .find(|(s, _)| *s == scope)
            .map_or(&empty, |(_, r)| r)
    };
    let mut limits = Vec::new();
    // Its own limits show as the key's, whoever counts them.
    limit_items(
        Scope::Key,
        owner.rate_limits,
        owner.limits,
        reading(owner.counters),
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
    let view = View {
        key: KeyPart {
            id: owner.id,
            name: owner.name,
            kind: owner.kind,
            organisation_id: &snap.organisation(owner.organisation).id,
            workspace_id: ws.map(|w| &*w.id),
            user_id: owner.user_id,
            scopes: table.registry().names_of(owner.scopes),
            expires_at: owner.expires_at.and_then(rfc3339),
        },
        models: Models {
            key: list(owner.limits),
            workspace: ws.and_then(|w| list(&w.limits)),
        },
        limits,
    };
    // Serializing plain strings, numbers and options cannot fail.
    serde_json::to_string(&view).unwrap_or_default()
}

#[cfg(test)]
mod tests;
