//! The spending limits a key or a workspace carries (the reference on models, tokens and budgets), validated:
//! model allowlists, token rate limits, usage limits, concurrency, and the
//! model price table. Plain data shared by the decision, the usage
//! accounting and the counter store; no I/O.

use std::sync::Arc;
use std::time::Duration;

/// What a usage limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UsageKind {
    /// Input plus output tokens.
    Tokens,
    /// US dollars, priced from `model_prices`.
    Cost,
}

impl UsageKind {
    /// The keys-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageKind::Tokens => "tokens",
            UsageKind::Cost => "cost",
        }
    }
}

/// When a usage limit's period starts again (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reset {
    /// Every day at 00:00 UTC.
    Daily,
    /// Every Monday at 00:00 UTC.
    Weekly,
    /// The 1st of every month at 00:00 UTC.
    Monthly,
}

impl Reset {
    /// The keys-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reset::Daily => "daily",
            Reset::Weekly => "weekly",
            Reset::Monthly => "monthly",
        }
    }
}

/// A usage limit (`usage_limits`): a budget of tokens or dollars per period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UsageLimit {
    /// Tokens or cost.
    pub kind: UsageKind,
    /// The budget (> 0): tokens, or US dollars.
    pub credit_limit: f64,
    /// Optional: a metric and one log line when usage crosses it.
    pub alert_threshold: Option<f64>,
    /// `None`: the budget never resets.
    pub reset: Option<Reset>,
}

/// A token rate limit: `value` tokens per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenRate {
    /// Tokens allowed per period (≥ 1).
    pub value: u64,
    /// The period (`rps`, `rpm`, `rph`, `rpd`).
    pub period: Duration,
}

/// Everything the reference (models, tokens and budgets) lets a key or a workspace carry besides request rate
/// limits (those stay in `Key::rate_limits` / `Workspace::rate_limits`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// Model patterns (`*` matches any run of characters); `None`: any model.
    pub models: Option<Arc<[Arc<str>]>>,
    /// Token rate limits, all enforced.
    pub token_rates: Vec<TokenRate>,
    /// At most one usage limit.
    pub usage: Option<UsageLimit>,
    /// Keys only: requests in flight at once.
    pub max_concurrent: Option<u32>,
}

impl Limits {
    /// Whether a request's body must be read for these limits (the reference on which data-plane bodies are read).
    pub fn needs_body(&self) -> bool {
        self.models.is_some() || !self.token_rates.is_empty() || self.usage.is_some()
    }

    /// Whether a request must be counted (token rates or a usage limit).
    pub fn counts_tokens(&self) -> bool {
        !self.token_rates.is_empty() || self.usage.is_some()
    }
}

/// Price of a model, US dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Price {
    /// Per million input tokens.
    pub input: f64,
    /// Per million output tokens.
    pub output: f64,
    /// Per million input tokens read from a cache (`cached_input`;
    /// `input` when not given).
    pub cached_input: f64,
    /// Per million input tokens written to a cache (`cache_write`; `input`
    /// when not given).
    pub cache_write: f64,
}

impl Price {
    /// A price with `input` for every kind of input token.
    pub fn flat(input: f64, output: f64) -> Price {
        Price {
            input,
            output,
            cached_input: input,
            cache_write: input,
        }
    }
}

/// `model_prices` in file order: the first pattern that matches wins.
pub type PriceTable = Arc<[(Arc<str>, Price)]>;

impl Limits {
    /// Whether these limits let a request name `model`: no `models` list,
    /// or a pattern of it matches.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|list| {
            list.iter()
                .any(|p| super::models::pattern_matches(p, model))
        })
    }
}

/// Whether a subject is a key, a workspace or an identity token's subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// An API key.
    Key,
    /// A workspace (its limits bind all its keys together).
    Workspace,
    /// The subject of an organisation's identity tokens; its id is
    /// `<organisation id>/<subject>` (organisation ids hold no `/`), so two
    /// organisations' subjects of the same name count apart.
    Token,
}

impl Scope {
    /// `key`, `workspace` or `token`: the spelling in the database, Redis
    /// keys and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Workspace => "workspace",
            Scope::Token => "token",
        }
    }

    /// Parses [`Scope::as_str`].
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "key" => Some(Scope::Key),
            "workspace" => Some(Scope::Workspace),
            "token" => Some(Scope::Token),
            _ => None,
        }
    }
}

/// Which kind of rate limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateKind {
    /// A request rate limit.
    Requests,
    /// A token rate limit.
    Tokens,
}

/// Why the counter store refused a request the decision allowed. Typed,
/// so that the one place errors become bodies (`decision::errors`) words
/// it, and the glue only carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 412: the request's reservation would pass `scope`'s usage limit for
    /// this period.
    Budget {
        /// Whose limit.
        scope: Scope,
    },
    /// 429: a rate limit of `scope`.
    Rate {
        /// Requests or tokens.
        kind: RateKind,
        /// Whose limit.
        scope: Scope,
        /// Until the request could pass (`Retry-After`).
        retry_after: Duration,
        /// The request's estimated tokens are more than the whole token
        /// limit: waiting will not help.
        never: bool,
    },
    /// 429: the key's `max_concurrent_requests` are in flight.
    Concurrency,
    /// 503: the shared limits store is unavailable (`on_error: deny`).
    Unavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_list_allows_every_model() {
        let open = Limits::default();
        assert!(open.allows_model("x"));
        let closed = Limits {
            models: Some(vec![Arc::from("gpt-4o*")].into()),
            ..Limits::default()
        };
        assert!(closed.allows_model("gpt-4o-mini"));
        assert!(!closed.allows_model("o1"));
    }
}
