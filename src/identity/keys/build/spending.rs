//! Validation of what the reference (models, tokens and budgets) lets a key or a workspace carry — model
//! allowlists, request and token rate limits, usage limits, concurrency —
//! and of the file's `model_prices`, into the plain [`Limits`] data of
//! `limits`.
//!
//! Every function here reports all its problems and formats a path only
//! when there is one: it runs once per key on reloads of files with 100k
//! keys.

use std::collections::HashMap;
use std::sync::Arc;

use super::{did_you_mean, nearest, shown, Problems};
use crate::identity::keys::model::{ModelPrices, RateLimitSpec, UsageLimitSpec, UsageLimitsSpec};
use crate::limits::rate::RateLimit;
use crate::limits::{Limits, Price, PriceTable, Reset, TokenRate, UsageKind, UsageLimit};

/// Longest model pattern.
pub(super) const MAX_MODEL_PATTERN_LEN: usize = 256;

/// Whose limits are being checked: the path of the key or workspace
/// (`keys[3]`, formatted only when needed) and what to call it in messages.
pub(super) struct Owner<'a> {
    /// The path of the key or workspace.
    pub(super) base: &'a dyn Fn() -> String,
    /// `key` or `workspace`.
    pub(super) noun: &'static str,
}

impl Owner<'_> {
    fn at(&self, rest: &str) -> String {
        format!("{}.{rest}", (self.base)())
    }
}

/// The limits of a key or workspace as written.
pub(super) struct Written<'a> {
    pub(super) models: Option<&'a [String]>,
    pub(super) rate_limits: &'a [RateLimitSpec],
    pub(super) usage_limits: Option<&'a UsageLimitsSpec>,
    pub(super) max_concurrent_requests: Option<u64>,
}

/// Checks the limits of one key or workspace. Returns its request rate
/// limits and everything else as [`Limits`].
pub(super) fn check_limits(
    written: &Written<'_>,
    has_prices: bool,
    owner: &Owner<'_>,
    problems: &mut Problems,
) -> (Vec<RateLimit>, Limits) {
    let models = written
        .models
        .map(|list| check_models(list, owner, problems));
    let (requests, token_rates) = check_rate_limits(written.rate_limits, owner, problems);
    let usage = written
        .usage_limits
        .and_then(|u| check_usage_limits(u, has_prices, owner, problems));
    let max_concurrent = written.max_concurrent_requests.and_then(|n| {
        let at = || owner.at("max_concurrent_requests");
        match u32::try_from(n) {
            Ok(0) => {
                problems.push(at(), "max_concurrent_requests must be at least 1");
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                problems.push(
                    at(),
                    format!("max_concurrent_requests must be at most {}", u32::MAX),
                );
                None
            }
        }
    });
    let limits = Limits {
        models,
        token_rates,
        usage,
        max_concurrent,
    };
    (requests, limits)
}

/// Whether a model pattern is well formed: 1 to 256 visible ASCII
/// characters (model names go into log lines and error messages).
pub(super) fn is_valid_model_pattern(p: &str) -> bool {
    !p.is_empty() && p.len() <= MAX_MODEL_PATTERN_LEN && p.bytes().all(|b| b.is_ascii_graphic())
}

/// Checks a model pattern; `None` when it is fine.
fn model_pattern_problem(p: &str) -> Option<String> {
    if p.is_empty() {
        Some("model pattern must not be empty".to_string())
    } else if !is_valid_model_pattern(p) {
        Some(format!(
            "model pattern `{}` must be 1 to {MAX_MODEL_PATTERN_LEN} visible ASCII characters \
             without spaces (`*` matches any run of characters)",
            shown(p)
        ))
    } else {
        None
    }
}

fn check_models(list: &[String], owner: &Owner<'_>, problems: &mut Problems) -> Arc<[Arc<str>]> {
    if list.is_empty() {
        problems.push(
            owner.at("models"),
            format!(
                "models is empty, which would refuse every model; omit it to allow any model, \
                 or list the patterns this {} may use",
                owner.noun
            ),
        );
    }
    for (j, p) in list.iter().enumerate() {
        if let Some(m) = model_pattern_problem(p) {
            problems.push(owner.at(&format!("models[{j}]")), m);
        }
    }
    list.iter().map(|p| Arc::from(p.as_str())).collect()
}

