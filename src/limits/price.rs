//! Prices (the reference on usage counting): the first `model_prices` pattern that matches a model
//! prices it; cost is in US dollars per million tokens.

use std::sync::Arc;

use super::models::pattern_matches;
use crate::limits::Price;

/// The price of `model`: that of the first pattern in `table` (file order)
/// that matches it; `None` for an unpriced model (it costs 0).
pub fn price_for(table: &[(Arc<str>, Price)], model: &str) -> Option<Price> {
    table
        .iter()
        .find(|(pattern, _)| pattern_matches(pattern, model))
        .map(|(_, price)| *price)
}

/// The price settlement charges an answer at: the model the response names
/// when a pattern prices it, else the request's model (an upstream may
/// answer with a dated name no pattern lists, or with none at all).
pub fn settlement_price(
    table: &[(Arc<str>, Price)],
    response_model: Option<&str>,
    request_model: Option<&str>,
) -> Option<Price> {
    response_model
        .and_then(|m| price_for(table, m))
        .or_else(|| request_model.and_then(|m| price_for(table, m)))
}

/// US dollars for `input` and `output` tokens at `price`, all input at
/// the `input` price (a reservation's estimate):
/// (input × price.input + output × price.output) ÷ 1,000,000.
pub fn cost_usd(input: u64, output: u64, price: Price) -> f64 {
    (input as f64 * price.input + output as f64 * price.output) / 1e6
}

/// The tokens of one answer, as priced (docs/reference.md#cached-input-and-prices).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// The whole input, cached and cache-written tokens included.
    pub input: u64,
    /// Of `input`, read from a cache.
    pub cached_input: u64,
    /// Of `input`, written to a cache.
    pub cache_write: u64,
    /// Output tokens.
    pub output: u64,
}

/// US dollars for an answer's tokens at `price`:
/// ((input − cached − written) × input + cached × cached_input + written ×
/// cache_write + output × output) ÷ 1,000,000. Cached and written tokens
/// are part of the input: a report that claims more of them than the input
/// holds is capped to it (cached first).
pub fn cost_of(t: Tokens, price: Price) -> f64 {
    let cached = t.cached_input.min(t.input);
    let written = t.cache_write.min(t.input - cached);
    let fresh = t.input - cached - written;
    (fresh as f64 * price.input
        + cached as f64 * price.cached_input
        + written as f64 * price.cache_write
        + t.output as f64 * price.output)
        / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::PriceTable;

    fn table() -> Vec<(Arc<str>, Price)> {
        vec![
            ("gpt-4o-mini".into(), Price::flat(0.15, 0.60)),
            ("gpt-4o*".into(), Price::flat(2.50, 10.00)),
        ]
    }

    #[test]
    fn first_matching_pattern_wins() {
        let t = table();
        assert_eq!(price_for(&t, "gpt-4o-mini").map(|p| p.input), Some(0.15));
        assert_eq!(price_for(&t, "gpt-4o").map(|p| p.input), Some(2.50));
        assert_eq!(price_for(&t, "gpt-4o-mini-2").map(|p| p.input), Some(2.50));
        let mut reversed = t.clone();
        reversed.reverse();
        assert_eq!(
            price_for(&reversed, "gpt-4o-mini").map(|p| p.input),
            Some(2.50)
        );
    }

    #[test]
    fn settlement_prices_the_response_model_when_priced_else_the_request_model() {
        let t = table();
        let mini = Some(Price::flat(0.15, 0.60));
        let big = Some(Price::flat(2.50, 10.00));
        assert_eq!(
            settlement_price(&t, Some("gpt-4o-mini"), Some("gpt-4o")),
            mini
        );
        assert_eq!(settlement_price(&t, Some("mystery-1"), Some("gpt-4o")), big);
        assert_eq!(settlement_price(&t, None, Some("gpt-4o-mini")), mini);
        assert_eq!(settlement_price(&t, Some("gpt-4o"), None), big);
        assert_eq!(settlement_price(&t, Some("x"), Some("y")), None);
        assert_eq!(settlement_price(&t, None, None), None);
    }

    #[test]
    fn unpriced_model_has_no_price() {
        assert_eq!(price_for(&table(), "claude-3"), None);
        assert_eq!(price_for(&[], "gpt-4o"), None);
    }

    #[test]
    fn cost_is_per_million_tokens() {
        let p = Price::flat(2.50, 10.00);
        assert!((cost_usd(1_000_000, 0, p) - 2.5).abs() < 1e-12);
        assert!((cost_usd(1000, 500, p) - 0.0075).abs() < 1e-12);
        assert_eq!(cost_usd(0, 0, p), 0.0);
    }

    #[test]
    fn cached_and_written_input_have_prices_of_their_own() {
        // The reference's two examples.
        let openai = Price {
            cached_input: 1.25,
            ..Price::flat(2.50, 10.00)
        };
        let t = Tokens {
            input: 2000,
            cached_input: 1500,
            cache_write: 0,
            output: 100,
        };
        assert!((cost_of(t, openai) - 0.004125).abs() < 1e-12);
        let anthropic = Price {
            cached_input: 0.30,
            cache_write: 3.75,
            ..Price::flat(3.00, 15.00)
        };
        let t = Tokens {
            input: 1700,
            cached_input: 1000,
            cache_write: 500,
            output: 300,
        };
        assert!((cost_of(t, anthropic) - 0.007275).abs() < 1e-12);
        // Defaults: every input token at `input`, as `cost_usd`.
        let flat = Price::flat(3.00, 15.00);
        assert!((cost_of(t, flat) - cost_usd(1700, 300, flat)).abs() < 1e-15);
    }

    #[test]
    fn a_report_claiming_more_cached_tokens_than_input_is_capped() {
        let p = Price {
            cached_input: 1.0,
            cache_write: 100.0,
            ..Price::flat(10.0, 0.0)
        };
        let t = |cached_input, cache_write| Tokens {
            input: 100,
            cached_input,
            cache_write,
            output: 0,
        };
        // All 100 cached at 1.0; nothing left to be written.
        assert!((cost_of(t(500, 500), p) - 100.0 / 1e6).abs() < 1e-15);
        // 60 cached, the 40 left written.
        assert!((cost_of(t(60, 500), p) - (60.0 + 4000.0) / 1e6).abs() < 1e-15);
        assert_eq!(cost_of(Tokens::default(), p), 0.0);
    }

    #[test]
    fn the_first_matching_price_wins() {
        let p = |input| Price::flat(input, 0.0);
        let table: PriceTable = vec![
            (Arc::from("gpt-4o-mini"), p(0.15)),
            (Arc::from("gpt-4o*"), p(2.5)),
        ]
        .into();
        assert_eq!(price_for(&table, "gpt-4o-mini"), Some(p(0.15)));
        assert_eq!(price_for(&table, "gpt-4o-2024"), Some(p(2.5)));
        assert_eq!(price_for(&table, "o1"), None);
    }
}
