//! Helpers shared by the simulation tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use wg_sim::{EventKind, Node, Side, Sim};

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

pub fn is_initiation(e: &EventKind) -> bool {
    matches!(e, EventKind::InitiationSent { .. })
}

pub fn is_initiator_session(e: &EventKind) -> bool {
    matches!(e, EventKind::SessionInstalled { initiator: true })
}

pub fn is_keepalive_sent(e: &EventKind) -> bool {
    matches!(e, EventKind::KeepaliveSent)
}

pub fn is_delivery(e: &EventKind) -> bool {
    matches!(e, EventKind::Delivered { .. })
}

/// Completed handshakes (one initiator-side session per handshake), both nodes, in order.
pub fn handshakes(sim: &Sim) -> Vec<Duration> {
    let mut t = sim.node(Side::A).times(is_initiator_session);
    t.extend(sim.node(Side::B).times(is_initiator_session));
    t.sort();
    t
}

/// Differences between consecutive times.
pub fn gaps(times: &[Duration]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Payload ids `from` sent whose send time is in `[start, end)`, as the app scheduled them.
pub fn sent_between(sim: &Sim, from: Side, start: Duration, end: Duration) -> Vec<u64> {
    let node = sim.node(from);
    node.events()
        .iter()
        .filter(|e| (start..end).contains(&e.at))
        .filter_map(|e| match e.kind {
            EventKind::DataSent { payload_id }
            | EventKind::DataStaged { payload_id }
            | EventKind::DataDropped { payload_id, .. } => payload_id,
            _ => None,
        })
        .collect()
}

/// Asserts every payload `from` sent was delivered exactly once to the other side, and
/// nothing else was delivered there.
pub fn assert_all_delivered_once(sim: &Sim, from: Side) {
    let sent = sim.sent_by(from);
    let receiver: &Node = sim.node(from.other());
    for id in &sent {
        assert_eq!(
            receiver.delivered_count(*id),
            1,
            "payload {id} from {from:?}"
        );
    }
    assert_eq!(receiver.delivered().len(), sent.len());
}
