//! One interface with a hundred peers over hours of virtual time: what a VPN server sees.
//! The hub's device core has more peers than it tracks exactly (its earliest deadline is
//! cached), every spoke rekeys every two minutes while traffic flows, and nothing may leak
//! or stall.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::num::NonZeroU16;

use common::*;
use wg_sim::{LinkConditions, Star, StarConfig};
use wg_timers::{REJECT_AFTER_TIME, REKEY_AFTER_TIME};

const SPOKES: u8 = 100;
const HOURS: u64 = 3;

#[test]
fn a_hundred_peers_for_hours_keep_every_session_fresh_and_leak_nothing() {
    let mut star = Star::new(StarConfig {
        seed: 7,
        spokes: SPOKES,
        link: LinkConditions::CLEAN,
        persistent_keepalive: NonZeroU16::new(25),
    });
    let end = secs(HOURS * 3600);
    // Every minute, each spoke sends one packet to the hub and the hub one back.
    star.schedule_traffic(secs(1), secs(60), end);
    star.run_until(end + secs(5));

    // Nothing lost on a clean path, nothing delivered twice.
    let (delivered, duplicated) = star.delivered();
    assert_eq!(delivered, star.sent(), "every packet arrives");
    assert_eq!(duplicated, 0);

    let hub = star.hub();
    let hub_counters = hub.counters();
    for (i, spoke) in star.spokes().iter().enumerate() {
        let c = spoke.counters();
        // Data flows both ways every minute: the spoke (the initiator, since it speaks
        // first) rekeys every REKEY_AFTER_TIME, give or take the traffic's minute.
        let expected = (HOURS * 3600 / REKEY_AFTER_TIME.as_secs()) as usize;
        assert!(
            c.handshakes_completed + 2 >= expected / 2 && c.handshakes_completed <= expected + 2,
            "spoke {i}: {} handshakes in {HOURS} h ({c:?})",
            c.handshakes_completed
        );
        assert_eq!(c.keys_zeroed, 0, "spoke {i}: a live session was erased");
        assert_eq!(
            c.give_ups, 0,
            "spoke {i} gave up a handshake on a clean path"
        );
        assert_eq!(
            c.rejected,
            0,
            "spoke {i}: {:?}",
            spoke
                .events()
                .iter()
                .find(|e| matches!(e.kind, wg_sim::EventKind::Rejected(_)))
        );
        // A spoke holds its current, previous and next sessions and one pending initiation
        // at most: nothing accumulates over hours.
        assert!(
            spoke.live_indices() <= 4,
            "spoke {i}: {} live indices",
            spoke.live_indices()
        );
        // The last handshake is recent.
        let age = spoke
            .router()
            .current_keypair_age(spoke.peer_id(), star.now())
            .expect("a session at the end");
        assert!(
            age < REKEY_AFTER_TIME + secs(60),
            "spoke {i}: keypair {age:?} old"
        );
    }
    assert_eq!(hub_counters.keys_zeroed, 0);
    assert_eq!(hub_counters.rejected, 0, "hub rejected something");
    assert!(
        hub.live_indices() <= 4 * usize::from(SPOKES),
        "hub: {} live indices for {SPOKES} peers",
        hub.live_indices()
    );
    // Every spoke's keypair at the hub is usable at the end.
    for spoke in star.spokes() {
        let peer = hub.peer_of(&spoke.public_key());
        let age = hub.router().current_keypair_age(peer, star.now()).unwrap();
        assert!(age < REJECT_AFTER_TIME);
    }
}
