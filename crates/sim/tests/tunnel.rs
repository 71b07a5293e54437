//! Data flow through the simulated tunnel: delivery, session rotation, reordering,
//! duplication, replay and loss.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use wg_router::DropReason;
use wg_router::replay::WINDOW_SIZE;
use wg_sim::{Capture, EventKind, LinkConditions, Receipt, Rejection, Side, Sim, SimConfig};
use wg_timers::{REJECT_AFTER_TIME, REKEY_AFTER_TIME};
use wg_wire::Transport;

#[test]
fn traffic_flows_both_ways() {
    let mut sim = Sim::new(SimConfig::default());
    sim.schedule_traffic(Side::A, ms(100), secs(30));
    // Offset so the peers' first packets do not start crossing handshakes.
    sim.schedule_traffic_from(Side::B, ms(50), ms(100), secs(30));
    sim.run_until(secs(40));

    for side in [Side::A, Side::B] {
        assert_eq!(sim.sent_by(side).len(), 300);
        assert_all_delivered_once(&sim, side);
        let rejected = sim
            .node(side)
            .count(|e| matches!(e, EventKind::Rejected(_)));
        assert_eq!(rejected, 0, "{side:?} dropped datagrams on a clean network");
    }
    // One handshake, made by A, carried all of it.
    let (a, b) = (sim.node(Side::A).counters(), sim.node(Side::B).counters());
    assert_eq!(
        (a.initiations_sent, a.handshakes_completed, a.sessions),
        (1, 1, 1)
    );
    assert_eq!(
        (b.responses_sent, b.handshakes_completed, b.sessions),
        (1, 0, 1)
    );
    assert_eq!(
        a.data_staged, 1,
        "only A's first packet waited for the handshake"
    );
    assert_eq!(b.data_staged, 0);
    assert_eq!((a.delivered, b.delivered), (300, 300));
}

#[test]
fn sessions_rotate_about_every_120_seconds() {
    let mut sim = Sim::new(SimConfig {
        seed: 2,
        ..SimConfig::default()
    });
    let hour = secs(3600);
    sim.schedule_traffic(Side::A, secs(1), hour);
    sim.schedule_traffic_from(Side::B, ms(500), secs(1), hour);
    sim.run_until(hour + secs(5));

    let made = handshakes(&sim);
    assert!(
        made.len() >= 29,
        "only {} handshakes in an hour",
        made.len()
    );
    for (i, gap) in gaps(&made).into_iter().enumerate() {
        assert!(
            gap >= REKEY_AFTER_TIME && gap <= REKEY_AFTER_TIME + secs(3),
            "session {i} lasted {gap:?} before the next one"
        );
    }
    for side in [Side::A, Side::B] {
        assert_all_delivered_once(&sim, side);
        let deliveries = sim.node(side.other()).times(is_delivery);
        let worst = gaps(&deliveries).into_iter().max().unwrap();
        assert!(
            worst <= secs(1) + ms(50),
            "{side:?}'s packets stalled for {worst:?}"
        );
        // Rotation never left a sender without a usable keypair: nothing waited for a
        // handshake after the first one.
        let staged = sim
            .node(side)
            .times(|e| matches!(e, EventKind::DataStaged { .. }));
        assert!(
            staged.iter().all(|&t| t < secs(1)),
            "{side:?} staged at {staged:?}"
        );
    }
}

#[test]
fn sessions_rotate_about_every_120_seconds_when_only_the_responder_sends() {
    let mut sim = Sim::new(SimConfig::default());
    sim.send(Side::A);
    sim.run_for(secs(1));
    let end = secs(900);
    sim.schedule_traffic(Side::B, secs(1), end);
    sim.run_until(end);
    // A answers B's data with a keepalive every 10 s; in wireguard-go and Linux, the first
    // one past Rekey-After-Time on A's keypair starts the next handshake.
    let made = handshakes(&sim);
    assert!(made.len() >= 7, "{made:?}");
    for gap in gaps(&made) {
        assert!(gap <= REKEY_AFTER_TIME + secs(11), "{made:?}");
    }
}

#[test]
fn reordered_and_duplicated_packets_are_accepted_exactly_once() {
    let link = LinkConditions {
        latency: ms(10),
        jitter: ms(5),
        duplicate: 0.3,
        reorder: 0.5,
        reorder_delay: ms(300),
        loss: 0.0,
    };
    let mut sim = Sim::new(SimConfig {
        seed: 3,
        link,
        ..SimConfig::default()
    });
    sim.schedule_traffic(Side::A, ms(4), secs(10));
    sim.schedule_traffic_from(Side::B, ms(1), ms(6), secs(10));
    sim.run_until(secs(12));

    for side in [Side::A, Side::B] {
        assert_all_delivered_once(&sim, side);
        let receiver = sim.node(side.other());
        // The premise holds: packets did arrive out of order and twice.
        let order: Vec<u64> = receiver
            .events()
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Delivered { payload_id } => payload_id,
                _ => None,
            })
            .collect();
        let overtaken = order.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(
            overtaken > 100,
            "only {overtaken} reorderings toward {side:?}"
        );
        let replays = receiver.count(|e| {
            matches!(
                e,
                EventKind::Rejected(Rejection::Transport(DropReason::Replay))
            )
        });
        assert!(replays > 100, "only {replays} duplicates rejected");
    }
}

