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

/// A forged initiation to `to`: garbage that only its MAC1 makes look right (anyone who
/// knows the responder's public key can compute MAC1).
fn forged_initiation(to: &wg_wire::PublicKey, seed: u64, now: std::time::Instant) -> Vec<u8> {
    let mut message = vec![0u8; wg_wire::INITIATION_LEN];
    message[..4].copy_from_slice(&wg_wire::MESSAGE_INITIATION.to_le_bytes());
    for (i, b) in message.iter_mut().enumerate().skip(4) {
        *b = (seed.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8;
    }
    wg_cookie::MacSigner::new(to)
        .sign(&mut message, now)
        .unwrap();
    message
}

#[test]
fn a_handshake_flood_puts_the_responder_under_load_by_itself_and_the_honest_peer_gets_through() {
    let mut sim = Sim::new(SimConfig::default());
    let b_key = sim.node(Side::B).public_key();
    let b = sim.endpoint(Side::B);
    // 400 forged initiations a second from 400 addresses, for 20 s: the responder's own
    // load meter (over 128 a second) must make it ask for cookies; nothing tells it to.
    let flood = |sim: &mut Sim, from_ms: u64, to_ms: u64| {
        for t in (from_ms..to_ms).step_by(2) {
            sim.run_until(ms(t));
            let now = sim.now();
            let from: std::net::SocketAddr =
                format!("198.18.{}.{}:4000", (t / 2) % 200, (t / 2) % 250 + 1)
                    .parse()
                    .unwrap();
            let datagram = wg_sim::Datagram {
                from,
                to: b,
                bytes: forged_initiation(&b_key, t, now),
            };
            sim.inject(Side::B, &datagram);
        }
    };
    flood(&mut sim, 0, 1000);
    assert!(
        sim.node(Side::B).under_load(sim.now()),
        "400/s did not count as load"
    );
    // The honest peer starts a handshake in the middle of the flood.
    let id = sim.send(Side::A);
    flood(&mut sim, 1000, 20_000);
    sim.run_for(secs(1));

    let a = sim.node(Side::A);
    let bn = sim.node(Side::B);
    // B answered A's first initiation with a cookie, A's retry carried MAC2 and completed.
    assert!(
        a.count(|e| matches!(e, EventKind::CookieReplyConsumed)) >= 1,
        "{:?}",
        a.events()
    );
    assert!(
        a.count(|e| matches!(
            e,
            EventKind::InitiationSent {
                with_mac2: true,
                ..
            }
        )) >= 1
    );
    assert_eq!(a.count(is_initiator_session), 1);
    assert_eq!(bn.delivered_count(id), 1);
    // Under load, the forgeries cost B a cookie reply each (no Diffie-Hellman): its key
    // process saw only those that came while the meter had not yet tripped, far from all
    // 10,000.
    let reached_keyd = bn.count(|e| matches!(e, EventKind::HandshakeAccepted { .. }));
    let cookies = bn.count(|e| matches!(e, EventKind::CookieReplySent));
    assert!(cookies > 5_000, "only {cookies} cookie replies");
    assert!(
        reached_keyd < 2_500,
        "{reached_keyd} forged initiations reached keyd"
    );
}
