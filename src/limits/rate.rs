//! Per-key request rate limits with GCRA (the generic cell rate algorithm).
//!
//! GCRA keeps one "theoretical arrival time" per limit, so it is smooth: a
//! key limited to N per period may burst N at once, then gets one more every
//! period/N. Unlike fixed windows, a burst at a window boundary cannot pass
//! 2N. Each key owns its state behind its own small lock (several limits
//! must be checked and committed together); there is no global lock, and
//! keys never contend with each other.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// One configured limit: `value` requests per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Requests allowed per period.
    pub value: u32,
    /// The period.
    pub period: Duration,
}

impl RateLimit {
    /// Parses a keys-file unit (`rps`, `rpm`, `rph`, `rpd`) into a period.
    pub fn period_of_unit(unit: &str) -> Option<Duration> {
        match unit {
            "rps" => Some(Duration::from_secs(1)),
            "rpm" => Some(Duration::from_secs(60)),
            "rph" => Some(Duration::from_secs(3600)),
            "rpd" => Some(Duration::from_secs(86_400)),
            _ => None,
        }
    }

    fn emission_ns(&self) -> u64 {
        (self.period.as_nanos() / u128::from(self.value.max(1))) as u64
    }

    fn period_ns(&self) -> u64 {
        self.period.as_nanos() as u64
    }
}

/// What the client is told about its quota (the tightest limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// `x-ratelimit-limit-requests`.
    pub limit: u32,
    /// `x-ratelimit-remaining-requests`.
    pub remaining: u32,
    /// `x-ratelimit-reset-requests`: until the quota is whole again.
    pub reset: Duration,
    /// Set when refused: until the next request could pass.
    pub retry_after: Option<Duration>,
}

impl Quota {
    /// Whether the request may pass.
    pub fn allowed(&self) -> bool {
        self.retry_after.is_none()
    }

    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|d| {
            let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            s.max(1)
        })
    }
}

