//! TAI64N timestamps, the replay protection of handshake initiations.

use std::time::{SystemTime, UNIX_EPOCH};

use wg_wire::TIMESTAMP_LEN;

/// TAI64 label of the Unix epoch: 2^62 plus the 10 s TAI-UTC offset of 1970.
const TAI64_EPOCH: u64 = 0x4000_0000_0000_000a;
/// Nanoseconds are rounded down to a multiple of 2^24 ns (about 16.8 ms), as the kernel and
/// wireguard-go do, so the timestamp does not leak fine-grained clock readings.
const WHITENER_MASK: u32 = 0x00ff_ffff;

/// A 12-byte TAI64N timestamp: big-endian seconds label, big-endian nanoseconds. The byte
/// order makes lexicographic order equal time order, so `Ord` compares instants.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub struct Tai64N([u8; TIMESTAMP_LEN]);

impl Tai64N {
    /// The timestamp for `secs` seconds and `nanos` nanoseconds after the Unix epoch, with
    /// the nanoseconds whitened.
    pub fn from_unix(secs: u64, nanos: u32) -> Self {
        let mut out = [0u8; TIMESTAMP_LEN];
        let (label, rest) = out.split_at_mut(8);
        label.copy_from_slice(&TAI64_EPOCH.saturating_add(secs).to_be_bytes());
        rest.copy_from_slice(&(nanos & !WHITENER_MASK).to_be_bytes());
        Self(out)
    }

    /// The timestamp for a wall-clock reading (before 1970 counts as the epoch).
    pub fn from_system_time(t: SystemTime) -> Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::from_unix(since.as_secs(), since.subsec_nanos())
    }

    /// Wraps 12 bytes as received.
    pub fn from_bytes(bytes: [u8; TIMESTAMP_LEN]) -> Self {
        Self(bytes)
    }

    /// The 12 wire bytes.
    pub fn to_bytes(self) -> [u8; TIMESTAMP_LEN] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn epoch_is_the_tai64_label() {
        assert_eq!(
            Tai64N::from_unix(0, 0).to_bytes(),
            [0x40, 0, 0, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0]
        );
    }

    #[test]
    fn nanoseconds_are_whitened() {
        assert_eq!(
            Tai64N::from_unix(5, 0x0123_4567),
            Tai64N::from_unix(5, 0x0100_0000)
        );
    }

    proptest! {
        #[test]
        // 2^36 s (about 2,200 years) stays inside every OS's SystemTime range (Windows
        // counts 100 ns ticks from 1601 and ends in the year 30828).
        fn order_follows_time(a in 0u64..1<<36, an in 0u32..1_000_000_000,
                              b in 0u64..1<<36, bn in 0u32..1_000_000_000) {
            let ta = UNIX_EPOCH + Duration::new(a, an);
            let tb = UNIX_EPOCH + Duration::new(b, bn);
            let (wa, wb) = (Tai64N::from_system_time(ta), Tai64N::from_system_time(tb));
            if ta <= tb { prop_assert!(wa <= wb) } else { prop_assert!(wa >= wb) }
        }
    }
}
