//! What `scopegate inspect-token` prints: every check with its result, and
//! the identity a token yields. The same verification as the proxy's, with
//! each passed check recorded; an operator runs it on a token of their own,
//! so details (issuer, kid, subject) are shown, unlike in error messages.

use std::fmt::Write as _;

use super::shape;
use super::verify::{self, Check, KeySets, TokenError, VerifiedIdentity};
use crate::identity::keys::{Snapshot, UnixMillis};
use crate::identity::scopes::ScopeRegistry;

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Passed; what it saw.
    Passed(String),
    /// Failed; why.
    Failed(String),
    /// An earlier check failed.
    NotReached,
}

/// A token's checks and identity.
#[derive(Debug)]
pub struct Inspection {
    /// Whether the credential is a token by the shape rule at all.
    pub is_token: bool,
    /// Every check, in order.
    pub checks: Vec<(Check, Outcome)>,
    /// The identity, or why there is none.
    pub result: Result<VerifiedIdentity, TokenError>,
}

impl Inspection {
    /// Whether the proxy would accept the token.
    pub fn accepted(&self) -> bool {
        self.result.is_ok()
    }

    /// The report, as printed.
    pub fn render(&self, snap: &Snapshot, registry: &ScopeRegistry) -> String {
        let mut out = String::new();
        if !self.is_token {
            out.push_str(
                "not a token: a credential is a token when it is three base64url parts joined \
                 by `.` and the first decodes to a JSON object with `alg`; this one would be \
                 looked up as an API key\n",
            );
        }
        for (check, outcome) in &self.checks {
            let (mark, text) = match outcome {
                Outcome::Passed(d) => ("ok  ", d.as_str()),
                Outcome::Failed(m) => ("FAIL", m.as_str()),
                Outcome::NotReached => ("-   ", "not reached"),
            };
            let _ = writeln!(out, "{:<10} {mark} {text}", check.as_str());
        }
        match &self.result {
            Err(e) => {
                let _ = writeln!(
                    out,
                    "\nrefused: {} {}",
                    e.failure.status(),
                    e.failure.code()
                );
            }
            Ok(id) => {
                let _ = writeln!(out, "\naccepted");
                out.push_str(&describe(id, snap, registry));
            }
        }
        out
    }
}

/// The identity, one field a line.
fn describe(id: &VerifiedIdentity, snap: &Snapshot, registry: &ScopeRegistry) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(out, "  {k:<24} {v}");
    };
    line("key id:", id.key_id());
    line("subject:", &id.subject);
    line("organisation:", &snap.organisation(id.organisation).id);
    line("workspace:", &snap.workspace(id.workspace).id);
    line("key type:", id.key_type.as_str());
    if let Some(u) = &id.user_id {
        line("user id:", u);
    }
    let scopes = registry.names_of(&id.scopes);
    line(
        "scopes:",
        &if scopes.is_empty() {
            "none".to_string()
        } else {
            scopes.join(", ")
        },
    );
    line("expires (exp):", &format_time(id.expires_at));
    let rates: Vec<String> = id
        .rate_limits()
        .iter()
        .map(|r| format!("{} requests per {} s", r.value, r.period.as_secs()))
        .chain(
            id.limits()
                .token_rates
                .iter()
                .map(|r| format!("{} tokens per {} s", r.value, r.period.as_secs())),
        )
        .collect();
    line(
        "rate limits:",
        &if rates.is_empty() {
            "none".to_string()
        } else {
            rates.join(", ")
        },
    );
    let limits = id.limits();
    if let Some(u) = &limits.usage {
        let reset = u.reset.map_or("never resets", |r| r.as_str());
        line(
            "usage limit:",
            &format!("{} {} ({reset})", u.credit_limit, u.kind.as_str()),
        );
    }
    if let Some(models) = &limits.models {
        let models: Vec<&str> = models.iter().map(|m| &**m).collect();
        line("models:", &models.join(", "));
    }
    if let Some(n) = limits.max_concurrent {
        line("max concurrent requests:", &n.to_string());
    }
    out
}

fn format_time(ms: UnixMillis) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{} (unix seconds)", ms.div_euclid(1000)))
}

/// Runs every check on `token` at `now` and records what each found.
pub fn inspect(token: &str, now: UnixMillis, snap: &Snapshot, sets: &dyn KeySets) -> Inspection {
    let mut passed: Vec<(Check, String)> = Vec::new();
    let result = verify::run(token, now, snap, sets, &mut passed);
    let failed = result.as_ref().err().map(|e| e.check);
    let mut checks = Vec::with_capacity(Check::ALL.len());
    let mut reached = true;
    for check in Check::ALL {
        let outcome = if let Some((_, d)) = passed.iter().find(|(c, _)| *c == check) {
            Outcome::Passed(d.clone())
        } else if Some(check) == failed && reached {
            reached = false;
            let message = result
                .as_ref()
                .err()
                .map(|e| e.message.to_string())
                .unwrap_or_default();
            Outcome::Failed(message)
        } else {
            Outcome::NotReached
        };
        checks.push((check, outcome));
    }
    Inspection {
        is_token: shape::is_token(token),
        checks,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::token::testing::{good_claims, jwks, sets, snapshot_with, TestKey, NOW};

    #[test]
    fn an_accepted_token_shows_every_check_and_the_identity() {
        let snap = snapshot_with(
            "rate_limits: [{ type: requests, unit: rpm, value: 60 }]\nmax_concurrent_requests: 2",
        );
        let key = TestKey::es256("k1");
        let keys = sets(jwks(&[&key]), jwks(&[&key]));
        let report = inspect(&key.sign(&good_claims()), NOW, &snap, &keys);
        assert!(report.accepted());
        assert!(report
            .checks
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Passed(_))));
        let text = report.render(&snap, &ScopeRegistry::builtin());
        for want in [
            "iss        ok   https://idp.a/ → organisation org_a",
            "alg        ok   ES256",
            "kid        ok   k1 (EC P-256)",
            "workspace  ok   ws_a1",
            "accepted",
            "key id:                  token:alice",
            "scopes:                  completions.write, logs.view",
            "rate limits:             60 requests per 60 s",
            "max concurrent requests: 2",
            "expires (exp):           2027-01-15T09:00:00Z",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn a_refused_token_shows_where_it_stopped() {
        let snap = snapshot_with("");
        let key = TestKey::ed25519("k1");
        let keys = sets(jwks(&[&key]), jwks(&[&key]));
        let mut claims = good_claims();
        claims["aud"] = "other".into();
        let report = inspect(&key.sign(&claims), NOW, &snap, &keys);
        assert!(!report.accepted());
        let text = report.render(&snap, &ScopeRegistry::builtin());
        assert!(text.contains("signature  ok   verified"), "{text}");
        assert!(
            text.contains("aud        FAIL the token's audience"),
            "{text}"
        );
        assert!(text.contains("exp        -    not reached"), "{text}");
        assert!(text.contains("refused: 401 invalid_api_key"), "{text}");
    }

    #[test]
    fn a_key_is_not_a_token() {
        let snap = snapshot_with("");
        let keys = sets(jwks(&[&TestKey::es256("k")]), jwks(&[&TestKey::es256("k")]));
        let report = inspect("sgk-abc", NOW, &snap, &keys);
        assert!(!report.is_token && !report.accepted());
        let text = report.render(&snap, &ScopeRegistry::builtin());
        assert!(text.starts_with("not a token"), "{text}");
        assert!(text.contains("format     FAIL"), "{text}");
    }
}
