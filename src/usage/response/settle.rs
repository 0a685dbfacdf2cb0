//! Settlement (SPEC 9.3): what a finished response is charged, which replaces
//! the reservation its request made.

use super::Observed;

/// What a response is charged, in tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
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
/// ≥ 400 is charged nothing; any other is charged its reserved input plus
/// its generated text bytes ÷ 4 as output, marked estimated.
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
    match observed.reported {
        Some(reported) => Charge {
            input: reported.input,
            output: reported.output,
            estimated: false,
            model,
        },
        None if status >= 400 => Charge {
            input: 0,
            output: 0,
            estimated: false,
            model,
        },
        None => Charge {
            input: reserved_input,
            output: observed.generated_bytes / 4,
            estimated: true,
            model,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::response::Reported;

    fn observed(reported: Option<(u64, u64)>, model: Option<&str>, generated: u64) -> Observed {
        Observed {
            reported: reported.map(|(input, output)| Reported { input, output }),
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
                estimated: true,
                model: Some("m".into())
            }
        );
    }

    #[test]
    fn redirect_without_usage_is_estimated() {
        let charge = settle(7, 399, &observed(None, None, 3), None);
        assert_eq!(
            (charge.input, charge.output, charge.estimated),
            (7, 0, true)
        );
    }
}
