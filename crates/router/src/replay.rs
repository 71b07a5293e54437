//! The anti-replay window for transport data counters (whitepaper section 5.4.6).
//!
//! It owns the record of which counters a receiving keypair has accepted, so
//! that each counter is accepted at most once while packets reordered by the
//! network are still accepted. It follows the Linux kernel
//! (`COUNTER_BITS_TOTAL` = 8192) and wireguard-go's `replay.Filter`: a ring of
//! 128 blocks of 64 bits. The block holding the greatest counter seen is only
//! partly in use, so the window guaranteed below it is 127 whole blocks,
//! [`WINDOW_SIZE`] = 8128 counters. Moving forward clears whole blocks, which
//! costs at most 128 word writes however far the counter jumps.
//!
//! Exactly: with `greatest` the greatest counter accepted so far (0 before
//! any), a counter is accepted iff it is below [`REJECT_AFTER_MESSAGES`], was
//! not accepted before, and `counter + WINDOW_SIZE >= greatest`.

use std::fmt;

/// Counters at or above this are never accepted: the whitepaper's
/// Reject-After-Messages, 2^64 - 2^13 - 1.
pub use wg_wire::constants::REJECT_AFTER_MESSAGES;

/// How far below the greatest counter seen a counter is still accepted:
/// `greatest - WINDOW_SIZE` is the oldest acceptable counter.
pub const WINDOW_SIZE: u64 = (RING_BLOCKS as u64 - 1) * BLOCK_BITS;

/// log2 of the bits per block.
const BLOCK_BITS_LOG2: u32 = 6;
const BLOCK_BITS: u64 = 1 << BLOCK_BITS_LOG2;
/// A power of two, so that a block number reduces to a ring slot with a mask.
const RING_BLOCKS: usize = 128;
const RING_SLOT_MASK: u64 = RING_BLOCKS as u64 - 1;

