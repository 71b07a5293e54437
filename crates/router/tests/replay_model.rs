//! `ReplayWindow` against a set-based model under random counter sequences
//! mixing small steps, duplicates, reordering, window-edge probes, jumps of
//! about a ring's size and more, and counters near `REJECT_AFTER_MESSAGES`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashSet;

use proptest::prelude::*;
use wg_router::replay::{REJECT_AFTER_MESSAGES, ReplayWindow, WINDOW_SIZE};

/// The rule, stated directly: a counter is accepted iff it is below the limit,
/// was never accepted, and is no more than `WINDOW_SIZE` below the greatest
/// counter accepted so far.
#[derive(Default)]
struct Model {
    accepted: HashSet<u64>,
    greatest: Option<u64>,
}

impl Model {
    fn would_accept(&self, counter: u64) -> bool {
        counter < REJECT_AFTER_MESSAGES
            && !self.accepted.contains(&counter)
            && self.greatest.is_none_or(|greatest| {
                u128::from(counter) + u128::from(WINDOW_SIZE) >= u128::from(greatest)
            })
    }

    fn check_and_update(&mut self, counter: u64) -> bool {
        let accept = self.would_accept(counter);
        if accept {
            self.accepted.insert(counter);
            self.greatest = self.greatest.max(Some(counter));
        }
        accept
    }
}

/// A counter chosen relative to the state when the step runs.
#[derive(Clone, Debug)]
enum Step {
    /// greatest + n
    Ahead(u64),
    /// greatest - n (saturating)
    Behind(u64),
    /// The i-th counter accepted so far (modulo their number): a replay.
    Replay(usize),
    /// A fixed counter.
    Absolute(u64),
}

fn window_edges() -> impl Strategy<Value = u64> {
    prop_oneof![
        (WINDOW_SIZE - 2..=WINDOW_SIZE + 2),
        (8190u64..=8194),
        (60u64..=68),
        (8250u64..=8260),
    ]
}

fn any_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (1u64..=3).prop_map(Step::Ahead),
        8 => (0u64..200).prop_map(Step::Behind),
        3 => window_edges().prop_map(Step::Behind),
        5 => (0usize..1000).prop_map(Step::Replay),
        3 => window_edges().prop_map(Step::Ahead),
        1 => prop_oneof![
            Just(16_384u64),
            Just(8192 * 3 + 17),
            Just(1 << 20),
            any::<u32>().prop_map(u64::from),
        ]
        .prop_map(Step::Ahead),
        1 => prop_oneof![
            (0u64..4).prop_map(|below| REJECT_AFTER_MESSAGES - below),
            Just(REJECT_AFTER_MESSAGES + 1),
            Just(u64::MAX),
            Just(0u64),
        ]
        .prop_map(Step::Absolute),
    ]
}

fn start_counter() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        (0u64..10_000),
        any::<u64>().prop_map(|counter| counter % REJECT_AFTER_MESSAGES),
        (0u64..20_000).prop_map(|below| REJECT_AFTER_MESSAGES - 1 - below),
    ]
}

/// Offsets below the greatest counter that sit on block and window edges.
const PROBES_BELOW: [u64; 11] = [
    0,
    1,
    63,
    64,
    65,
    WINDOW_SIZE - 64,
    WINDOW_SIZE - 1,
    WINDOW_SIZE,
    WINDOW_SIZE + 1,
    8191,
    8192,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matches_the_set_model(
        start in start_counter(),
        steps in proptest::collection::vec(any_step(), 1..300),
    ) {
        let mut window = ReplayWindow::new();
        let mut model = Model::default();
        let mut history: Vec<u64> = Vec::new();
        for step in &steps {
            let greatest = model.greatest.unwrap_or(start);
            let counter = match *step {
                Step::Ahead(n) => greatest.saturating_add(n),
                Step::Behind(n) => greatest.saturating_sub(n),
                Step::Replay(i) if !history.is_empty() => history[i % history.len()],
                Step::Replay(_) => greatest,
                Step::Absolute(counter) => counter,
            };

            let expected = model.would_accept(counter);
            prop_assert_eq!(window.would_accept(counter), expected, "would_accept({})", counter);
            prop_assert_eq!(window.check_and_update(counter), model.check_and_update(counter), "check_and_update({})", counter);
            if expected {
                history.push(counter);
            }

            let greatest = model.greatest.unwrap_or(0);
            for below in PROBES_BELOW {
                let probe = greatest.saturating_sub(below);
                prop_assert_eq!(window.would_accept(probe), model.would_accept(probe), "probe {} after {}", probe, counter);
            }
        }

        // Finally every counter around the window, to catch stale bits
        // anywhere in the ring.
        let greatest = model.greatest.unwrap_or(0);
        for probe in greatest.saturating_sub(8300)..=greatest.saturating_add(100) {
            prop_assert_eq!(window.would_accept(probe), model.would_accept(probe), "final probe {}", probe);
        }
    }
}

/// Long runs of in-order counters with random reordering and big gaps,
/// checked exhaustively against the model at the end.
#[test]
fn long_reordered_stream_matches_the_model() {
    let mut window = ReplayWindow::new();
    let mut model = Model::default();
    let mut counter = 0u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200_000 {
        // xorshift: deterministic, no dependency on a seed source.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let candidate = match state % 100 {
            0 => counter + 8192 + state % 300,
            1..=30 => counter.saturating_sub(state % 9000),
            _ => counter + 1,
        };
        counter = counter.max(candidate);
        assert_eq!(
            window.check_and_update(candidate),
            model.check_and_update(candidate),
            "{candidate}"
        );
    }
    let greatest = model.greatest.unwrap();
    for probe in greatest - 9000..=greatest + 10 {
        assert_eq!(
            window.would_accept(probe),
            model.would_accept(probe),
            "{probe}"
        );
    }
}
