//! The reservation a counted request makes before it is forwarded: what it
//! may use at most, as far as the request says. Which routes are counted
//! is a property of the route (`decision::routes::Route::usage`).

use serde::Deserialize;

/// The APIs whose answers report token usage: the counted built-in routes,
/// and what an extra route's `meter` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageApi {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
    /// `/v1/embeddings`.
    Embeddings,
    /// `/v1/responses`.
    Responses,
    /// `/v1/messages` (Anthropic).
    Messages,
}

impl UsageApi {
    /// Every one, in the order of the docs.
    pub const ALL: [UsageApi; 5] = [
        UsageApi::Chat,
        UsageApi::Completions,
        UsageApi::Embeddings,
        UsageApi::Responses,
        UsageApi::Messages,
    ];

    /// The name a route's `meter` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageApi::Chat => "chat",
            UsageApi::Completions => "completions",
            UsageApi::Embeddings => "embeddings",
            UsageApi::Responses => "responses",
            UsageApi::Messages => "messages",
        }
    }

    /// The built-in route of this API.
    pub fn builtin_path(self) -> &'static str {
        match self {
            UsageApi::Chat => "/v1/chat/completions",
            UsageApi::Completions => "/v1/completions",
            UsageApi::Embeddings => "/v1/embeddings",
            UsageApi::Responses => "/v1/responses",
            UsageApi::Messages => "/v1/messages",
        }
    }

    /// The API a `POST` on this built-in pattern is.
    pub fn of_builtin(pattern: &str) -> Option<UsageApi> {
        UsageApi::ALL
            .into_iter()
            .find(|a| a.builtin_path() == pattern)
    }

    /// Whether its answers generate text (all but embeddings): a request
    /// that names no maximum output reserves `default_output_reservation`.
    pub fn generates_text(self) -> bool {
        self != UsageApi::Embeddings
    }

    /// Whether a stream of it gets `stream_options.include_usage` set
    /// upstream (chat and completions).
    pub fn injects_stream_usage(self) -> bool {
        matches!(self, UsageApi::Chat | UsageApi::Completions)
    }
}

/// What a request asks for, as read from its body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Asked {
    /// Body length in bytes.
    pub body_len: u64,
    /// The requested maximum output (`max_tokens`, `max_completion_tokens`
    /// or `max_output_tokens`), if any.
    pub max_output: Option<u64>,
    /// `n`, the number of choices, if given.
    pub n: Option<u64>,
}

/// The tokens a request reserves before it is forwarded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Input tokens: the body's bytes ÷ 4.
    pub input: u64,
    /// Output tokens: the most the request may generate.
    pub output: u64,
}

impl Estimate {
    /// Input plus output.
    pub fn total(self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// The reservation of a request to `api`: its body bytes ÷ 4 (integer
/// division) for input, plus its requested maximum output times `n` (1
/// when absent or 0) — or, when it names no maximum and `api` generates
/// text, `default_output` times `n`. Saturates rather than wraps.
///
/// So a usage limit is passed only by what an upstream generates beyond
/// what the request asked for.
pub fn reservation(api: UsageApi, asked: Asked, default_output: u64) -> Estimate {
    let n = asked.n.unwrap_or(1).max(1);
    let per_choice = match asked.max_output {
        Some(max) => max,
        None if api.generates_text() => default_output,
        None => 0,
    };
    Estimate {
        input: asked.body_len / 4,
        output: per_choice.saturating_mul(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(body_len: u64, max_output: Option<u64>, n: Option<u64>) -> Asked {
        Asked {
            body_len,
            max_output,
            n,
        }
    }

    #[test]
    fn input_is_a_quarter_of_the_body() {
        let e = reservation(UsageApi::Embeddings, asked(103, None, None), 4096);
        assert_eq!(
            e,
            Estimate {
                input: 25,
                output: 0
            }
        );
        assert_eq!(
            reservation(UsageApi::Embeddings, asked(3, None, None), 9).total(),
            0
        );
    }

    #[test]
    fn the_requested_maximum_is_reserved_for_each_choice() {
        let e = reservation(UsageApi::Chat, asked(400, Some(256), None), 4096);
        assert_eq!(
            e,
            Estimate {
                input: 100,
                output: 256
            }
        );
        assert_eq!(e.total(), 356);
        let e = reservation(UsageApi::Chat, asked(400, Some(256), Some(3)), 4096);
        assert_eq!(e.output, 768);
        // n: 0 is one choice, not none.
        let e = reservation(UsageApi::Completions, asked(0, Some(10), Some(0)), 4096);
        assert_eq!(e.output, 10);
        // An explicit maximum of 0 is 0, whatever the default.
        let e = reservation(UsageApi::Chat, asked(0, Some(0), Some(4)), 4096);
        assert_eq!(e.output, 0);
    }

    #[test]
    fn without_a_maximum_text_apis_reserve_the_default_per_choice() {
        for api in [
            UsageApi::Chat,
            UsageApi::Completions,
            UsageApi::Responses,
            UsageApi::Messages,
        ] {
            assert_eq!(reservation(api, asked(8, None, None), 4096).output, 4096);
            assert_eq!(reservation(api, asked(8, None, Some(2)), 4096).output, 8192);
            assert_eq!(reservation(api, asked(8, None, Some(2)), 0).output, 0);
        }
        // Embeddings generate no text.
        assert_eq!(
            reservation(UsageApi::Embeddings, asked(8, None, Some(5)), 4096).output,
            0
        );
    }

    #[test]
    fn huge_values_saturate() {
        let e = reservation(UsageApi::Chat, asked(8, Some(u64::MAX), Some(2)), 0);
        assert_eq!(e.output, u64::MAX);
        assert_eq!(e.total(), u64::MAX);
        let e = reservation(UsageApi::Chat, asked(u64::MAX, None, Some(u64::MAX)), 4096);
        assert_eq!(e.total(), u64::MAX);
    }
}