/// Remembers which counters were accepted within the window below the
/// greatest counter seen. One per receiving keypair.
#[derive(Clone)]
pub struct ReplayWindow {
    /// The greatest counter accepted so far, 0 before any.
    greatest: u64,
    /// Bit `c % 64` of slot `(c / 64) % 128` is set iff counter `c` was accepted,
    /// for every `c` in the window.
    ring: [u64; RING_BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The 128 ring words are noise in a log line.
        f.debug_struct("ReplayWindow")
            .field("greatest", &self.greatest)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// Creates a window that has accepted nothing; counter 0 is acceptable.
    pub fn new() -> Self {
        Self {
            greatest: 0,
            ring: [0; RING_BLOCKS],
        }
    }

    /// Accepts each counter at most once; accepts out-of-order counters
    /// within [`WINDOW_SIZE`] of the greatest seen; rejects anything
    /// `>= REJECT_AFTER_MESSAGES`. Returns whether `counter` was accepted.
    ///
    /// Call only after the packet authenticated: an accepted counter moves
    /// the window, so a forged one would make the peer's real packets look old.
    pub fn check_and_update(&mut self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let block = counter >> BLOCK_BITS_LOG2;
        if counter > self.greatest {
            // Clear the blocks entered since the greatest counter's block: they
            // hold bits from a previous lap of the ring. A jump of a whole ring
            // or more clears all of it, the greatest's own block included.
            let current_block = self.greatest >> BLOCK_BITS_LOG2;
            let blocks_entered = (block - current_block).min(RING_BLOCKS as u64);
            for step in 1..=blocks_entered {
                self.ring[Self::slot(current_block + step)] = 0;
            }
            self.greatest = counter;
        } else if self.greatest - counter > WINDOW_SIZE {
            return false;
        }
        let word = &mut self.ring[Self::slot(block)];
        let bit = 1u64 << (counter & (BLOCK_BITS - 1));
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }

    /// Returns whether [`check_and_update`](Self::check_and_update) would
    /// accept `counter` now, without changing anything, so a caller can skip
    /// decrypting obvious replays.
    pub fn would_accept(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if counter > self.greatest {
            // Ahead of the window: its block is cleared on the way in.
            return true;
        }
        if self.greatest - counter > WINDOW_SIZE {
            return false;
        }
        let bit = 1u64 << (counter & (BLOCK_BITS - 1));
        self.ring[Self::slot(counter >> BLOCK_BITS_LOG2)] & bit == 0
    }

    /// The ring slot of a block number; the mask keeps it in bounds.
    fn slot(block: u64) -> usize {
        (block & RING_SLOT_MASK) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `counters` in order and returns which were accepted.
    fn feed(window: &mut ReplayWindow, counters: &[u64]) -> Vec<bool> {
        counters
            .iter()
            .map(|&counter| {
                let predicted = window.would_accept(counter);
                let accepted = window.check_and_update(counter);
                assert_eq!(predicted, accepted, "would_accept disagrees at {counter}");
                accepted
            })
            .collect()
    }

    #[test]
    fn window_size_matches_the_kernel() {
        assert_eq!(WINDOW_SIZE, 8192 - 64);
        assert_eq!(
            u128::from(REJECT_AFTER_MESSAGES),
            (1u128 << 64) - (1 << 13) - 1
        );
    }

    #[test]
    fn first_counter_zero_is_accepted_once() {
        let mut window = ReplayWindow::new();
        assert!(window.would_accept(0));
        assert_eq!(feed(&mut window, &[0, 0]), [true, false]);
    }

    #[test]
    fn duplicates_are_rejected() {
        let mut window = ReplayWindow::default();
        assert_eq!(
            feed(&mut window, &[1, 2, 3, 2, 3, 1, 4, 4]),
            [true, true, true, false, false, false, true, false]
        );
    }

    #[test]
    fn reordering_within_the_window_is_accepted_once() {
        let mut window = ReplayWindow::new();
        assert_eq!(
            feed(&mut window, &[5, 0, 3, 1, 2, 4, 0, 5, 100, 6, 99, 6]),
            [
                true, true, true, true, true, true, false, false, true, true, true, false
            ]
        );
    }

    #[test]
    fn window_edge() {
        let greatest = 20_000;
        let mut window = ReplayWindow::new();
        assert!(window.check_and_update(greatest));
        // Just outside, then exactly at the edge, then inside.
        assert_eq!(
            feed(
                &mut window,
                &[
                    greatest - WINDOW_SIZE - 1,
                    greatest - WINDOW_SIZE,
                    greatest - WINDOW_SIZE,
                    greatest - WINDOW_SIZE + 1,
                    greatest - 1,
                ]
            ),
            [false, true, false, true, true]
        );
        // Advancing by one moves the edge by one.
        assert!(window.check_and_update(greatest + 1));
        assert!(!window.would_accept(greatest - WINDOW_SIZE));
        assert!(window.would_accept(greatest + 1 - WINDOW_SIZE + 1));
    }

    #[test]
    fn window_edge_near_zero() {
        let mut window = ReplayWindow::new();
        assert!(window.check_and_update(WINDOW_SIZE));
        assert_eq!(feed(&mut window, &[0, 0, 1]), [true, false, true]);
        assert!(window.check_and_update(WINDOW_SIZE + 1));
        assert_eq!(feed(&mut window, &[1, 2]), [false, true]);
    }

    #[test]
    fn every_counter_in_a_full_window_is_accepted_once() {
        for greatest in [WINDOW_SIZE, WINDOW_SIZE + 1, 50_000, 50_047, 50_048, 50_111] {
            let mut window = ReplayWindow::new();
            assert!(window.check_and_update(greatest));
            for counter in (greatest - WINDOW_SIZE..greatest).rev() {
                assert!(window.check_and_update(counter), "{greatest} {counter}");
            }
            for counter in greatest - WINDOW_SIZE..=greatest {
                assert!(!window.would_accept(counter), "{greatest} {counter}");
            }
            if let Some(outside) = (greatest - WINDOW_SIZE).checked_sub(1) {
                assert!(!window.would_accept(outside));
            }
        }
    }

    #[test]
    fn jumps_clear_stale_bits() {
        // Jumps of fewer blocks than the ring, exactly the ring, and more: every
        // counter of the new window that shares a ring slot with a counter
        // seen before the jump must still be acceptable.
        for jump in [
            1,
            63,
            64,
            65,
            8127,
            8128,
            8129,
            8191,
            8192,
            8193,
            8256,
            16_384,
            1 << 40,
        ] {
            for start in [0u64, 63, 64, 8191, 100_000] {
                let mut window = ReplayWindow::new();
                for counter in start.saturating_sub(WINDOW_SIZE)..=start {
                    window.check_and_update(counter);
                }
                let greatest = start + jump;
                assert!(window.check_and_update(greatest), "{start} + {jump}");
                for counter in greatest.saturating_sub(WINDOW_SIZE)..greatest {
                    let seen_before = counter <= start;
                    assert_eq!(
                        window.check_and_update(counter),
                        !seen_before,
                        "start {start} jump {jump} counter {counter}"
                    );
                }
            }
        }
    }

    #[test]
    fn counters_past_the_limit_are_rejected() {
        let mut window = ReplayWindow::new();
        assert!(!window.would_accept(REJECT_AFTER_MESSAGES));
        assert!(!window.check_and_update(REJECT_AFTER_MESSAGES));
        assert!(!window.check_and_update(u64::MAX));
        // Rejection changed nothing.
        assert!(window.check_and_update(0));
        assert!(window.check_and_update(REJECT_AFTER_MESSAGES - 1));
        assert!(!window.check_and_update(REJECT_AFTER_MESSAGES - 1));
        assert!(!window.check_and_update(REJECT_AFTER_MESSAGES));
        assert!(window.check_and_update(REJECT_AFTER_MESSAGES - 1 - WINDOW_SIZE));
        assert!(!window.check_and_update(REJECT_AFTER_MESSAGES - 2 - WINDOW_SIZE));
        assert!(!window.check_and_update(0));
    }
}
