//! `scopegate usage` (the reference on what clients and operators see of usage): current usage against limits, for every key
//! and workspace with `usage_limits`, read from the same store the proxy
//! writes (the SQLite file, or Redis) while the proxy runs.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;

use crate::config::Config;
use crate::identity::keys::Snapshot;
use crate::limits::period::{period_of, Period};
use crate::limits::Scope;
use crate::limits::UsageLimit;
use crate::state::{SubjectId, SubjectLimits, UsageNow, UsageRow};

/// One line of the report.
struct Line {
    subject: SubjectId,
    limit: UsageLimit,
    period: Period,
    usage: UsageNow,
}

/// A subject to report: whose, its limit, its current period and, for a
/// workspace key, its workspace.
type Subject = (SubjectId, UsageLimit, Period, Option<Arc<str>>);

/// The subjects with usage limits, filtered by `--key` / `--workspace`.
fn subjects(
    snap: &Snapshot,
    key: Option<&str>,
    workspace: Option<&str>,
    now_ms: i64,
) -> Vec<(SubjectId, UsageLimit, Period, Option<Arc<str>>)> {
    let mut out = Vec::new();
    let want_ws = workspace.map(|w| {
        snap.workspace_by_name(w)
            .map_or_else(|| Arc::from(w), |i| snap.workspace(i).id.clone())
    });
    if workspace.is_none() {
        for k in snap.keys() {
            if key.is_some_and(|id| id != &*k.id) {
                continue;
            }
            if let Some(u) = k.limits.usage {
                let ws = k.workspace.map(|w| snap.workspace(w).id.clone());
                out.push((
                    SubjectId::key(k.id.clone()),
                    u,
                    period_of(u.reset, now_ms),
                    ws,
                ));
            }
        }
    }
    if key.is_none() {
        for w in snap.workspaces() {
            if want_ws.as_ref().is_some_and(|id| id != &w.id) {
                continue;
            }
            if let Some(u) = w.limits.usage {
                out.push((
                    SubjectId::workspace(w.id.clone()),
                    u,
                    period_of(u.reset, now_ms),
                    Some(w.id.clone()),
                ));
            }
        }
    }
    out
}

/// The subjects of identity tokens to report: `token:<subject>` of every
/// organisation whose tokens have a usage limit (with `--key
/// token:<subject>`), or, with no filter, every subject with usage in the
/// current period, as the store knows them.
fn token_subjects(
    config: &Config,
    snap: &Snapshot,
    key: Option<&str>,
    workspace: Option<&str>,
    now_ms: i64,
) -> Result<Vec<Subject>, String> {
    let limited: Vec<(Arc<str>, UsageLimit)> = snap
        .identity()
        .all()
        .filter_map(|s| {
            let u = s.limits.usage?;
            Some((snap.organisation(s.organisation).id.clone(), u))
        })
        .collect();
    let entry = |org: &str, sub: &str, u: &UsageLimit| {
        (
            SubjectId {
                scope: Scope::Token,
                id: Arc::from(format!("{org}/{sub}")),
            },
            *u,
            period_of(u.reset, now_ms),
            None,
        )
    };
    if let Some(sub) = key.and_then(|k| k.strip_prefix("token:")) {
        return Ok(limited.iter().map(|(o, u)| entry(o, sub, u)).collect());
    }
    if key.is_some() || workspace.is_some() || limited.is_empty() {
        return Ok(Vec::new());
    }
    let known: Vec<(Arc<str>, Arc<str>)> = match &config.state.redis {
        None => crate::state::local::read_usage_report(&config.state.path)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|r| r.subject.scope == Scope::Token)
            .map(|r| (r.subject.id, r.usage.period_key))
            .collect(),
        Some(_) => {
            let cfg = redis_config(config).ok_or("no redis")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(crate::state::redis::token_subjects(&cfg))
                .map_err(|e| e.to_string())?
        }
    };
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (id, period) in known {
        let Some((org, sub)) = id.split_once('/') else {
            continue;
        };
        let Some((_, u)) = limited.iter().find(|(o, _)| &**o == org) else {
            continue;
        };
        let e = entry(org, sub, u);
        if *e.2.key == *period && seen.insert(id.clone()) {
            out.push(e);
        }
    }
    out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    Ok(out)
}

