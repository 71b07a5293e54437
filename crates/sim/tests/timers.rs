//! The whitepaper's section 6 timers as seen from outside: key expiry and erasure, handshake
//! retries and abandonment, persistent keepalives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::num::NonZeroU16;
use std::time::Instant;

use common::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use wg_router::DropReason;
use wg_sim::{Capture, EventKind, LinkConditions, Receipt, Rejection, Side, Sim, SimConfig};
use wg_timers::{
    MAX_TIMER_HANDSHAKES, PeerTimers, REJECT_AFTER_TIME, REKEY_AFTER_TIME, REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX, TimerAction,
};

#[test]
fn silent_peer_keys_expire_at_180_s_and_are_zeroed_at_540_s() {
    let mut sim = Sim::new(SimConfig::default());
    let b = sim.endpoint(Side::B);
    sim.network_mut().capture(Some(Capture::Copy), Some(b));
    let id = sim.send(Side::A);
    sim.run_for(secs(1));
    sim.network_mut().capture(None, None);
    assert_eq!(sim.node(Side::B).delivered_count(id), 1);
    let data = sim
        .network_mut()
        .take_captured()
        .into_iter()
        .find(|d| d.bytes.first() == Some(&4))
        .unwrap();
    let derived = |side: Side| {
        sim.node(side)
            .times(|e| matches!(e, EventKind::SessionInstalled { .. }))
    };
    let (derived_a, derived_b) = (derived(Side::A), derived(Side::B));
    assert_eq!((derived_a.len(), derived_b.len()), (1, 1));
    let born = derived_a[0].min(derived_b[0]);
    let dies = derived_a[0].max(derived_b[0]) + REJECT_AFTER_TIME;

    // Both go silent. Just before Reject-After-Time the keypair still works (the captured
    // packet is refused only as a replay); just after, it is refused as expired.
    sim.run_until(born + REJECT_AFTER_TIME - ms(100));
    let now = sim.now();
    assert!(sim.node(Side::A).can_send(now) && sim.node(Side::B).can_send(now));
    assert_eq!(
        sim.inject(Side::B, &data),
        Receipt::Rejected(Rejection::Transport(DropReason::Replay))
    );
    sim.run_until(dies + ms(1));
    let now = sim.now();
    assert!(!sim.node(Side::A).can_send(now) && !sim.node(Side::B).can_send(now));
    assert_eq!(
        sim.inject(Side::B, &data),
        Receipt::Rejected(Rejection::Transport(DropReason::Expired))
    );

    // Give A a handshake in progress when the erasure comes: B is unreachable, A wants to
    // send; A retries, gives up, and is left with its last initiation's state.
    sim.set_link_toward(Side::B, LinkConditions::BLACK_HOLE);
    sim.send_at(Side::A, secs(400));
    let zero_a = derived_a[0] + REJECT_AFTER_TIME * 3;
    let zero_b = derived_b[0] + REJECT_AFTER_TIME * 3;
    sim.run_until(zero_a.min(zero_b) - ms(1));
    let now = sim.now();
    for side in [Side::A, Side::B] {
        let node = sim.node(side);
        assert!(
            node.router()
                .current_keypair_age(node.peer_id(), now)
                .is_some(),
            "{side:?} erased its keys before 3 x Reject-After-Time"
        );
        assert_eq!(node.count(|e| matches!(e, EventKind::KeysZeroed)), 0);
    }
    assert!(
        sim.node(Side::A)
            .handshake()
            .pending_local_index()
            .is_some()
    );
    assert_eq!(
        sim.node(Side::A)
            .count(|e| matches!(e, EventKind::GaveUp { .. })),
        1
    );

    sim.run_until(zero_a.max(zero_b) + ms(1));
    let now = sim.now();
    for (side, zero) in [(Side::A, zero_a), (Side::B, zero_b)] {
        let node = sim.node(side);
        assert_eq!(
            node.times(|e| matches!(e, EventKind::KeysZeroed)),
            vec![zero],
            "{side:?}"
        );
        assert!(
            node.router()
                .current_keypair_age(node.peer_id(), now)
                .is_none()
        );
        assert_eq!(node.handshake().pending_local_index(), None);
        assert_eq!(
            node.live_indices(),
            0,
            "{side:?} still holds receiver indices"
        );
    }
    // The keypair's index is gone from B's router altogether.
    assert_eq!(
        sim.inject(Side::B, &data),
        Receipt::Rejected(Rejection::Transport(DropReason::UnknownIndex))
    );
}

