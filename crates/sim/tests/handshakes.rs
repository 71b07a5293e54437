//! Handshakes that cross: both peers initiate at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::Ipv4Addr;

use common::*;
use wg_handshake::HandshakeError;
use wg_router::DropReason;
use wg_sim::{EventKind, Rejection, SendOutcome, Side, Sim, SimConfig, inner_packet};
use wg_timers::{REJECT_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX};

/// Both peers send their first packet at the same instant, so their initiations cross.
fn crossing() -> Sim {
    let mut sim = Sim::new(SimConfig::default());
    sim.send(Side::A);
    sim.send(Side::B);
    sim
}

#[test]
fn crossing_initiations_cost_one_retransmission_and_nothing_else() {
    let mut sim = crossing();
    sim.run_for(secs(30));
    // Each side's answer to the other's initiation erased its own pending initiation, so
    // both responses are refused; the first retransmission then completes a handshake.
    for side in [Side::A, Side::B] {
        let node = sim.node(side);
        let rejected: Vec<EventKind> = node
            .events()
            .iter()
            .map(|e| e.kind)
            .filter(|k| matches!(k, EventKind::Rejected(_)))
            .collect();
        assert!(
            matches!(
                rejected[..],
                [EventKind::Rejected(
                    Rejection::Handshake(HandshakeError::UnexpectedMessage)
                        | Rejection::UnknownIndex
                )]
            ),
            "{side:?}: {rejected:?}"
        );
        assert_all_delivered_once(&sim, side);
    }
    let made = handshakes(&sim);
    assert_eq!(made.len(), 1, "{made:?}");
    assert!(made[0] <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + ms(50));
}

#[test]
fn receiver_indices_are_all_freed_when_keys_are_zeroed_after_crossing_handshakes() {
    let mut sim = crossing();
    sim.run_until(REJECT_AFTER_TIME * 3 + secs(30));
    for side in [Side::A, Side::B] {
        let node = sim.node(side);
        assert_eq!(node.count(|e| matches!(e, EventKind::KeysZeroed)), 1);
        assert_eq!(node.handshake().pending_local_index(), None);
        assert_eq!(node.live_indices(), 0, "{side:?} leaked receiver indices");
    }
}

#[test]
fn staged_packets_leave_when_the_confirming_packet_has_a_disallowed_source() {
    let mut sim = Sim::new(SimConfig::default());
    // A forwards a packet from a host B does not route to A: staged, and A initiates.
    let foreign = inner_packet(Ipv4Addr::new(10, 9, 9, 9), Side::B.inner(), 1_000_000);
    assert_eq!(sim.send_raw(Side::A, &foreign), SendOutcome::Staged);
    // B wants to answer after it has responded but before A's first packet confirms the
    // session: staged too.
    sim.send_at(Side::B, ms(15));
    sim.run_for(secs(2));

    let b = sim.node(Side::B);
    assert_eq!(
        b.count(|e| matches!(
            e,
            EventKind::Rejected(Rejection::Transport(DropReason::SourceNotAllowed))
        )),
        1
    );
    assert_eq!(b.count(|e| matches!(e, EventKind::DataStaged { .. })), 1);
    // The session is confirmed all the same (the router says so), so B's staged packet
    // should have gone out with it, as wireguard-go sends staged packets on confirmation.
    assert!(b.can_send(sim.now()));
    assert_eq!(b.router().staged_len(b.peer_id()), 0, "B's packet is stuck");
    assert_eq!(sim.node(Side::A).delivered().len(), 1);
}
