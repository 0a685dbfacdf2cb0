//! What the counter store reads of one subject's limits for a key's own
//! view (docs/reference.md#a-keys-own-view): plain data, shared by the
//! store that reads it and the decision that words it.

use std::time::Duration;

/// A rate limit's state now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateReading {
    /// Requests or tokens that would pass now.
    pub remaining: u64,
    /// Until the limit is whole again.
    pub reset: Duration,
}

/// A usage limit's state now, in its unit (tokens, or US dollars).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UsageReading {
    /// Settled in the current period.
    pub used: f64,
    /// Held by requests in flight.
    pub reserved: f64,
}

/// One subject's (a key's or a workspace's) limits, read from the store
/// the checks use. The lists follow the order of the subject's limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// One per request rate limit.
    pub requests: Vec<RateReading>,
    /// One per token rate limit.
    pub tokens: Vec<RateReading>,
    /// The usage limit's, if the subject has one.
    pub usage: Option<UsageReading>,
    /// Requests holding a concurrency slot.
    pub in_flight: u32,
}

/// The keys-file unit of a rate limit's period (`rps`, `rpm`, `rph`,
/// `rpd`); `None` for any other period.
pub fn unit_of(period: Duration) -> Option<&'static str> {
    match period.as_secs() {
        _ if period.subsec_nanos() != 0 => None,
        1 => Some("rps"),
        60 => Some("rpm"),
        3600 => Some("rph"),
        86_400 => Some("rpd"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_trip_with_the_keys_file() {
        for unit in ["rps", "rpm", "rph", "rpd"] {
            let period = crate::limits::rate::RateLimit::period_of_unit(unit).expect("unit");
            assert_eq!(unit_of(period), Some(unit));
        }
        assert_eq!(unit_of(Duration::from_millis(1500)), None);
        assert_eq!(unit_of(Duration::from_secs(7)), None);
    }
}
