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

/// US dollars for `input` and `output` tokens at `price`:
/// (input × price.input + output × price.output) ÷ 1,000,000.
pub fn cost_usd(input: u64, output: u64, price: Price) -> f64 {
    (input as f64 * price.input + output as f64 * price.output) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::PriceTable;

    fn table() -> Vec<(Arc<str>, Price)> {
        vec![
            (
                "gpt-4o-mini".into(),
                Price {
                    input: 0.15,
                    output: 0.60,
                },
            ),
            (
                "gpt-4o*".into(),
                Price {
                    input: 2.50,
                    output: 10.00,
                },
            ),
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
    fn unpriced_model_has_no_price() {
        assert_eq!(price_for(&table(), "claude-3"), None);
        assert_eq!(price_for(&[], "gpt-4o"), None);
    }

    #[test]
    fn cost_is_per_million_tokens() {
        let p = Price {
            input: 2.50,
            output: 10.00,
        };
        assert!((cost_usd(1_000_000, 0, p) - 2.5).abs() < 1e-12);
        assert!((cost_usd(1000, 500, p) - 0.0075).abs() < 1e-12);
        assert_eq!(cost_usd(0, 0, p), 0.0);
    }

    #[test]
    fn the_first_matching_price_wins() {
        let p = |input| Price { input, output: 0.0 };
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
