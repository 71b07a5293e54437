//! Whether we are under load: the rate of handshake messages that passed MAC1, over
//! one-second windows. wireguard-go measures its handshake queue's depth instead; a rate is
//! the same signal without a queue of our own.

use std::time::{Duration, Instant};

/// Handshake messages per second above which we demand cookies (MAC2).
pub(crate) const UNDER_LOAD_RATE: u32 = 128;
/// Once under load, stay so for this long (wireguard-go: 1 s).
pub(crate) const UNDER_LOAD_AFTER: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(1);

/// Handshake load over one-second windows.
#[derive(Debug, Default)]
pub(crate) struct LoadMeter {
    window_start: Option<Instant>,
    count: u32,
    under_load_until: Option<Instant>,
}

impl LoadMeter {
    /// A handshake message was accepted for keyd at `now`.
    pub(crate) fn record(&mut self, now: Instant) {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < WINDOW => {
                self.count = self.count.saturating_add(1);
            }
            _ => {
                self.window_start = Some(now);
                self.count = 1;
            }
        }
        if self.count > UNDER_LOAD_RATE {
            self.under_load_until = Some(now + UNDER_LOAD_AFTER);
        }
    }

    /// Whether handshake messages must carry MAC2 at `now`.
    pub(crate) fn under_load(&self, now: Instant) -> bool {
        self.under_load_until.is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_the_rate_within_a_window_means_load_for_a_second() {
        let t0 = Instant::now();
        let mut meter = LoadMeter::default();
        for _ in 0..UNDER_LOAD_RATE {
            meter.record(t0);
        }
        assert!(!meter.under_load(t0), "exactly the rate is not load");
        meter.record(t0 + Duration::from_millis(10));
        assert!(meter.under_load(t0 + Duration::from_millis(10)));
        assert!(meter.under_load(t0 + Duration::from_millis(1009)));
        assert!(!meter.under_load(t0 + Duration::from_millis(1010)));
    }

    #[test]
    fn the_window_restarts_so_a_steady_trickle_is_never_load() {
        let t0 = Instant::now();
        let mut meter = LoadMeter::default();
        // 100 per second for ten seconds: under the rate in every window.
        for i in 0..1000u64 {
            let at = t0 + Duration::from_millis(i * 10);
            meter.record(at);
            assert!(!meter.under_load(at), "at {i}");
        }
    }

    #[test]
    fn load_lasts_from_the_last_message_over_the_rate() {
        let t0 = Instant::now();
        let mut meter = LoadMeter::default();
        for i in 0..=UNDER_LOAD_RATE * 2 {
            meter.record(t0 + Duration::from_micros(u64::from(i)));
        }
        let last = t0 + Duration::from_micros(u64::from(UNDER_LOAD_RATE * 2));
        assert!(meter.under_load(last + UNDER_LOAD_AFTER - Duration::from_nanos(1)));
        assert!(!meter.under_load(last + UNDER_LOAD_AFTER));
    }
}