/// The counter of a captured transport message.
fn counter(datagram: &wg_sim::Datagram) -> u64 {
    Transport::parse(&datagram.bytes).unwrap().counter
}

#[test]
fn a_packet_older_than_the_replay_window_is_rejected() {
    let mut sim = Sim::new(SimConfig::default());
    sim.send(Side::A);
    sim.run_for(secs(1));
    let b = sim.endpoint(Side::B);

    // Hold back two consecutive packets: they never reach B over the network.
    sim.network_mut().capture(Some(Capture::Divert), Some(b));
    let held_ids = [sim.send(Side::A), sim.send(Side::A)];
    sim.network_mut().capture(None, None);
    let held = sim.network_mut().take_captured();
    assert_eq!(held.len(), 2);
    let c = counter(&held[0]);
    assert_eq!(counter(&held[1]), c + 1);

    // WINDOW_SIZE newer packets after the second, all lost but the last: the greatest
    // counter B sees is c + 1 + WINDOW_SIZE, so the second held packet is at the window's
    // edge and the first just beyond it.
    let now = sim.now();
    assert_eq!(
        sim.node_mut(Side::A)
            .skip_send_counters(WINDOW_SIZE - 1, now),
        WINDOW_SIZE - 1
    );
    sim.network_mut().capture(Some(Capture::Copy), Some(b));
    let newest = sim.send(Side::A);
    sim.run_for(secs(1));
    sim.network_mut().capture(None, None);
    let newer = sim.network_mut().take_captured();
    assert_eq!(newer.len(), 1);
    assert_eq!(counter(&newer[0]), c + 1 + WINDOW_SIZE);
    assert_eq!(sim.node(Side::B).delivered_count(newest), 1);

    assert_eq!(
        sim.inject(Side::B, &held[1]),
        Receipt::Data {
            payload_id: Some(held_ids[1])
        },
        "WINDOW_SIZE behind the greatest counter is still inside the window"
    );
    assert_eq!(
        sim.inject(Side::B, &held[0]),
        Receipt::Rejected(Rejection::Transport(DropReason::Replay)),
        "WINDOW_SIZE + 1 behind is outside"
    );
    // And the late one that was accepted is not accepted twice.
    assert_eq!(
        sim.inject(Side::B, &held[1]),
        Receipt::Rejected(Rejection::Transport(DropReason::Replay))
    );
    let node_b = sim.node(Side::B);
    assert_eq!(node_b.delivered_count(held_ids[0]), 0);
    assert_eq!(node_b.delivered_count(held_ids[1]), 1);
}

#[test]
fn tunnel_recovers_under_loss() {
    let mut sim = Sim::new(SimConfig {
        seed: 7,
        link: LinkConditions::CLEAN.with_loss(0.3),
        ..SimConfig::default()
    });
    let lossy = secs(600);
    let end = secs(700);
    sim.schedule_traffic(Side::A, ms(500), end);
    sim.schedule_traffic_from(Side::B, ms(250), ms(500), end);
    sim.run_until(lossy);

    for side in [Side::A, Side::B] {
        let sent = sim.sent_by(side);
        let receiver = sim.node(side.other());
        let delivered = sent
            .iter()
            .filter(|&&id| receiver.delivered_count(id) == 1)
            .count();
        let ratio = delivered as f64 / sent.len() as f64;
        assert!(
            ratio > 0.6,
            "{side:?}: only {ratio:.2} delivered at 30% loss"
        );
        assert!(receiver.delivered().values().all(|&n| n == 1));
    }
    // Handshakes kept completing: never a gap long enough for the keys to expire.
    let made = handshakes(&sim);
    assert!(made.len() >= 4, "{made:?}");
    assert!(
        *made.last().unwrap() > lossy - REJECT_AFTER_TIME,
        "{made:?}"
    );
    for gap in gaps(&made) {
        assert!(
            gap < REJECT_AFTER_TIME,
            "{gap:?} between handshakes: {made:?}"
        );
    }

    // The loss ends: within 10 s everything gets through again.
    sim.set_link(LinkConditions::CLEAN);
    sim.run_until(end + secs(5));
    for side in [Side::A, Side::B] {
        let receiver = sim.node(side.other());
        let late = sent_between(&sim, side, lossy + secs(10), end);
        assert!(late.len() >= 180, "{}", late.len());
        for id in late {
            assert_eq!(receiver.delivered_count(id), 1, "{side:?} payload {id}");
        }
    }
}