/// The Redis store of the server config, for reading.
fn redis_config(config: &Config) -> Option<crate::state::RedisConfig> {
    let r = config.state.redis.as_ref()?;
    let mut cfg = crate::state::RedisConfig::new(r.url.clone());
    cfg.timeout = std::time::Duration::from_millis(r.timeout_ms.max(1000));
    cfg.key_prefix = r.key_prefix.clone();
    Some(cfg)
}

/// How a subject is named in the report: a token's as `token:<subject>`.
fn shown_id(subject: &SubjectId) -> String {
    match (subject.scope, subject.id.split_once('/')) {
        (Scope::Token, Some((_, sub))) => format!("token:{sub}"),
        _ => subject.id.to_string(),
    }
}

/// A token subject's organisation.
fn organisation_of(subject: &SubjectId) -> Option<&str> {
    match subject.scope {
        Scope::Token => subject.id.split_once('/').map(|(o, _)| o),
        _ => None,
    }
}

fn read_rows(
    config: &Config,
    subjects: &[(SubjectId, UsageLimit, Period, Option<Arc<str>>)],
) -> Result<Vec<UsageRow>, String> {
    match &config.state.redis {
        None => {
            let path = &config.state.path;
            // A missing file is no usage to report: most often the config
            // read is not the one the proxy runs with, and zeros would
            // pass for "nothing spent".
            if !path.exists() {
                return Err(format!(
                    "state file {} does not exist: no proxy has counted usage with this config \
                     (is it the config the proxy runs with? `state.path` names the file)",
                    path.display()
                ));
            }
            crate::state::local::read_usage_report(path).map_err(|e| e.to_string())
        }
        Some(r) => {
            let mut cfg = crate::state::RedisConfig::new(r.url.clone());
            cfg.timeout = std::time::Duration::from_millis(r.timeout_ms.max(1000));
            cfg.key_prefix = r.key_prefix.clone();
            let limits: Vec<SubjectLimits> = subjects
                .iter()
                .map(|(s, u, p, ws)| {
                    let mut l = SubjectLimits::new(s.clone());
                    l.workspace = if s.scope == Scope::Key {
                        ws.clone()
                    } else {
                        None
                    };
                    l.usage = Some(*u);
                    l.period_key = p.key.clone();
                    l.period_end_ms = p.end_ms;
                    l
                })
                .collect();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(crate::state::redis::read_usage_report(&cfg, &limits))
                .map_err(|e| e.to_string())
        }
    }
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Why `--key` or `--workspace` names nothing, if it does not.
fn unknown_filter(snap: &Snapshot, key: Option<&str>, workspace: Option<&str>) -> Option<String> {
    if let Some(k) = key {
        let token = k.starts_with("token:") && snap.identity().any();
        if snap.key_by_id(k).is_none() && !token {
            return Some(format!("no key with id `{k}`"));
        }
    }
    match workspace {
        Some(w) if snap.workspace_by_name(w).is_none() => Some(format!("no workspace `{w}`")),
        _ => None,
    }
}

/// Runs `scopegate usage`.
pub fn run(
    config: &Config,
    snap: &Snapshot,
    key: Option<&str>,
    workspace: Option<&str>,
    as_json: bool,
) -> ExitCode {
    let now = crate::identity::keys::now_millis();
    if let Some(problem) = unknown_filter(snap, key, workspace) {
        eprintln!("scopegate usage: {problem}");
        return ExitCode::FAILURE;
    }
    let mut subjects = subjects(snap, key, workspace, now);
    match token_subjects(config, snap, key, workspace, now) {
        Ok(t) => subjects.extend(t),
        Err(e) => {
            eprintln!("scopegate usage: {e}");
            return ExitCode::FAILURE;
        }
    }
    let rows = match read_rows(config, &subjects) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scopegate usage: {e}");
            return ExitCode::FAILURE;
        }
    };
    let by: HashMap<(SubjectId, Arc<str>), UsageNow> = rows
        .into_iter()
        .map(|r| ((r.subject, r.usage.period_key.clone()), r.usage))
        .collect();
    let lines: Vec<Line> = subjects
        .into_iter()
        .map(|(subject, limit, period, _)| {
            let usage = by
                .get(&(subject.clone(), period.key.clone()))
                .cloned()
                .unwrap_or_default();
            Line {
                subject,
                limit,
                period,
                usage,
            }
        })
        .collect();
    if as_json {
        let items: Vec<_> = lines
            .iter()
            .map(|l| {
                json!({
                    "scope": l.subject.scope.as_str(),
                    "id": shown_id(&l.subject),
                    "organisation": organisation_of(&l.subject),
                    "type": l.limit.kind.as_str(),
                    "used": l.usage.used(l.limit.kind),
                    "used_tokens": l.usage.tokens_in + l.usage.tokens_out,
                    "input_tokens": l.usage.tokens_in,
                    "cached_input_tokens": l.usage.cached_input,
                    "cache_write_tokens": l.usage.cache_write,
                    "output_tokens": l.usage.tokens_out,
                    "estimated_tokens": l.usage.estimated_tokens,
                    "cost_usd": l.usage.cost,
                    "credit_limit": l.limit.credit_limit,
                    "alert_threshold": l.limit.alert_threshold,
                    "reserved_tokens": l.usage.reserved_tokens,
                    "reserved_cost_usd": l.usage.reserved_cost,
                    "period": &*l.period.key,
                    "periodic_reset": l.limit.reset.map(|r| r.as_str()),
                    "resets_at": l.period.end_ms.map(rfc3339),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
        return ExitCode::SUCCESS;
    }
    if lines.is_empty() {
        println!("no key or workspace with usage_limits");
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<10} {:<24} {:<7} {:>14} {:>14} {:>12} {:>10} {:>10} {:>12} {:<10} resets",
        "scope", "id", "type", "used", "limit", "tokens", "cached", "written", "cost_usd", "period"
    );
    for l in &lines {
        let resets = l.period.end_ms.map_or_else(|| "never".to_string(), rfc3339);
        println!(
            "{:<10} {:<24} {:<7} {:>14} {:>14} {:>12} {:>10} {:>10} {:>12.6} {:<10} {} (reserved now: {} tokens, ${:.6})",
            l.subject.scope.as_str(),
            shown_id(&l.subject),
            l.limit.kind.as_str(),
            format_amount(l.usage.used(l.limit.kind)),
            format_amount(l.limit.credit_limit),
            l.usage.tokens_in + l.usage.tokens_out,
            l.usage.cached_input,
            l.usage.cache_write,
            l.usage.cost,
            l.period.key,
            resets,
            l.usage.reserved_tokens,
            l.usage.reserved_cost,
        );
    }
    ExitCode::SUCCESS
}

fn format_amount(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.6}")
    }
}

/// Usage of the current period per subject with a usage limit, read from
/// the store the proxy writes (for `explain`'s budget step). A store that
/// cannot be read counts as nothing used (with a warning on stderr).
pub fn current_usage(config: &Config, snap: &Snapshot) -> HashMap<(Scope, Arc<str>), UsageNow> {
    let now = crate::identity::keys::now_millis();
    let subjects = subjects(snap, None, None, now);
    if config.state.redis.is_none() && !config.state.path.exists() {
        // Nothing counted yet with this config: nothing used.
        return HashMap::new();
    }
    let rows = match read_rows(config, &subjects) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scopegate explain: usage not read ({e}); budgets count as unused");
            Vec::new()
        }
    };
    let periods: HashMap<SubjectId, String> = subjects
        .into_iter()
        .map(|(s, _, p, _)| (s, p.key.to_string()))
        .collect();
    rows.into_iter()
        .filter(|r| {
            periods
                .get(&r.subject)
                .is_some_and(|p| **p == *r.usage.period_key)
        })
        .map(|r| ((r.subject.scope, r.subject.id.clone()), r.usage))
        .collect()
}
