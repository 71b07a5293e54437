//! The virtual clock: a fixed `Instant` origin, and a fixed wall-clock origin that moves with
//! it, so that TAI64N timestamps advance with virtual time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock time at the start of every simulation: 2023-11-14T22:13:20Z.
const WALL_START_UNIX_SECS: u64 = 1_700_000_000;

/// The origin of virtual time. Copy it freely: it holds no state that changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    start: Instant,
    wall_start: SystemTime,
}

impl Clock {
    /// A clock whose virtual time 0 is `start` (read once from `Instant::now()`; the
    /// simulation only ever adds to it).
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            wall_start: UNIX_EPOCH + Duration::from_secs(WALL_START_UNIX_SECS),
        }
    }

    /// The `Instant` of virtual time 0.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The `Instant` at `elapsed` virtual time.
    pub fn at(&self, elapsed: Duration) -> Instant {
        self.start + elapsed
    }

    /// Virtual time elapsed at `now`.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }

    /// The virtual wall clock at `now`: a fixed date plus the virtual time elapsed.
    pub fn wall(&self, now: Instant) -> SystemTime {
        self.wall_start + self.elapsed(now)
    }
}

/// A private key drawn from the run's seeded RNG (the simulations' keys are as
/// deterministic as the rest of a run).
pub(crate) fn private_key(
    rng: &mut rand::rngs::StdRng,
) -> zeroize::Zeroizing<[u8; wg_wire::KEY_LEN]> {
    use rand::Rng;
    let mut bytes = zeroize::Zeroizing::new([0u8; wg_wire::KEY_LEN]);
    rng.fill_bytes(&mut bytes[..]);
    bytes
}