#[test]
fn lost_handshake_is_retried_every_5_s_and_abandoned_after_90_s() {
    let mut sim = Sim::new(SimConfig::default());
    sim.set_link_toward(Side::B, LinkConditions::BLACK_HOLE);
    sim.send(Side::A);
    sim.run_until(secs(60));
    let a = sim.node(Side::A);
    assert_eq!(a.router().staged_len(a.peer_id()), 1);

    sim.run_until(secs(200));
    let a = sim.node(Side::A);
    let sent = a.times(is_initiation);
    let gave_up = a.times(|e| matches!(e, EventKind::GaveUp { staged_dropped: 1 }));
    assert_eq!(gave_up.len(), 1, "{:?}", a.events());
    let gave_up = gave_up[0];

    for (i, gap) in gaps(&sent).into_iter().enumerate() {
        assert!(
            gap >= REKEY_TIMEOUT && gap <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX,
            "retry {} came {gap:?} after the previous initiation",
            i + 1
        );
    }
    let (first, last) = (sent[0], *sent.last().unwrap());
    assert!(
        last - first >= secs(90) - REKEY_TIMEOUT,
        "gave up early: {sent:?}"
    );
    let longest = (REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX) * (MAX_TIMER_HANDSHAKES + 1);
    assert!(last - first <= longest, "kept trying too long: {sent:?}");
    assert!(last < gave_up && gave_up - last <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    assert_eq!(a.router().staged_len(a.peer_id()), 0);
    assert_eq!(sim.node(Side::B).events(), &[]);

    // New data starts a fresh attempt.
    sim.send(Side::A);
    sim.run_for(ms(1));
    assert_eq!(sim.node(Side::A).times(is_initiation).len(), sent.len() + 1);
}

#[test]
fn lost_handshake_is_tried_20_times_as_in_wireguard_go_and_linux() {
    let mut sim = Sim::new(SimConfig::default());
    sim.set_link_toward(Side::B, LinkConditions::BLACK_HOLE);
    sim.send(Side::A);
    sim.run_until(secs(200));
    // wireguard-go: "Handshake did not complete after %d attempts, giving up" with
    // MaxTimerHandshakes + 2; wg-timers documents the same (MAX_TIMER_HANDSHAKES + 1
    // retransmissions after the first initiation).
    let sent = sim.node(Side::A).times(is_initiation);
    assert_eq!(sent.len() as u32, MAX_TIMER_HANDSHAKES + 2, "{sent:?}");
}

/// The same rule on `PeerTimers` alone, driven as datad drives it.
#[test]
fn retransmissions_number_max_timer_handshakes_plus_one() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(1);
    let mut timers = PeerTimers::new(None);
    assert!(timers.want_handshake(t0));
    timers.handshake_initiated(t0, &mut rng);
    let mut retries = 0;
    loop {
        let at = timers.next_deadline().unwrap();
        match timers.poll(at) {
            Some(TimerAction::SendInitiation { retry: true }) => {
                retries += 1;
                timers.handshake_initiated(at, &mut rng);
            }
            Some(TimerAction::GiveUp) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(retries, MAX_TIMER_HANDSHAKES + 1);
}

/// A peer with a 25 s persistent keepalive that sends one packet at time 0.
fn persistent_setup() -> Sim {
    let mut sim = Sim::new(SimConfig {
        persistent_keepalive_a: NonZeroU16::new(25),
        ..SimConfig::default()
    });
    sim.send(Side::A);
    sim
}

#[test]
fn persistent_keepalive_fires_at_its_interval_until_rekey_time() {
    let mut sim = persistent_setup();
    sim.run_until(REKEY_AFTER_TIME + secs(10));
    let a = sim.node(Side::A);
    let sent = a.times(is_keepalive_sent);
    // After the handshake, B's keepalive answering A's data arrives at about 10 s; from
    // then on A sends one every 25 s, exactly: at about 35, 60, 85 and 110 s.
    assert_eq!(sent.len(), 4, "{sent:?}");
    let heard = a.times(|e| matches!(e, EventKind::KeepaliveReceived));
    assert_eq!(heard.len(), 1);
    assert_eq!(sent[0] - heard[0], secs(25));
    for gap in gaps(&sent) {
        assert_eq!(gap, secs(25));
    }
    // A's keepalives need no answer: B sends nothing back but its one keepalive.
    assert_eq!(sim.node(Side::B).count(is_keepalive_sent), 1);
}

#[test]
fn persistent_keepalive_fires_at_its_interval() {
    let mut sim = persistent_setup();
    sim.run_until(secs(600));
    let a = sim.node(Side::A);
    let sent = a.times(is_keepalive_sent);
    // wireguard-go and Linux: a keepalive is a packet like any other; past
    // Rekey-After-Time on the initiator's keypair it starts a handshake, and without a
    // usable keypair it waits for one. So the tunnel stays up on keepalives alone.
    assert!(
        *sent.last().unwrap() >= secs(575),
        "last keepalive at {:?}",
        sent.last()
    );
    for gap in gaps(&sent) {
        assert!(
            gap <= secs(25) + ms(100),
            "{gap:?} without a keepalive: {sent:?}"
        );
    }
    let made = handshakes(&sim);
    assert!(made.len() >= 4, "{made:?}");
    for gap in gaps(&made) {
        assert!(gap < REKEY_AFTER_TIME + secs(30), "{made:?}");
    }
}
