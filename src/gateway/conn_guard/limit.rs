//! The bound on open client connections (`max_client_connections`) and
//! the listener a connection arrived on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// At most one warning per this long that the bound is reached.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Open client connections across every listener, and their bound.
#[derive(Clone, Debug)]
pub struct ConnLimit {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    open: AtomicUsize,
    max: usize,
    /// Milliseconds since [`epoch`] of the last warning, plus one (0: never).
    warned_at: AtomicU64,
}

impl ConnLimit {
    /// A bound of `max` open connections (at least 1).
    pub fn new(max: usize) -> ConnLimit {
        ConnLimit {
            shared: Arc::new(Shared {
                open: AtomicUsize::new(0),
                max: max.max(1),
                warned_at: AtomicU64::new(0),
            }),
        }
    }

    /// A slot for one more connection, held until the [`ConnSlot`] drops;
    /// `None` when `max` are open.
    pub fn try_acquire(&self) -> Option<ConnSlot> {
        let s = &self.shared;
        let mut open = s.open.load(Ordering::Relaxed);
        loop {
            if open >= s.max {
                return None;
            }
            match s
                .open
                .compare_exchange_weak(open, open + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Some(ConnSlot {
                        shared: self.shared.clone(),
                    })
                }
                Err(now) => open = now,
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.shared.max
    }

    /// Whether a warning that the bound is reached is due (at most one per
    /// [`WARN_EVERY`]); claims it when it is.
    pub fn warning_due(&self) -> bool {
        let now = epoch().elapsed().as_millis() as u64 + 1;
        let last = self.shared.warned_at.load(Ordering::Relaxed);
        let every = WARN_EVERY.as_millis() as u64;
        (last == 0 || now.saturating_sub(last) >= every)
            && self
                .shared
                .warned_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// One open connection's place under the bound; gives it back on drop.
#[derive(Debug)]
pub struct ConnSlot {
    shared: Arc<Shared>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which of `listeners` (bound addresses, config order) a connection
/// accepted at local address `local` arrived on: the one bound to exactly
/// that address, else one bound to the unspecified address (`0.0.0.0`,
/// `[::]`) on its port.
pub fn listener_of(listeners: &[SocketAddr], local: &SocketAddr) -> Option<usize> {
    listeners.iter().position(|l| l == local).or_else(|| {
        listeners
            .iter()
            .position(|l| l.ip().is_unspecified() && l.port() == local.port())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back_on_drop() {
        let limit = ConnLimit::new(2);
        let a = limit.try_acquire().expect("first");
        let b = limit.try_acquire().expect("second");
        assert_eq!(limit.open(), 2);
        assert!(limit.try_acquire().is_none(), "a third beyond max 2");
        assert_eq!(limit.open(), 2, "a refusal takes no slot");
        drop(a);
        assert_eq!(limit.open(), 1);
        let c = limit.try_acquire().expect("a slot freed by a close");
        assert!(limit.try_acquire().is_none());
        drop((b, c));
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn concurrent_acquires_never_pass_the_bound() {
        let limit = ConnLimit::new(50);
        let held = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if let Some(slot) = limit.try_acquire() {
                            held.lock().expect("lock").push(slot);
                        }
                    }
                });
            }
        });
        assert_eq!(held.lock().expect("lock").len(), 50);
        assert_eq!(limit.open(), 50);
    }

    #[test]
    fn the_warning_is_due_once_per_period() {
        let limit = ConnLimit::new(1);
        assert!(limit.warning_due());
        assert!(!limit.warning_due());
        assert!(!limit.warning_due());
    }

    #[test]
    fn a_connection_maps_to_its_exact_listener_first_then_a_wildcard_on_its_port() {
        let listeners: Vec<SocketAddr> = ["127.0.0.1:8080", "0.0.0.0:8443", "[::]:9000"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        let at = |a: &str| listener_of(&listeners, &a.parse().expect("addr"));
        assert_eq!(at("127.0.0.1:8080"), Some(0));
        assert_eq!(at("10.1.2.3:8443"), Some(1));
        assert_eq!(at("127.0.0.1:8443"), Some(1));
        // A dual-stack `[::]` socket sees IPv4 clients at mapped addresses.
        assert_eq!(at("[::ffff:10.1.2.3]:9000"), Some(2));
        assert_eq!(at("[::1]:9000"), Some(2));
        assert_eq!(at("10.1.2.3:8080"), None, "bound to 127.0.0.1 only");
        assert_eq!(at("127.0.0.1:1"), None);

        let both: Vec<SocketAddr> = ["0.0.0.0:8443", "127.0.0.1:8443"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        assert_eq!(
            listener_of(&both, &"127.0.0.1:8443".parse().expect("addr")),
            Some(1),
            "the exact address wins over the wildcard"
        );
    }
}
