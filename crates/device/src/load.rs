//! Whether we are under load, as the Linux kernel decides it: when the queue of handshake
//! messages waiting for the handshake worker (here: keyd) holds at least an eighth of its
//! capacity, and for a second after the last time it did. A burst that keyd keeps up with
//! costs nobody a cookie round trip; a backlog, whatever its cause, does.
//!
//! The queue's length is datad's count of handshake messages keyd has not yet reported
//! taken ([`wg_messages::messages::KeydToDatad::HandshakesTaken`]).

use std::time::{Duration, Instant};

/// The kernel's `MAX_QUEUED_INCOMING_HANDSHAKES`: handshake messages keyd has not taken
/// beyond which new ones are dropped.
pub const MAX_QUEUED_HANDSHAKES: usize = 4096;
/// Queued handshake messages from which cookies (MAC2) are demanded (the kernel: an eighth
/// of its queue).
pub(crate) const UNDER_LOAD_QUEUE: usize = MAX_QUEUED_HANDSHAKES / 8;
/// Once under load, stay so for this long (the kernel and wireguard-go: 1 s).
pub(crate) const UNDER_LOAD_AFTER: Duration = Duration::from_secs(1);

/// The load decision: the queue's length now, and since when it was last long.
#[derive(Debug, Default)]
pub(crate) struct LoadMeter {
    under_load_until: Option<Instant>,
}

impl LoadMeter {
    /// Whether handshake messages must carry MAC2 at `now`, with `queued` messages waiting
    /// for keyd.
    pub(crate) fn under_load(&mut self, queued: usize, now: Instant) -> bool {
        if queued >= UNDER_LOAD_QUEUE {
            self.under_load_until = Some(now + UNDER_LOAD_AFTER);
            return true;
        }
        self.under_load_until.is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_queue_means_load_for_a_second_after_it_was_last_seen() {
        let t0 = Instant::now();
        let mut meter = LoadMeter::default();
        assert!(!meter.under_load(UNDER_LOAD_QUEUE - 1, t0), "just below");
        assert!(meter.under_load(UNDER_LOAD_QUEUE, t0));
        let later = t0 + Duration::from_millis(500);
        assert!(meter.under_load(UNDER_LOAD_QUEUE + 10, later));
        // The queue drained: still under load until a second after `later`.
        assert!(meter.under_load(0, later + UNDER_LOAD_AFTER - Duration::from_nanos(1)));
        assert!(!meter.under_load(0, later + UNDER_LOAD_AFTER));
    }

    #[test]
    fn any_rate_that_keyd_keeps_up_with_is_never_load() {
        let t0 = Instant::now();
        let mut meter = LoadMeter::default();
        // 100,000 messages over ten seconds, each taken before the next arrives.
        for i in 0..100_000u64 {
            assert!(
                !meter.under_load(1, t0 + Duration::from_micros(i * 100)),
                "at {i}"
            );
        }
    }

    #[test]
    fn the_kernels_numbers() {
        assert_eq!(MAX_QUEUED_HANDSHAKES, 4096);
        assert_eq!(UNDER_LOAD_QUEUE, 512);
    }
}