/// Formats a duration the way OpenAI's `x-ratelimit-reset-*` headers do
/// (`1s`, `6m0s`, `250ms`), which client libraries already parse.
pub fn format_reset(d: Duration) -> String {
    // Without `format!`: a response with token limits carries one of these,
    // and the formatting machinery costs several times the rest of the work.
    let mut out = String::with_capacity(16);
    let ms = d.as_millis();
    if ms < 1000 {
        push_digits(&mut out, ms, 1);
        out.push_str("ms");
        return out;
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    if h > 0 {
        push_digits(&mut out, h, 1);
        out.push('h');
    }
    if h > 0 || m > 0 {
        push_digits(&mut out, m, 1);
        out.push('m');
    }
    push_digits(&mut out, s, 1);
    if frac > 0 {
        out.push('.');
        // Three digits, trailing zeros dropped: 250 -> "25", 5 -> "005".
        let (mut digits, mut width) = (frac, 3);
        while digits % 10 == 0 {
            digits /= 10;
            width -= 1;
        }
        push_digits(&mut out, digits, width);
    }
    out.push('s');
    out
}

/// Appends `n` in decimal, zero-padded to at least `width` digits.
fn push_digits(out: &mut String, n: u128, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// Monotonic nanoseconds since the first call; GCRA needs a clock that
/// never goes back.
pub fn monotonic_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Offset by one period of a day so that a fresh TAT of 0 is "long ago".
    Instant::now().duration_since(epoch).as_nanos() as u64 + 86_400_000_000_000
}

/// The live state of one key's limits.
#[derive(Debug)]
pub struct KeyLimiter {
    limits: Vec<RateLimit>,
    /// Theoretical arrival time per limit, in [`monotonic_ns`] units.
    tat: Mutex<Vec<u64>>,
}

impl KeyLimiter {
    /// A limiter with full quotas. `None` when there are no limits.
    pub fn new(limits: &[RateLimit]) -> Option<KeyLimiter> {
        if limits.is_empty() {
            return None;
        }
        Some(KeyLimiter {
            limits: limits.to_vec(),
            tat: Mutex::new(vec![0; limits.len()]),
        })
    }

    /// The limits this state belongs to.
    pub fn limits(&self) -> &[RateLimit] {
        &self.limits
    }

    /// Takes one request from every limit if all of them allow it; otherwise
    /// takes nothing. Reports the tightest limit.
    pub fn check(&self, now_ns: u64) -> Quota {
        let mut tat = self.tat.lock();
        // First pass: would every limit allow it?
        let mut worst_wait: Option<u64> = None;
        for (i, l) in self.limits.iter().enumerate() {
            let t = tat[i].max(now_ns);
            let new_tat = t + l.emission_ns();
            let allow_at = new_tat.saturating_sub(l.period_ns());
            if allow_at > now_ns {
                let wait = allow_at - now_ns;
                worst_wait = Some(worst_wait.map_or(wait, |w: u64| w.max(wait)));
            }
        }
        if worst_wait.is_none() {
            for (i, l) in self.limits.iter().enumerate() {
                tat[i] = tat[i].max(now_ns) + l.emission_ns();
            }
        }
        // Report the limit with the fewest requests left.
        let mut best: Option<(u32, u32, u64)> = None; // (remaining, limit, reset)
        for (i, l) in self.limits.iter().enumerate() {
            let t = tat[i].max(now_ns);
            let used_ns = t - now_ns; // how far ahead the TAT runs
            let free_ns = l.period_ns().saturating_sub(used_ns);
            let remaining = (free_ns / l.emission_ns().max(1)) as u32;
            let remaining = remaining.min(l.value);
            // Fewest remaining wins; on a tie, the longest wait, so a client
            // that honours the reset header is not refused again.
            if best.is_none_or(|(r, _, reset)| remaining < r || (remaining == r && used_ns > reset))
            {
                best = Some((remaining, l.value, used_ns));
            }
        }
        let (remaining, limit, reset_ns) = best.unwrap_or((0, 0, 0));
        Quota {
            limit,
            remaining,
            reset: Duration::from_nanos(reset_ns),
            retry_after: worst_wait.map(Duration::from_nanos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn rps(n: u32) -> RateLimit {
        RateLimit {
            value: n,
            period: Duration::from_secs(1),
        }
    }

    #[test]
    fn burst_of_n_then_refused() {
        let l = KeyLimiter::new(&[rps(3)]).expect("limited");
        let t0 = 100 * SEC;
        let q: Vec<Quota> = (0..4).map(|_| l.check(t0)).collect();
        assert!(q[..3].iter().all(Quota::allowed));
        assert_eq!(
            q.iter().map(|q| q.remaining).collect::<Vec<_>>(),
            vec![2, 1, 0, 0]
        );
        assert!(!q[3].allowed());
        assert_eq!(q[3].retry_after_secs(), Some(1));
        // After the whole period the full burst is back.
        let again: Vec<bool> = (0..4).map(|_| l.check(t0 + SEC).allowed()).collect();
        assert_eq!(again, vec![true, true, true, false]);
    }

    #[test]
    fn boundary_burst_cannot_double() {
        let l = KeyLimiter::new(&[rps(10)]).expect("limited");
        let t0 = 100 * SEC;
        let mut passed = 0;
        // 10 just before a "boundary", 10 just after: only ~10 + refill pass.
        for _ in 0..10 {
            passed += u32::from(l.check(t0 + SEC - SEC / 100).allowed());
        }
        for _ in 0..10 {
            passed += u32::from(l.check(t0 + SEC + SEC / 100).allowed());
        }
        assert_eq!(passed, 10);
    }

    #[test]
    fn tightest_limit_wins_and_nothing_is_taken_when_refused() {
        let l = KeyLimiter::new(&[
            rps(5),
            RateLimit {
                value: 2,
                period: Duration::from_secs(60),
            },
        ])
        .expect("limited");
        let t0 = 100 * SEC;
        assert!(l.check(t0).allowed());
        let q = l.check(t0);
        assert!(q.allowed());
        assert_eq!((q.limit, q.remaining), (2, 0));
        let q = l.check(t0);
        assert!(!q.allowed());
        assert_eq!(q.retry_after_secs(), Some(30));
        assert_eq!(
            q.limit, 2,
            "the refusing (longest) limit is reported on a tie"
        );
    }

    #[test]
    fn reset_format_matches_openai() {
        assert_eq!(format_reset(Duration::from_millis(250)), "250ms");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(3661)), "1h1m1s");
        assert_eq!(format_reset(Duration::from_millis(3_600_005)), "1h0m0.005s");
        assert_eq!(format_reset(Duration::from_millis(0)), "0ms");
    }

    /// The hand-written digits say what `format!` said, over a spread of
    /// durations from milliseconds to days.
    #[test]
    fn reset_format_agrees_with_the_formatting_machinery() {
        fn reference(d: Duration) -> String {
            let ms = d.as_millis();
            if ms < 1000 {
                return format!("{ms}ms");
            }
            let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
            let (m, rest) = (rest / 60_000, rest % 60_000);
            let (s, frac) = (rest / 1000, rest % 1000);
            let secs = if frac == 0 {
                format!("{s}s")
            } else {
                let f = format!("{frac:03}");
                format!("{s}.{}s", f.trim_end_matches('0'))
            };
            match (h, m) {
                (0, 0) => secs,
                (0, m) => format!("{m}m{secs}"),
                (h, m) => format!("{h}h{m}m{secs}"),
            }
        }
        let mut ms: u64 = 0;
        while ms < 400_000_000 {
            let d = Duration::from_millis(ms);
            assert_eq!(format_reset(d), reference(d), "{ms} ms");
            ms = ms * 3 / 2 + 7;
        }
        for ms in [
            999, 1000, 1001, 59_999, 60_000, 3_599_999, 3_600_000, 86_400_010,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(format_reset(d), reference(d), "{ms} ms");
        }
    }
}
