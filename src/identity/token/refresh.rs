//! When to fetch a `jwks_url` again, as a pure state machine: the
//! background task asks it what to do and tells it what happened, and
//! sleeps until [`RefreshState::next_due`].
//!
//! - The first fetch is due at start; until one succeeds the
//!   organisation's tokens are *unavailable* (503).
//! - After a success, the next is due `jwks_refresh_seconds` later.
//! - After a failure, the last good set stays in force and the fetch is
//!   retried with a doubling delay from 1 s, never longer than the refresh
//!   interval.
//! - A token naming an unknown `kid` may trigger a fetch at once, at most
//!   once per 10 s (counted from the last fetch of any kind), so that keys
//!   a provider has just added are picked up without letting a stream of
//!   made-up `kid`s hammer it.

use std::time::{Duration, Instant};

/// Gap between fetches an unknown `kid` may trigger.
pub const UNKNOWN_KID_GAP: Duration = Duration::from_secs(10);

/// First retry delay after a failed fetch.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The timings of one `jwks_url`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// `jwks_refresh_seconds`.
    pub every: Duration,
    /// Least time between a fetch and one an unknown `kid` triggers.
    pub unknown_kid_gap: Duration,
    /// First retry delay after a failure.
    pub first_retry: Duration,
}

impl RefreshPolicy {
    /// The policy for a refresh interval, with the standard gaps.
    pub fn new(every: Duration) -> RefreshPolicy {
        RefreshPolicy {
            every,
            unknown_kid_gap: UNKNOWN_KID_GAP,
            first_retry: FIRST_RETRY,
        }
    }
}

/// Whether an organisation's tokens can be verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// No fetch has succeeded yet.
    Unavailable,
    /// A set is in force (maybe an older one, after failures).
    Ready,
}

/// The refresh state of one `jwks_url`.
#[derive(Clone, Debug)]
pub struct RefreshState {
    policy: RefreshPolicy,
    have_set: bool,
    in_flight: bool,
    last_attempt: Option<Instant>,
    next_due: Instant,
    failures: u32,
}

impl RefreshState {
    /// A new state: a fetch is due at `now`.
    pub fn new(policy: RefreshPolicy, now: Instant) -> RefreshState {
        RefreshState {
            policy,
            have_set: false,
            in_flight: false,
            last_attempt: None,
            next_due: now,
            failures: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> RefreshPolicy {
        self.policy
    }

    /// Whether a set is in force.
    pub fn availability(&self) -> Availability {
        if self.have_set {
            Availability::Ready
        } else {
            Availability::Unavailable
        }
    }

    /// When the next scheduled fetch is due (the task sleeps until then).
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Failed fetches since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether a scheduled fetch should start at `now`; if so it is taken
    /// as started.
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.in_flight || now < self.next_due {
            return false;
        }
        self.start(now);
        true
    }

    /// A token named a `kid` the set lacks: whether to fetch at once; if so
    /// it is taken as started.
    pub fn on_unknown_kid(&mut self, now: Instant) -> bool {
        let recent = self
            .last_attempt
            .is_some_and(|t| now.saturating_duration_since(t) < self.policy.unknown_kid_gap);
        if self.in_flight || recent {
            return false;
        }
        self.start(now);
        true
    }

    fn start(&mut self, now: Instant) {
        self.in_flight = true;
        self.last_attempt = Some(now);
    }

    /// The fetch started last succeeded (its set is now in force).
    pub fn on_success(&mut self, now: Instant) {
        self.in_flight = false;
        self.have_set = true;
        self.failures = 0;
        self.next_due = now + self.policy.every;
    }

    /// The fetch started last failed; the set in force, if any, stays.
    pub fn on_failure(&mut self, now: Instant) {
        self.in_flight = false;
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(30);
        let backoff = self
            .policy
            .first_retry
            .saturating_mul(1u32 << doublings)
            .min(self.policy.every);
        self.next_due = now + backoff;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn state() -> (RefreshState, Instant) {
        let t0 = Instant::now();
        (RefreshState::new(RefreshPolicy::new(s(300)), t0), t0)
    }

    #[test]
    fn first_fetch_at_start_then_every_interval() {
        let (mut st, t0) = state();
        assert_eq!(st.availability(), Availability::Unavailable);
        assert!(st.poll(t0));
        assert!(!st.poll(t0), "one fetch at a time");
        st.on_success(t0 + s(1));
        assert_eq!(st.availability(), Availability::Ready);
        assert_eq!(st.next_due(), t0 + s(301));
        assert!(!st.poll(t0 + s(300)));
        assert!(st.poll(t0 + s(301)));
    }

    #[test]
    fn failures_back_off_and_keep_the_last_good_set() {
        let (mut st, t0) = state();
        assert!(st.poll(t0));
        st.on_failure(t0);
        assert_eq!(st.availability(), Availability::Unavailable);
        assert_eq!(st.next_due(), t0 + s(1));
        let mut t = t0 + s(1);
        let mut delays = Vec::new();
        for _ in 0..12 {
            assert!(st.poll(t));
            st.on_failure(t);
            delays.push((st.next_due() - t).as_secs());
            t = st.next_due();
        }
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]);
        assert!(st.poll(t));
        st.on_success(t);
        assert_eq!(st.failures(), 0);
        assert!(st.poll(t + s(300)));
        st.on_failure(t + s(300));
        // The set fetched before stays in force.
        assert_eq!(st.availability(), Availability::Ready);
        assert_eq!(st.next_due(), t + s(301));
    }

    #[test]
    fn unknown_kid_fetches_at_most_once_per_ten_seconds() {
        let (mut st, t0) = state();
        assert!(st.poll(t0));
        assert!(!st.on_unknown_kid(t0 + s(20)), "not while a fetch runs");
        st.on_success(t0 + s(1));
        assert!(
            !st.on_unknown_kid(t0 + s(9)),
            "within 10 s of the last fetch"
        );
        assert!(st.on_unknown_kid(t0 + s(10)));
        st.on_success(t0 + s(10));
        assert!(!st.on_unknown_kid(t0 + s(15)));
        assert!(!st.on_unknown_kid(t0 + s(19)));
        assert!(st.on_unknown_kid(t0 + s(20)));
        st.on_failure(t0 + s(20));
        assert!(!st.on_unknown_kid(t0 + s(29)), "failures count too");
        assert!(st.on_unknown_kid(t0 + s(30)));
    }

    #[test]
    fn a_kid_fetch_moves_the_schedule() {
        let (mut st, t0) = state();
        assert!(st.poll(t0));
        st.on_success(t0);
        assert!(st.on_unknown_kid(t0 + s(100)));
        st.on_success(t0 + s(100));
        assert!(!st.poll(t0 + s(300)));
        assert!(st.poll(t0 + s(400)));
    }
}