const UNITS: [&str; 4] = ["rps", "rpm", "rph", "rpd"];
const RATE_TYPES: [&str; 2] = ["requests", "tokens"];

/// Request limits and token rates. A unit may appear once per type.
fn check_rate_limits(
    specs: &[RateLimitSpec],
    owner: &Owner<'_>,
    problems: &mut Problems,
) -> (Vec<RateLimit>, Vec<TokenRate>) {
    let mut requests = Vec::with_capacity(specs.len());
    let mut tokens = Vec::new();
    // Index of the first limit of each (type, unit).
    let mut first_of_unit: [[Option<usize>; 4]; 2] = [[None; 4]; 2];
    for (j, spec) in specs.iter().enumerate() {
        let at = |field: &str| owner.at(&format!("rate_limits[{j}].{field}"));
        let kind = match spec.limit_type.as_str() {
            "requests" => Some(0),
            "tokens" => Some(1),
            other => {
                problems.push(
                    at("type"),
                    format!(
                        "unknown rate limit type `{}`{}; expected `requests` or `tokens`",
                        shown(other),
                        did_you_mean(nearest(other, RATE_TYPES.iter().copied()))
                    ),
                );
                None
            }
        };
        let period = RateLimit::period_of_unit(&spec.unit);
        let unit = UNITS.iter().position(|u| *u == spec.unit);
        let mut unique = true;
        match (period, unit) {
            (Some(_), Some(unit)) => {
                if let Some(kind) = kind {
                    if let Some(first) = first_of_unit[kind][unit] {
                        unique = false;
                        problems.push(
                            at("unit"),
                            format!(
                                "a second `{}` {} limit (also rate_limits[{first}]); each unit \
                                 may appear once per type and {}",
                                spec.unit, RATE_TYPES[kind], owner.noun
                            ),
                        );
                    } else {
                        first_of_unit[kind][unit] = Some(j);
                    }
                }
            }
            _ => problems.push(
                at("unit"),
                format!(
                    "unknown rate limit unit `{}`; expected `rps`, `rpm`, `rph` or `rpd`",
                    shown(&spec.unit)
                ),
            ),
        }
        let value_ok = match (kind, spec.value) {
            (_, 0) => {
                problems.push(at("value"), "rate limit value must be at least 1");
                false
            }
            (Some(0), v) if u32::try_from(v).is_err() => {
                problems.push(
                    at("value"),
                    format!("a requests rate limit value must be at most {}", u32::MAX),
                );
                false
            }
            _ => true,
        };
        match (kind, period, unique && value_ok) {
            (Some(0), Some(period), true) => requests.push(RateLimit {
                value: u32::try_from(spec.value).unwrap_or(u32::MAX),
                period,
            }),
            (Some(_), Some(period), true) => tokens.push(TokenRate {
                value: spec.value,
                period,
            }),
            _ => {}
        }
    }
    (requests, tokens)
}

const USAGE_TYPES: [&str; 2] = ["tokens", "cost"];
const RESETS: [&str; 3] = ["daily", "weekly", "monthly"];

/// Checks `usage_limits`; every entry of a list is checked, the first one
/// is used.
fn check_usage_limits(
    spec: &UsageLimitsSpec,
    has_prices: bool,
    owner: &Owner<'_>,
    problems: &mut Problems,
) -> Option<UsageLimit> {
    let mut out = None;
    for (n, (suffix, u)) in spec.entries().into_iter().enumerate() {
        let base = || owner.at(&format!("usage_limits{suffix}"));
        if n == 1 {
            problems.push(
                base(),
                format!(
                    "at most one usage_limits per {} (also usage_limits[0])",
                    owner.noun
                ),
            );
        }
        let checked = check_usage_limit(u, has_prices, &base, problems);
        if n == 0 {
            out = checked;
        }
    }
    out
}

