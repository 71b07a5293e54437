//! A peer that changes address mid-transfer (whitepaper section 2.1, "built-in roaming"):
//! its first authenticated packet from the new address moves the other side's endpoint, with
//! no new handshake and nothing lost that was sent after it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::SocketAddr;

use common::*;
use wg_sim::{EventKind, Side, Sim, SimConfig};

#[test]
fn a_peer_that_roams_mid_transfer_is_followed_without_a_handshake() {
    let mut sim = Sim::new(SimConfig::default());
    // A talks to B every 50 ms, B to A every 50 ms (offset), for 20 s.
    sim.schedule_traffic(Side::A, ms(50), secs(20));
    sim.schedule_traffic_from(Side::B, ms(25), ms(50), secs(20));
    sim.run_until(secs(10));
    let handshakes_before = handshakes(&sim).len();
    let old: SocketAddr = sim.endpoint(Side::A);
    let b_peer = sim.node(Side::B).peer_id();
    assert_eq!(
        sim.node(Side::B).router().stats(b_peer).unwrap().endpoint,
        Some(old)
    );

    // A moves to another address (a phone switching from Wi-Fi to mobile data).
    let new: SocketAddr = "203.0.113.7:40001".parse().unwrap();
    sim.node_mut(Side::A).set_endpoint(new);
    sim.run_until(secs(21));

    // B follows: its endpoint for A is the new address.
    assert_eq!(
        sim.node(Side::B).router().stats(b_peer).unwrap().endpoint,
        Some(new)
    );
    // Without a handshake: the move alone does not make one (a rekey may fall due in the
    // 11 s, but at most one).
    assert!(handshakes(&sim).len() <= handshakes_before + 1);
    // Everything A sent arrived (its packets carry the new source from the move on).
    assert_all_delivered_once(&sim, Side::A);
    // What B sent toward the old address while A's first packet from the new one was on
    // its way is lost (one-way latency 10 ms, A sends every 50 ms: at most two), and
    // everything B sent after that arrived.
    let lost_to_old = sim.undeliverable();
    assert!(
        (1..=2).contains(&lost_to_old),
        "{lost_to_old} datagrams went to A's old address"
    );
    let from_b = sim.sent_by(Side::B);
    let a = sim.node(Side::A);
    let missing: Vec<u64> = from_b
        .iter()
        .copied()
        .filter(|id| a.delivered_count(*id) == 0)
        .collect();
    assert_eq!(missing.len() as u64, lost_to_old, "{missing:?}");
    let sent_late = sent_between(&sim, Side::B, secs(10) + ms(100), secs(20));
    assert!(sent_late.iter().all(|id| a.delivered_count(*id) == 1));
    assert_eq!(
        a.count(|e| matches!(e, EventKind::Rejected(_))),
        0,
        "{:?}",
        a.events()
    );
}
