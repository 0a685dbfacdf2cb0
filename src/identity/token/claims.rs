//! Reading claims from a token's payload, whatever shape an identity
//! provider gives them: strings or arrays for `aud` and scopes, integers or
//! fractions for dates. Readers never fail: a claim of the wrong shape is
//! as good as absent, and the check that needs it says so.

use serde_json::{Map, Value};

use crate::identity::keys::UnixMillis;

/// A token's payload.
pub type Claims = Map<String, Value>;

/// The workspace claim read when the configured one is absent.
pub const WORKSPACE_FALLBACK: &str = "portkey_workspace";

/// The scopes claim read when the configured one is absent.
pub const SCOPES_FALLBACK: &str = "scopes";

/// A string claim; `None` when absent or not a string.
pub fn string<'c>(claims: &'c Claims, name: &str) -> Option<&'c str> {
    claims.get(name).and_then(Value::as_str)
}

/// A date claim (`exp`, `nbf`, `iat`): seconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumericDate {
    /// Not in the payload.
    Missing,
    /// Present but not a number.
    Invalid,
    /// The instant, in milliseconds (saturating; fractions of a second
    /// kept to the millisecond, rounded down).
    At(UnixMillis),
}

/// Reads a date claim.
pub fn numeric_date(claims: &Claims, name: &str) -> NumericDate {
    let Some(value) = claims.get(name) else {
        return NumericDate::Missing;
    };
    let Some(n) = value.as_number() else {
        return NumericDate::Invalid;
    };
    if let Some(i) = n.as_i64() {
        return NumericDate::At(i.saturating_mul(1000));
    }
    if n.as_u64().is_some() {
        return NumericDate::At(UnixMillis::MAX);
    }
    match n.as_f64() {
        // `as` saturates at the bounds of i64.
        Some(f) if f.is_finite() => NumericDate::At((f * 1000.0).floor() as UnixMillis),
        _ => NumericDate::Invalid,
    }
}

/// Whether `aud` (a string, or an array of strings) contains `audience`.
pub fn audience_contains(claims: &Claims, audience: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(s)) => s == audience,
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(audience)),
        _ => false,
    }
}

/// The scope words of a token: the claim `name`, or `scopes` when it is
/// absent. A string is split on whitespace (`"openid completions.write"`),
/// an array gives its string items; anything else gives nothing.
pub fn scope_words<'c>(claims: &'c Claims, name: &str) -> Vec<&'c str> {
    let value = claims.get(name).or_else(|| claims.get(SCOPES_FALLBACK));
    match value {
        Some(Value::String(s)) => s.split_ascii_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The workspace a token names: the claim `name`, or `portkey_workspace`
/// when it is absent. `Err(())` when the claim present is not a string.
#[allow(clippy::result_unit_err)]
pub fn workspace<'c>(claims: &'c Claims, name: &str) -> Result<Option<&'c str>, ()> {
    match claims.get(name).or_else(|| claims.get(WORKSPACE_FALLBACK)) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).expect("test claims are a JSON object")
    }

    #[test]
    fn dates_in_every_shape() {
        let c = claims(
            r#"{"a":1700000000,"b":1700000000.5,"c":"1700000000","d":-5,"e":1e300,
                "f":18446744073709551615,"g":null,"h":-1e300}"#,
        );
        assert_eq!(numeric_date(&c, "a"), NumericDate::At(1_700_000_000_000));
        assert_eq!(numeric_date(&c, "b"), NumericDate::At(1_700_000_000_500));
        assert_eq!(numeric_date(&c, "c"), NumericDate::Invalid);
        assert_eq!(numeric_date(&c, "d"), NumericDate::At(-5000));
        assert_eq!(numeric_date(&c, "e"), NumericDate::At(i64::MAX));
        assert_eq!(numeric_date(&c, "f"), NumericDate::At(i64::MAX));
        assert_eq!(numeric_date(&c, "g"), NumericDate::Invalid);
        assert_eq!(numeric_date(&c, "h"), NumericDate::At(i64::MIN));
        assert_eq!(numeric_date(&c, "zz"), NumericDate::Missing);
    }

    #[test]
    fn audience_string_or_array() {
        assert!(audience_contains(&claims(r#"{"aud":"sg"}"#), "sg"));
        assert!(audience_contains(&claims(r#"{"aud":["x",5,"sg"]}"#), "sg"));
        assert!(!audience_contains(&claims(r#"{"aud":"sg2"}"#), "sg"));
        assert!(!audience_contains(&claims(r#"{"aud":["sg2"]}"#), "sg"));
        assert!(!audience_contains(&claims(r#"{"aud":{"sg":1}}"#), "sg"));
        assert!(!audience_contains(&claims(r#"{}"#), "sg"));
        assert!(!audience_contains(&claims(r#"{"aud":"SG"}"#), "sg"));
    }

    #[test]
    fn scopes_string_array_and_fallback() {
        let c = claims(r#"{"scope":"openid  completions.write\tlogs.view"}"#);
        assert_eq!(
            scope_words(&c, "scope"),
            ["openid", "completions.write", "logs.view"]
        );
        let c = claims(r#"{"scp":["a.b", 7, "c.d"]}"#);
        assert_eq!(scope_words(&c, "scp"), ["a.b", "c.d"]);
        let c = claims(r#"{"scopes":"x.y"}"#);
        assert_eq!(scope_words(&c, "scope"), ["x.y"]);
        // The named claim wins over the fallback, even when unusable.
        let c = claims(r#"{"scope":5,"scopes":"x.y"}"#);
        assert!(scope_words(&c, "scope").is_empty());
        assert!(scope_words(&claims("{}"), "scope").is_empty());
    }

    #[test]
    fn workspace_named_claim_then_fallback() {
        let c = claims(r#"{"ws":"a","portkey_workspace":"b"}"#);
        assert_eq!(workspace(&c, "ws"), Ok(Some("a")));
        assert_eq!(workspace(&c, "other"), Ok(Some("b")));
        assert_eq!(workspace(&claims("{}"), "ws"), Ok(None));
        assert_eq!(workspace(&claims(r#"{"ws":["a"]}"#), "ws"), Err(()));
    }
}
