//! `scopegate explain`: the decision for a key id and a request, without a
//! secret and without sending anything, with the headers the upstream
//! would receive.

use std::process::ExitCode;

use super::{load_all, print_problems, usage_cmd, ExplainArgs};
use crate::config::Config;
use crate::decision::decide::{decide_as, Body, Outcome, RequestFacts, Verdict};
use crate::decision::request::{Presented, Upgrade};
use crate::decision::routes::{Plane, RouteTable};
use std::sync::Arc;

use crate::identity::keys::{self, KeyIdx, Snapshot};
use crate::limits::rate::RateLimit;
use crate::limits::{Scope, UsageLimit};

/// Runs the command.
pub(super) fn run(args: &ExplainArgs) -> ExitCode {
    let (config, table, snap) = match load_all(&args.config.path()) {
        Ok(x) => x,
        Err(problems) => {
            print_problems(&problems);
            return ExitCode::FAILURE;
        }
    };
    let request = match Request::read(args) {
        Ok(r) => r,
        Err(message) => {
            eprintln!("scopegate explain: {message}");
            return ExitCode::FAILURE;
        }
    };
    if args.token {
        return explain_token(&config, &table, &snap, &request, args);
    }
    let key_id = args.key_id.as_deref().unwrap_or_default();
    let Some((key_idx, key)) = snap.key_by_id(key_id) else {
        eprintln!(
            "scopegate explain: no key with id `{key_id}` in {}",
            config.keys_file.display()
        );
        return ExitCode::FAILURE;
    };
    let verdict = decide(&config, &table, &snap, Who::Key(key_idx), &request, args);
    let who = format!("{} ({}, {})", key.id, key.key_type, key.status.as_str());
    print(&config, &table, &snap, &who, &key.rate_limits, &verdict);
    ExitCode::SUCCESS
}

/// `explain --token`: the token read from stdin is verified against the
/// JWK sets (files, and URLs fetched once), then its request decided as
/// the proxy would (docs/reference.md#identity-tokens).
fn explain_token(
    config: &Config,
    table: &RouteTable,
    snap: &Snapshot,
    request: &Request,
    args: &ExplainArgs,
) -> ExitCode {
    let token = match super::read_token() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("scopegate explain: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !snap.identity().any() || !crate::identity::token::is_token(&token) {
        eprintln!(
            "scopegate explain: stdin holds no identity token, or no organisation of {} accepts tokens",
            config.keys_file.display()
        );
        return ExitCode::FAILURE;
    }
    let Some(sets) = super::token_sets(config, snap, "explain") else {
        return ExitCode::FAILURE;
    };
    let outcome =
        crate::identity::token::verify(&token, keys::now_millis(), snap, &sets).map(Arc::new);
    let verdict = decide(config, table, snap, Who::Token(&outcome), request, args);
    let (who, rates) = match &outcome {
        Ok(id) => (
            format!("{} ({}, identity token)", id.key_id(), id.key_type),
            id.rate_limits(),
        ),
        Err(_) => ("identity token (refused)".to_string(), &[][..]),
    };
    print(config, table, snap, &who, rates, &verdict);
    ExitCode::SUCCESS
}

/// Who the request is explained for.
enum Who<'a> {
    Key(KeyIdx),
    Token(&'a crate::identity::token::TokenOutcome),
}

/// The request to explain, as the arguments give it.
struct Request {
    method: http::Method,
    body: Option<Vec<u8>>,
}

impl Request {
    fn read(args: &ExplainArgs) -> Result<Request, String> {
        let body = match &args.body {
            Some(p) => Some(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?),
            None => None,
        };
        let method = http::Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("`{}` is not an HTTP method", args.method))?;
        Ok(Request { method, body })
    }
}

/// The decision as if the key had presented a valid secret, with the
/// usage the running proxy has counted.
fn decide(
    config: &Config,
    table: &RouteTable,
    snap: &Snapshot,
    who: Who<'_>,
    request: &Request,
    args: &ExplainArgs,
) -> Verdict {
    let (path, query) = match args.path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (args.path_and_query.as_str(), None),
    };
    let data_plane = table.match_path(path).is_some_and(|m| !m.entry.control);
    let body_cap = if data_plane {
        config.max_data_body_bytes
    } else {
        config.max_inspect_body_bytes
    };
    let body = match &request.body {
        None => Body::Empty,
        Some(b) if b.len() > body_cap => Body::TooLarge,
        Some(b) => Body::Read(b),
    };
    // Budgets: the usage the running proxy has counted.
    let usage = usage_cmd::current_usage(config, snap);
    let used_up = |scope: Scope, id: &str, limit: &UsageLimit| {
        usage
            .get(&(scope, std::sync::Arc::from(id)))
            .is_some_and(|u| u.exhausted(limit))
    };
    let facts = RequestFacts {
        method: &request.method,
        path,
        query,
        key: match who {
            Who::Key(_) => Presented::Missing,
            Who::Token(t) => Presented::Token(t),
        },
        content_type: request.body.as_ref().map(|_| args.content_type.as_bytes()),
        content_type_repeated: false,
        bad_content_length: false,
        upgrade: Upgrade::None,
        body,
        now: keys::now_millis(),
        max_body: config.max_inspect_body_bytes,
        max_data_body: config.max_data_body_bytes,
        used_up: &used_up,
    };
    match who {
        Who::Key(k) => decide_as(table, snap, &facts, k),
        Who::Token(_) => crate::decision::decide::decide(table, snap, &facts),
    }
}

/// Prints the key, the route and the decision: the refusal, or the
/// upstream and the headers it would receive.
fn print(
    config: &Config,
    table: &RouteTable,
    snap: &Snapshot,
    who: &str,
    rate_limits: &[RateLimit],
    verdict: &Verdict,
) {
    let route = verdict.route.map(|r| table.route(r));
    println!("key:       {who}");
    println!(
        "route:     {}",
        route.map_or_else(
            || "none".to_string(),
            |r| format!(
                "{} {} ({} plane, needs {})",
                r.method,
                r.pattern,
                r.plane.as_str(),
                r.needs
            )
        )
    );
    if let Outcome::Deny(d) = &verdict.outcome {
        println!("decision:  deny {} {}", d.code.status(), d.code.as_str());
        println!("message:   {}", d.message);
        if let Some(a) = &d.allow {
            println!("allow:     {a}");
        }
        return;
    }
    if let Outcome::KeyView { .. } = &verdict.outcome {
        println!("decision:  answered by the proxy: the key's own view (never forwarded, no limit counted)");
        return;
    }
    let upstream = match verdict.plane {
        Some(Plane::Control) => ("admin", &config.upstreams.admin.url),
        _ => ("completions", &config.upstreams.completions.url),
    };
    println!("decision:  allow");
    println!("upstream:  {} {}", upstream.0, upstream.1);
    for (name, value) in crate::decision::headers::identity_headers(snap, verdict) {
        println!("{name}: {value}");
    }
    if !rate_limits.is_empty() {
        let limits: Vec<String> = rate_limits
            .iter()
            .map(|l| format!("{}/{}s", l.value, l.period.as_secs()))
            .collect();
        println!(
            "rate limits (not consumed by explain): {}",
            limits.join(", ")
        );
    }
}
