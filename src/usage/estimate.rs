//! Which data-plane routes are counted, must name a model, or hide it
//! (SPEC 9.2, 9.3), and the reservation a request makes before it is
//! forwarded (SPEC 9.3). Routes are given as their pattern as written
//! (`Route::pattern`) and method.

use http::Method;

/// Routes whose responses report token usage (SPEC 9.3), all `POST`.
const COUNTED: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
];

/// The inference routes: a request to them must name a model when models
/// are restricted.
const INFERENCE: &[&str] = crate::routes::INFERENCE_ROUTES;

/// Routes whose streams get `stream_options.include_usage` (SPEC 9.4).
const STREAM_USAGE: &[&str] = &["/v1/chat/completions", "/v1/completions"];

/// Whether a request on this route is counted against token rates and usage
/// limits (`POST` on chat/completions, completions, embeddings, responses,
/// messages).
pub fn counted_route(method: &Method, pattern: &str) -> bool {
    method == Method::POST && COUNTED.contains(&pattern)
}

/// Whether this is an inference route, where a request restricted by
/// `models` must name a model (else `missing_model`).
pub fn requires_model(method: &Method, pattern: &str) -> bool {
    method == Method::POST && INFERENCE.contains(&pattern)
}

/// Whether the proxy cannot see the model of a request on this route
/// (`POST /v1/batches`: the requests are in an uploaded file;
/// `POST /v1/prompts/{id}/completions`: the prompt names it), so a key
/// restricted by `models` gets `model_not_allowed`. The parameter's name in
/// the pattern does not matter.
pub fn hides_model(method: &Method, pattern: &str) -> bool {
    if method != Method::POST {
        return false;
    }
    if pattern == "/v1/batches" {
        return true;
    }
    pattern
        .strip_prefix("/v1/prompts/{")
        .and_then(|rest| rest.strip_suffix("}/completions"))
        .is_some_and(|name| !name.is_empty() && !name.contains(['/', '{', '}']))
}

/// Whether a streamed request on this route gets
/// `stream_options.include_usage` set upstream (SPEC 9.4: chat and
/// completions).
pub fn injects_stream_usage(method: &Method, pattern: &str) -> bool {
    method == Method::POST && STREAM_USAGE.contains(&pattern)
}

/// The tokens a request reserves before it is forwarded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Input tokens: the body's bytes ÷ 4.
    pub input: u64,
    /// Output tokens: the requested maximum output, or 0.
    pub output: u64,
}

impl Estimate {
    /// Input plus output.
    pub fn total(self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// The reservation of a request (SPEC 9.3): its body bytes ÷ 4 (integer
/// division) for input, plus its requested maximum output if given.
pub fn reservation(body_len: usize, max_output: Option<u64>) -> Estimate {
    Estimate {
        input: (body_len / 4) as u64,
        output: max_output.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_posts_to_the_five_usage_routes_are_counted() {
        for p in COUNTED {
            assert!(counted_route(&Method::POST, p), "{p}");
            assert!(!counted_route(&Method::GET, p), "{p}");
        }
        for p in [
            "/v1/rerank",
            "/v1/moderations",
            "/v1/images/generations",
            "/v1/audio/speech",
            "/v1/batches",
            "/v1/responses/{id}",
            "/v1/prompts/{id}/completions",
        ] {
            assert!(!counted_route(&Method::POST, p), "{p}");
        }
    }

    #[test]
    fn inference_routes_are_the_posts_of_the_first_two_rows() {
        assert_eq!(INFERENCE.len(), 13);
        for p in INFERENCE {
            assert!(requires_model(&Method::POST, p), "{p}");
            assert!(!requires_model(&Method::GET, p), "{p}");
        }
        for p in [
            "/v1/files",
            "/v1/batches",
            "/v1/prompts/{id}/completions",
            "/v1/prompts/{id}/render",
            "/v1/models",
            "/v1/responses/{id}",
        ] {
            assert!(!requires_model(&Method::POST, p), "{p}");
        }
    }

    #[test]
    fn batches_and_prompt_completions_hide_the_model() {
        assert!(hides_model(&Method::POST, "/v1/batches"));
        assert!(hides_model(&Method::POST, "/v1/prompts/{id}/completions"));
        assert!(hides_model(
            &Method::POST,
            "/v1/prompts/{prompt_id}/completions"
        ));
        assert!(!hides_model(&Method::GET, "/v1/batches"));
        assert!(!hides_model(&Method::POST, "/v1/batches/{id}/cancel"));
        assert!(!hides_model(&Method::POST, "/v1/prompts/{id}/render"));
        assert!(!hides_model(&Method::POST, "/v1/prompts/x/completions"));
        assert!(!hides_model(&Method::POST, "/v1/prompts/{}/completions"));
        assert!(!hides_model(
            &Method::POST,
            "/v1/prompts/{a}/b/{c}/completions"
        ));
        assert!(!hides_model(&Method::POST, "/v1/chat/completions"));
    }

    #[test]
    fn stream_usage_is_injected_on_chat_and_completions_only() {
        assert!(injects_stream_usage(&Method::POST, "/v1/chat/completions"));
        assert!(injects_stream_usage(&Method::POST, "/v1/completions"));
        assert!(!injects_stream_usage(&Method::POST, "/v1/responses"));
        assert!(!injects_stream_usage(&Method::POST, "/v1/messages"));
        assert!(!injects_stream_usage(&Method::GET, "/v1/chat/completions"));
    }

    #[test]
    fn reservation_is_a_quarter_of_the_body_plus_max_output() {
        assert_eq!(
            reservation(103, None),
            Estimate {
                input: 25,
                output: 0
            }
        );
        assert_eq!(reservation(3, None).total(), 0);
        assert_eq!(
            reservation(400, Some(256)),
            Estimate {
                input: 100,
                output: 256
            }
        );
        assert_eq!(reservation(400, Some(256)).total(), 356);
        assert_eq!(reservation(8, Some(u64::MAX)).total(), u64::MAX);
    }
}