fn check_usage_limit(
    u: &UsageLimitSpec,
    has_prices: bool,
    base: &dyn Fn() -> String,
    problems: &mut Problems,
) -> Option<UsageLimit> {
    let at = |field: &str| format!("{}.{field}", base());
    let kind = match u.limit_type.as_str() {
        "tokens" => Some(UsageKind::Tokens),
        "cost" => {
            if !has_prices {
                problems.push(
                    at("type"),
                    "a usage limit of type `cost` needs `model_prices`: the price of each model \
                     in US dollars per million tokens",
                );
            }
            Some(UsageKind::Cost)
        }
        other => {
            problems.push(
                at("type"),
                format!(
                    "unknown usage limit type `{}`{}; expected `tokens` or `cost`",
                    shown(other),
                    did_you_mean(nearest(other, USAGE_TYPES.iter().copied()))
                ),
            );
            None
        }
    };
    let credit_ok = u.credit_limit.is_finite() && u.credit_limit > 0.0;
    if !credit_ok {
        problems.push(
            at("credit_limit"),
            "credit_limit must be a finite number greater than 0",
        );
    }
    let alert_ok = match u.alert_threshold {
        None => true,
        Some(a) if !a.is_finite() || a < 0.0 => {
            problems.push(
                at("alert_threshold"),
                "alert_threshold must be a finite number of at least 0",
            );
            false
        }
        Some(a) if credit_ok && a > u.credit_limit => {
            problems.push(
                at("alert_threshold"),
                format!(
                    "alert_threshold ({a}) must not exceed credit_limit ({})",
                    u.credit_limit
                ),
            );
            false
        }
        Some(_) => true,
    };
    let reset = match u.periodic_reset.as_deref() {
        None => Some(None),
        Some("daily") => Some(Some(Reset::Daily)),
        Some("weekly") => Some(Some(Reset::Weekly)),
        Some("monthly") => Some(Some(Reset::Monthly)),
        Some(other) => {
            problems.push(
                at("periodic_reset"),
                format!(
                    "unknown periodic_reset `{}`{}; expected `daily`, `weekly` or `monthly` \
                     (omit it for a budget that never resets)",
                    shown(other),
                    did_you_mean(nearest(other, RESETS.iter().copied()))
                ),
            );
            None
        }
    };
    match (kind, credit_ok, alert_ok, reset) {
        (Some(kind), true, true, Some(reset)) => Some(UsageLimit {
            kind,
            credit_limit: u.credit_limit,
            alert_threshold: u.alert_threshold,
            reset,
        }),
        _ => None,
    }
}

/// Checks `model_prices` and turns it into a [`PriceTable`] in file order.
pub(super) fn check_model_prices(prices: &ModelPrices, problems: &mut Problems) -> PriceTable {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(prices.0.len());
    let mut out = Vec::with_capacity(prices.0.len());
    for (n, (pattern, price)) in prices.0.iter().enumerate() {
        let at = || format!("model_prices[{n}]");
        if let Some(m) = model_pattern_problem(pattern) {
            problems.push(at(), m);
        } else if let Some(&first) = seen.get(pattern.as_str()) {
            problems.push(
                at(),
                format!(
                    "duplicate model pattern `{}` (also model_prices[{first}])",
                    shown(pattern)
                ),
            );
        } else {
            seen.insert(pattern, n);
        }
        let optional = [
            ("cached_input", price.cached_input),
            ("cache_write", price.cache_write),
        ];
        let given = optional
            .into_iter()
            .filter_map(|(field, value)| value.map(|v| (field, v)));
        for (field, value) in [("input", price.input), ("output", price.output)]
            .into_iter()
            .chain(given)
        {
            if !value.is_finite() || value < 0.0 {
                problems.push(
                    format!("{}.{field}", at()),
                    format!(
                        "price `{field}` must be a finite number of at least 0 (US dollars per \
                         million tokens)"
                    ),
                );
            }
        }
        out.push((
            Arc::from(pattern.as_str()),
            Price {
                input: price.input,
                output: price.output,
                cached_input: price.cached_input.unwrap_or(price.input),
                cache_write: price.cache_write.unwrap_or(price.input),
            },
        ));
    }
    out.into()
}

#[cfg(test)]
mod tests;
