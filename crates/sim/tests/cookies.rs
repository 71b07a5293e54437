//! Cookie replies (whitepaper section 5.4.7): a responder under load makes the initiator
//! prove its address before it spends a Diffie-Hellman on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use wg_sim::{Capture, EventKind, Receipt, Rejection, Side, Sim, SimConfig};
use wg_timers::{REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX};
use wg_wire::MESSAGE_COOKIE_REPLY;

#[test]
fn cookie_replies_under_load() {
    let mut sim = Sim::new(SimConfig::default());
    sim.node_mut(Side::B).set_under_load(true);
    let a = sim.endpoint(Side::A);
    sim.network_mut().capture(Some(Capture::Copy), Some(a));
    let id = sim.send(Side::A);
    sim.run_for(secs(1));

    // The first initiation has no MAC2: B answers with a cookie, not a handshake.
    let node_a = sim.node(Side::A);
    let node_b = sim.node(Side::B);
    assert_eq!(
        node_a.times(is_initiation),
        vec![secs(0)],
        "{:?}",
        node_a.events()
    );
    assert_eq!(
        node_a.count(|e| matches!(
            e,
            EventKind::InitiationSent {
                with_mac2: false,
                ..
            }
        )),
        1
    );
    assert_eq!(node_b.count(|e| matches!(e, EventKind::CookieReplySent)), 1);
    assert_eq!(node_b.count(|e| matches!(e, EventKind::ResponseSent)), 0);
    assert_eq!(
        node_b.count(|e| matches!(e, EventKind::SessionInstalled { .. })),
        0
    );
    assert_eq!(
        node_a.count(|e| matches!(e, EventKind::CookieReplyConsumed)),
        1
    );
    assert_eq!(node_b.delivered_count(id), 0);

    // The retransmission carries MAC2 with the cookie, B (still under load) accepts it and
    // the handshake completes.
    sim.run_for(secs(10));
    let node_a = sim.node(Side::A);
    let node_b = sim.node(Side::B);
    let sent = node_a.times(is_initiation);
    assert_eq!(sent.len(), 2, "{:?}", node_a.events());
    assert!(sent[1] >= REKEY_TIMEOUT && sent[1] <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    assert_eq!(
        node_a.count(|e| matches!(
            e,
            EventKind::InitiationSent {
                with_mac2: true,
                ..
            }
        )),
        1
    );
    assert_eq!(
        node_b.count(|e| matches!(e, EventKind::HandshakeAccepted { under_load: true })),
        1
    );
    assert_eq!(node_b.count(|e| matches!(e, EventKind::ResponseSent)), 1);
    assert_eq!(node_a.count(is_initiator_session), 1);
    assert_eq!(node_b.delivered_count(id), 1);
    assert_eq!(node_b.count(|e| matches!(e, EventKind::CookieReplySent)), 1);

    // The cookie reply answered A's first initiation only, whose index the retransmission
    // released: replayed now, it is dropped before any decryption.
    sim.network_mut().capture(None, None);
    let reply = sim
        .network_mut()
        .take_captured()
        .into_iter()
        .find(|d| d.bytes.first() == Some(&(MESSAGE_COOKIE_REPLY as u8)))
        .unwrap();
    assert_eq!(
        sim.inject(Side::A, &reply),
        Receipt::Rejected(Rejection::UnknownIndex)
    );
}
