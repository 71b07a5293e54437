//! Random network conditions and traffic: whatever the network does, a payload is
//! delivered at most once, only if it was sent, and nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::num::NonZeroU16;
use std::time::Duration;

use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use wg_sim::{LinkConditions, Side, Sim, SimConfig};

/// Network conditions from loss 0-50 %, duplication 0-30 %, up to 100 ms of jitter and
/// up to 400 ms of reordering delay.
fn link() -> impl Strategy<Value = LinkConditions> {
    (
        1u64..100,
        0u64..100,
        0.0f64..0.5,
        0.0f64..0.3,
        0.0f64..0.5,
        0u64..400,
    )
        .prop_map(
            |(latency, jitter, loss, duplicate, reorder, reorder_delay)| LinkConditions {
                latency: ms(latency),
                jitter: ms(jitter),
                loss,
                duplicate,
                reorder,
                reorder_delay: ms(reorder_delay),
            },
        )
}

/// A traffic pattern: gaps in milliseconds between bursts of 1-3 packets.
fn traffic() -> impl Strategy<Value = Vec<(u64, usize)>> {
    vec((1u64..4_000, 1usize..4), 0..150)
}

const RUN: Duration = Duration::from_secs(300);

fn schedule(sim: &mut Sim, from: Side, pattern: &[(u64, usize)]) {
    let mut at = Duration::ZERO;
    for &(gap, burst) in pattern {
        at += ms(gap);
        if at >= RUN {
            break;
        }
        for _ in 0..burst {
            sim.send_at(from, at);
        }
    }
}

#[test]
fn a_run_is_reproducible_from_its_seed() {
    let run = |seed| {
        let link = LinkConditions {
            jitter: ms(30),
            loss: 0.2,
            duplicate: 0.1,
            reorder: 0.2,
            reorder_delay: ms(100),
            ..LinkConditions::CLEAN
        };
        let mut sim = Sim::new(SimConfig {
            seed,
            link,
            ..SimConfig::default()
        });
        sim.schedule_traffic(Side::A, ms(300), secs(200));
        sim.schedule_traffic_from(Side::B, ms(100), ms(700), secs(200));
        sim.run_until(secs(210));
        let events = |side| sim.node(side).events().to_vec();
        (events(Side::A), events(Side::B), sim.network().stats())
    };
    let first = run(11);
    assert!(first.0.len() > 500 && first.2.lost > 100, "{:?}", first.2);
    assert_eq!(first, run(11));
    assert_ne!(first, run(12));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn payloads_are_delivered_at_most_once_and_only_if_sent(
        seed in any::<u64>(),
        link in link(),
        traffic_a in traffic(),
        traffic_b in traffic(),
        keepalive in prop_oneof![Just(0u16), 1u16..60],
        b_knows_a in any::<bool>(),
        psk in any::<bool>(),
    ) {
        let mut sim = Sim::new(SimConfig {
            seed,
            link,
            persistent_keepalive_a: NonZeroU16::new(keepalive),
            persistent_keepalive_b: None,
            b_knows_a,
            psk,
        });
        schedule(&mut sim, Side::A, &traffic_a);
        schedule(&mut sim, Side::B, &traffic_b);
        sim.run_until(RUN + secs(30));

        for side in [Side::A, Side::B] {
            let receiver = sim.node(side);
            for (&id, &times) in receiver.delivered() {
                prop_assert_eq!(times, 1, "payload {} delivered {} times to {:?}", id, times, side);
                prop_assert_eq!(
                    sim.sent_payloads().get(&id).copied(),
                    Some(side.other()),
                    "payload {} delivered to {:?} was not sent by its peer", id, side
                );
            }
        }
        prop_assert_eq!(sim.undeliverable(), 0);
    }
}
