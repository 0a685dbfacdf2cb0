//! Settlement (the reference on usage counting): what a finished response is charged, which replaces
//! the reservation its request made.

use super::{Observed, Reported};

/// What a response is charged, in tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Input tokens, all of them.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Of `input`, tokens read from a cache.
    pub cached_input: u64,
    /// Of `input`, tokens written to a cache.
    pub cache_write: u64,
    /// `true` when the upstream reported no usage and this is the estimate.
    pub estimated: bool,
    /// The model to price: the one the response names, else the request's.
    pub model: Option<String>,
}

/// The charge for a response of `status` that revealed `observed`, for a
/// request that reserved `reserved_input` input tokens and named
/// `request_model`.
///
/// Reported usage is charged as reported. Without it, a response of status
/// 400 or more is charged nothing; any other is charged, marked estimated, its
/// input (as the upstream reported it before the answer was cut, else as
/// reserved) plus its generated text bytes / 4 as output — at least 1 when
/// it carried any text.
pub fn settle(
    reserved_input: u64,
    status: u16,
    observed: &Observed,
    request_model: Option<&str>,
) -> Charge {
    let model = observed
        .model
        .clone()
        .or_else(|| request_model.map(str::to_owned));
    let charge = |r: Reported, estimated| Charge {
        input: r.input,
        output: r.output,
        cached_input: r.cached_input,
        cache_write: r.cache_write,
        estimated,
        model: model.clone(),
    };
    match observed.reported {
        Some(reported) => charge(reported, false),
        None if status >= 400 => charge(Reported::default(), false),
        None => {
            let generated = observed.generated_bytes;
            let output = (generated / 4).max(u64::from(generated > 0));
            let input = observed.reported_input.unwrap_or(Reported {
                input: reserved_input,
                ..Reported::default()
            });
            charge(Reported { output, ..input }, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(reported: Option<(u64, u64)>, model: Option<&str>, generated: u64) -> Observed {
        Observed {
            reported: reported.map(|(input, output)| Reported {
                input,
                output,
                ..Reported::default()
            }),
            reported_input: None,
            model: model.map(str::to_owned),
            generated_bytes: generated,
        }
    }

    #[test]
    fn reported_usage_is_charged_as_reported_with_the_response_model() {
        let charge = settle(
            500,
            200,
            &observed(Some((19, 10)), Some("gpt-4o-2024-08-06"), 999),
            Some("gpt-4o"),
        );
        assert_eq!(
            charge,
            Charge {
                input: 19,
                output: 10,
                cached_input: 0,
                cache_write: 0,
                estimated: false,
                model: Some("gpt-4o-2024-08-06".into())
            }
        );
    }

    #[test]
    fn reported_usage_wins_even_on_an_error_status() {
        let charge = settle(500, 500, &observed(Some((3, 1)), None, 0), Some("m"));
        assert_eq!(
            (charge.input, charge.output, charge.estimated),
            (3, 1, false)
        );
    }

    #[test]
    fn without_a_response_model_the_request_model_is_priced() {
        let charge = settle(500, 200, &observed(Some((1, 2)), None, 0), Some("gpt-4o"));
        assert_eq!(charge.model.as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn error_without_usage_is_charged_nothing() {
        for status in [400, 429, 500, 503] {
            let charge = settle(500, status, &observed(None, None, 40), Some("gpt-4o"));
            assert_eq!(
                (charge.input, charge.output, charge.estimated),
                (0, 0, false)
            );
        }
    }

    #[test]
    fn success_without_usage_is_estimated_from_reserve_and_generated_bytes() {
        let charge = settle(500, 200, &observed(None, Some("m"), 41), None);
        assert_eq!(
            charge,
            Charge {
                input: 500,
                output: 10,
                cached_input: 0,
                cache_write: 0,
                estimated: true,
                model: Some("m".into())
            }
        );
    }

    #[test]
    fn redirect_without_usage_is_estimated() {
        let charge = settle(7, 399, &observed(None, None, 0), None);
        assert_eq!(
            (charge.input, charge.output, charge.estimated),
            (7, 0, true)
        );
    }

    #[test]
    fn an_estimate_of_an_answer_that_carried_text_is_never_zero_output() {
        for (generated, output) in [(0, 0), (1, 1), (3, 1), (4, 1), (7, 1), (8, 2), (41, 10)] {
            let charge = settle(7, 200, &observed(None, None, generated), None);
            assert_eq!(charge.output, output, "{generated} bytes");
        }
    }

    #[test]
    fn a_cut_anthropic_stream_is_charged_the_input_it_reported() {
        let observed = Observed {
            reported: None,
            reported_input: Some(Reported {
                input: 1110,
                output: 0,
                cached_input: 1000,
                cache_write: 100,
            }),
            model: Some("claude".into()),
            generated_bytes: 41,
        };
        let charge = settle(5000, 200, &observed, Some("claude-x"));
        assert_eq!(
            charge,
            Charge {
                input: 1110,
                output: 10,
                cached_input: 1000,
                cache_write: 100,
                estimated: true,
                model: Some("claude".into())
            }
        );
        // An error status without usage still charges nothing.
        let charge = settle(5000, 500, &observed, None);
        assert_eq!((charge.input, charge.output), (0, 0));
    }

    #[test]
    fn reported_cache_counts_are_passed_on() {
        let observed = Observed {
            reported: Some(Reported {
                input: 100,
                output: 5,
                cached_input: 64,
                cache_write: 0,
            }),
            ..Observed::default()
        };
        let charge = settle(1, 200, &observed, None);
        assert_eq!(
            (charge.input, charge.cached_input, charge.estimated),
            (100, 64, false)
        );
    }
}
