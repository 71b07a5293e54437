//! The earliest timer deadline of all peers, cached for interfaces with many peers so that
//! the per-packet path never scans them all.

use std::time::{Duration, Instant};

/// Up to this many peers the earliest deadline is recomputed exactly every time.
pub(crate) const EXACT_DEADLINE_PEERS: usize = 64;
/// With more, how stale the cached earliest deadline may get while inputs arrive.
pub(crate) const DEADLINE_RESCAN: Duration = Duration::from_millis(50);

/// The cache: the last scan's result, when it was made, and whether inputs (which may have
/// armed earlier timers) arrived since.
#[derive(Debug, Default)]
pub(crate) struct DeadlineCache {
    earliest: Option<Instant>,
    scanned_at: Option<Instant>,
    inputs_since_scan: bool,
}

impl DeadlineCache {
    /// An input arrived: a timer may now be due earlier than the last scan saw.
    pub(crate) fn touch(&mut self) {
        self.inputs_since_scan = true;
    }

    /// The timers fired: the cached deadline was consumed.
    pub(crate) fn fired(&mut self) {
        self.scanned_at = None;
        self.inputs_since_scan = true;
    }

    /// The earliest deadline at `now` among `peers` peers, `scan` computing it exactly. With
    /// few peers, exact; with many, rescanned at most every [`DEADLINE_RESCAN`], and while
    /// inputs keep arriving the answer is no later than the next rescan.
    pub(crate) fn earliest(
        &mut self,
        now: Instant,
        peers: usize,
        scan: impl FnOnce() -> Option<Instant>,
    ) -> Option<Instant> {
        if peers <= EXACT_DEADLINE_PEERS {
            return scan();
        }
        if self.scanned_at.is_none_or(|t| now >= t + DEADLINE_RESCAN) {
            self.earliest = scan();
            self.scanned_at = Some(now);
            self.inputs_since_scan = false;
        }
        let rescan = self
            .inputs_since_scan
            .then(|| self.scanned_at.map(|t| t + DEADLINE_RESCAN))
            .flatten();
        [self.earliest, rescan].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn few_peers_are_scanned_every_time() {
        let t0 = Instant::now();
        let mut cache = DeadlineCache::default();
        let scans = Cell::new(0);
        for i in 0..10u64 {
            let due = t0 + Duration::from_secs(i);
            let got = cache.earliest(t0, EXACT_DEADLINE_PEERS, || {
                scans.set(scans.get() + 1);
                Some(due)
            });
            assert_eq!(got, Some(due));
        }
        assert_eq!(scans.get(), 10);
    }

    #[test]
    fn many_peers_are_scanned_at_most_every_rescan_interval() {
        let t0 = Instant::now();
        let many = EXACT_DEADLINE_PEERS + 1;
        let mut cache = DeadlineCache::default();
        let scans = Cell::new(0);
        let ask = |cache: &mut DeadlineCache, at: Instant, due: Instant| {
            cache.earliest(at, many, || {
                scans.set(scans.get() + 1);
                Some(due)
            })
        };
        let far = t0 + Duration::from_secs(10);
        assert_eq!(ask(&mut cache, t0, far), Some(far));
        // No input since the scan: the cached deadline stands, no rescan.
        assert_eq!(
            ask(&mut cache, t0 + Duration::from_millis(10), t0),
            Some(far)
        );
        assert_eq!(scans.get(), 1);
        // An input may have armed an earlier timer: wake up at the next rescan at the latest.
        cache.touch();
        assert_eq!(
            ask(&mut cache, t0 + Duration::from_millis(20), t0),
            Some(t0 + DEADLINE_RESCAN)
        );
        assert_eq!(scans.get(), 1, "inputs never cause a scan by themselves");
        // At the rescan the truth is seen.
        let soon = t0 + Duration::from_millis(60);
        assert_eq!(ask(&mut cache, t0 + DEADLINE_RESCAN, soon), Some(soon));
        assert_eq!(scans.get(), 2);
    }

    #[test]
    fn fired_timers_force_a_rescan() {
        let t0 = Instant::now();
        let many = EXACT_DEADLINE_PEERS + 1;
        let mut cache = DeadlineCache::default();
        assert_eq!(cache.earliest(t0, many, || Some(t0)), Some(t0));
        cache.fired();
        let next = t0 + Duration::from_secs(2);
        assert_eq!(cache.earliest(t0, many, || Some(next)), Some(next));
        assert_eq!(
            cache.earliest(t0, many, || None),
            Some(next),
            "cached again"
        );
    }
}
