//! Model patterns and allowlists (the reference on model allowlists): `*` matches any run of
//! characters, everything else is literal and case-sensitive.

use std::sync::Arc;

/// Whether `model` matches `pattern`, where `*` matches any run of
/// characters (the empty one too) and every other character is literal and
/// case-sensitive.
///
/// Linear in the lengths: the literal pieces between stars are matched
/// greedily, leftmost first, which is exact for a star-only glob (a star can
/// always absorb what an earlier match skipped), so nothing backtracks.
pub fn pattern_matches(pattern: &str, model: &str) -> bool {
    // The stars by a byte search: patterns are short, and a `char`
    // searcher's set-up costs more than the loop.
    let bytes = pattern.as_bytes();
    let Some(star) = bytes.iter().position(|&b| b == b'*') else {
        // No star: the whole pattern is literal.
        return pattern == model;
    };
    let last_star = bytes.iter().rposition(|&b| b == b'*').unwrap_or(star);
    // `*` is ASCII: every slice below starts and ends on a character.
    let first = &pattern[..star];
    let last = &pattern[last_star + 1..];
    let inner = pattern.get(star + 1..last_star).unwrap_or("");
    // The prefix and the suffix are anchored and may not overlap.
    let Some(mut hay) = model
        .strip_prefix(first)
        .and_then(|rest| rest.strip_suffix(last))
    else {
        return false;
    };
    for piece in inner.split('*').filter(|p| !p.is_empty()) {
        match hay.find(piece) {
            Some(at) => hay = &hay[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `model` matches a pattern of every list (a key's and its
/// workspace's `models`); true when there are no lists.
pub fn allowed_by_all(lists: &[&[Arc<str>]], model: &str) -> bool {
    lists
        .iter()
        .all(|list| list.iter().any(|p| pattern_matches(p, model)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn star_matches_any_run_and_the_rest_is_literal() {
        for (p, m, want) in [
            ("gpt-4o*", "gpt-4o", true),
            ("gpt-4o*", "gpt-4o-mini", true),
            ("gpt-4o*", "gpt-4", false),
            ("*", "", true),
            ("*", "anything", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*mini", "gpt-4o-mini", true),
            ("gpt-4o-mini", "gpt-4o-mini", true),
            ("gpt-4o-mini", "GPT-4o-mini", false),
            ("gpt-4o-mini", "gpt-4o-mini-2024", false),
            ("a.b", "axb", false),
            ("**a", "ba", true),
            ("", "", true),
            ("", "a", false),
        ] {
            assert_eq!(pattern_matches(p, m), want, "{p:?} vs {m:?}");
        }
    }

    /// Every pattern and model of up to 5 characters over `a`, `b`, `*`
    /// (models over `a`, `b`, and a two-byte letter), against a
    /// backtracking reference matcher.
    #[test]
    fn the_greedy_matcher_agrees_with_backtracking_on_every_short_case() {
        fn reference(p: &[char], m: &[char]) -> bool {
            match p.split_first() {
                None => m.is_empty(),
                Some(('*', rest)) => (0..=m.len()).any(|i| reference(rest, &m[i..])),
                Some((c, rest)) => m.first() == Some(c) && reference(rest, &m[1..]),
            }
        }
        fn all(alphabet: &[char], max: usize) -> Vec<String> {
            let mut out = vec![String::new()];
            let mut level = vec![String::new()];
            for _ in 0..max {
                level = level
                    .iter()
                    .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                    .collect();
                out.extend(level.iter().cloned());
            }
            out
        }
        let patterns = all(&['a', 'b', '*', 'é'], 5);
        let models = all(&['a', 'b', 'é'], 5);
        for p in &patterns {
            let pc: Vec<char> = p.chars().collect();
            for m in &models {
                let mc: Vec<char> = m.chars().collect();
                assert_eq!(pattern_matches(p, m), reference(&pc, &mc), "{p:?} vs {m:?}");
            }
        }
    }

    #[test]
    fn many_stars_stay_fast() {
        let pattern = "*a".repeat(50) + "b";
        let model = "a".repeat(5000);
        assert!(!pattern_matches(&pattern, &model));
    }

    #[test]
    fn literal_patterns_match_exactly_and_case_sensitively() {
        assert!(pattern_matches("gpt-4o", "gpt-4o"));
        assert!(!pattern_matches("gpt-4o", "gpt-4o-mini"));
        assert!(!pattern_matches("gpt-4o", "GPT-4o"));
        assert!(!pattern_matches("gpt-4o", "gpt-4"));
        assert!(!pattern_matches("gpt-4o", ""));
        assert!(pattern_matches("", ""));
        assert!(!pattern_matches("", "a"));
    }

    #[test]
    fn star_matches_any_run_including_empty() {
        assert!(pattern_matches("gpt-4o*", "gpt-4o"));
        assert!(pattern_matches("gpt-4o*", "gpt-4o-mini"));
        assert!(!pattern_matches("gpt-4o*", "gpt-4"));
        assert!(pattern_matches("*", ""));
        assert!(pattern_matches("*", "anything at all"));
        assert!(pattern_matches("**", "x"));
        assert!(pattern_matches("*-mini", "gpt-4o-mini"));
        assert!(!pattern_matches("*-mini", "gpt-4o-mini-2"));
        assert!(pattern_matches(
            "claude-*-sonnet-*",
            "claude-3-5-sonnet-2024"
        ));
        assert!(pattern_matches("a*b*c", "abc"));
        assert!(pattern_matches("a*b*c", "aXbYbZc"));
        assert!(!pattern_matches("a*b*c", "acb"));
    }

    #[test]
    fn prefix_and_suffix_may_not_overlap() {
        assert!(!pattern_matches("a*a", "a"));
        assert!(pattern_matches("a*a", "aa"));
        assert!(!pattern_matches("ab*ba", "aba"));
        assert!(pattern_matches("ab*ba", "abba"));
    }

    #[test]
    fn other_glob_characters_are_literal() {
        assert!(pattern_matches("gpt-?", "gpt-?"));
        assert!(!pattern_matches("gpt-?", "gpt-4"));
        assert!(pattern_matches("m[1]", "m[1]"));
        assert!(!pattern_matches("m.", "mx"));
    }

    #[test]
    fn unicode_models_match_by_character() {
        assert!(pattern_matches("é*ü", "éxyzü"));
        assert!(!pattern_matches("é*ü", "éxyzu"));
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let pattern = format!("{}b", "a*".repeat(2000));
        let model = "a".repeat(100_000);
        let start = std::time::Instant::now();
        assert!(!pattern_matches(&pattern, &model));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn every_list_must_allow_the_model() {
        let key: Vec<Arc<str>> = vec!["gpt-4o-mini".into()];
        let ws: Vec<Arc<str>> = vec!["gpt-4o*".into(), "text-embedding-3-small".into()];
        assert!(allowed_by_all(&[&key, &ws], "gpt-4o-mini"));
        assert!(!allowed_by_all(&[&key, &ws], "gpt-4o"));
        assert!(!allowed_by_all(&[&key, &ws], "text-embedding-3-small"));
        assert!(allowed_by_all(&[&ws], "text-embedding-3-small"));
        assert!(allowed_by_all(&[], "anything"));
        assert!(!allowed_by_all(&[&[]], "anything"));
    }

    /// A plain backtracking reference matcher, exponential but obviously
    /// right, for the property test.
    fn reference(p: &[char], m: &[char]) -> bool {
        match p.split_first() {
            None => m.is_empty(),
            Some(('*', rest)) => (0..=m.len()).any(|i| reference(rest, &m[i..])),
            Some((c, rest)) => m.first() == Some(c) && reference(rest, &m[1..]),
        }
    }

    proptest! {
        #[test]
        fn matches_like_the_reference(p in "[ab*é]{0,8}", m in "[abé]{0,10}") {
            let pc: Vec<char> = p.chars().collect();
            let mc: Vec<char> = m.chars().collect();
            prop_assert_eq!(pattern_matches(&p, &m), reference(&pc, &mc));
        }

        #[test]
        fn a_star_between_any_split_matches(a in "[a-z]{0,6}", b in "[a-z]{0,6}", x in "[a-z*]{0,6}") {
            let pattern = format!("{a}*{b}");
            let model = format!("{a}{}{b}", x.replace('*', ""));
            prop_assert!(pattern_matches(&pattern, &model));
        }
    }
}
