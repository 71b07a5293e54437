//! Ephemeral keys made ahead of time (keyd's pool) on the virtual clock: they are used by
//! the very next handshake messages, wiped when they go stale, not replaced while nobody
//! needs them, and a burst of initiations drains them without any handshake failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::HashSet;
use std::num::NonZeroU16;

use common::*;
use wg_keyd::pool::{CAPACITY, MAX_AGE};
use wg_sim::{Capture, LinkConditions, Side, Sim, SimConfig, Star, StarConfig};

/// The ephemeral public key a handshake initiation (type 1: after the sender index) or
/// response (type 2: after both indices) carries.
fn ephemeral_of(datagram: &[u8], message_type: u8) -> Option<[u8; 32]> {
    let at = match (datagram.first(), message_type) {
        (Some(1), 1) => 8,
        (Some(2), 2) => 12,
        _ => return None,
    };
    datagram.get(at..at + 32)?.try_into().ok()
}

#[test]
fn a_handshake_uses_keys_made_ahead_and_the_pool_is_refilled_with_new_ones() {
    let mut sim = Sim::new(SimConfig::default());
    let ready_a = sim.node(Side::A).ready_keys();
    let ready_b = sim.node(Side::B).ready_keys();
    assert_eq!(
        ready_a.len(),
        CAPACITY,
        "keyd fills its pool once configured"
    );
    assert_eq!(ready_b.len(), CAPACITY);

    sim.network_mut().capture(Some(Capture::Copy), None);
    let id = sim.send(Side::A);
    sim.run_for(secs(1));
    assert_eq!(sim.node(Side::B).delivered_count(id), 1);

    let captured = sim.network_mut().take_captured();
    let initiation: Vec<[u8; 32]> = captured
        .iter()
        .filter_map(|d| ephemeral_of(&d.bytes, 1))
        .collect();
    let response: Vec<[u8; 32]> = captured
        .iter()
        .filter_map(|d| ephemeral_of(&d.bytes, 2))
        .collect();
    assert_eq!(initiation.len(), 1, "one initiation on a clean path");
    assert_eq!(response.len(), 1, "one response on a clean path");
    // The newest ready key is the one used (it is the freshest).
    assert_eq!(Some(&initiation[0]), ready_a.last(), "A made its key ahead");
    assert_eq!(Some(&response[0]), ready_b.last(), "B made its key ahead");

    // Used keys are gone for good; the pool is full again with new ones.
    for (side, used) in [(Side::A, initiation[0]), (Side::B, response[0])] {
        let now_ready = sim.node(side).ready_keys();
        assert_eq!(now_ready.len(), CAPACITY, "{side:?} refilled its pool");
        assert!(!now_ready.contains(&used), "{side:?} kept a used key");
    }
}

#[test]
fn ready_keys_go_stale_on_the_virtual_clock_and_an_idle_keyd_stops_making_them() {
    let mut sim = Sim::new(SimConfig::default());
    let first = sim.node(Side::A).ready_keys();
    assert_eq!(first.len(), CAPACITY);
    sim.run_for(MAX_AGE - ms(1));
    assert_eq!(sim.node(Side::A).ready_keys(), first, "fresh keys are kept");
    sim.run_for(ms(2));
    assert!(
        sim.node(Side::A).ready_keys().is_empty(),
        "keys older than MAX_AGE are wiped"
    );
    // Nobody used them: no new ones until a handshake needs one (an idle daemon sleeps).
    sim.run_for(secs(600));
    assert!(sim.node(Side::A).ready_keys().is_empty());
    assert!(sim.node(Side::B).ready_keys().is_empty());

    // Traffic after the long idle: the handshake makes its key on demand and works, and
    // the pool is wanted again.
    let id = sim.send(Side::A);
    sim.run_for(secs(1));
    assert_eq!(sim.node(Side::B).delivered_count(id), 1);
    let again = sim.node(Side::A).ready_keys();
    assert_eq!(again.len(), CAPACITY);
    assert!(
        again.iter().all(|k| !first.contains(k)),
        "no stale key came back"
    );
}

#[test]
fn a_burst_of_initiations_drains_the_pool_and_every_handshake_completes() {
    const SPOKES: u8 = 30;
    let mut star = Star::new(StarConfig {
        seed: 11,
        spokes: SPOKES,
        link: LinkConditions::CLEAN,
        persistent_keepalive: NonZeroU16::new(25),
    });
    let before: HashSet<[u8; 32]> = star.hub().ready_keys().into_iter().collect();
    assert_eq!(before.len(), CAPACITY);
    // Every spoke speaks at the same instant: the hub answers 30 initiations in a row,
    // more than its pool holds.
    star.schedule_traffic(secs(1), secs(60), secs(2));
    star.run_until(secs(5));

    let (delivered, duplicated) = star.delivered();
    assert_eq!(delivered, star.sent(), "every packet arrives");
    assert_eq!(duplicated, 0);
    for (i, spoke) in star.spokes().iter().enumerate() {
        let c = spoke.counters();
        assert_eq!(c.handshakes_completed, 1, "spoke {i}: {c:?}");
        assert_eq!(c.rejected, 0, "spoke {i}: {c:?}");
    }
    let after = star.hub().ready_keys();
    assert_eq!(
        after.len(),
        CAPACITY,
        "the hub refilled once the burst was over"
    );
    assert!(
        after.iter().all(|k| !before.contains(k)),
        "the burst used every key that was ready"
    );
}
