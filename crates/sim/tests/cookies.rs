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

/// Forged initiations (valid MAC1, from many addresses) injected into B: `per_ms` every
/// millisecond of virtual time from `from_ms` to `to_ms`.
fn flood(sim: &mut Sim, b_key: &wg_wire::PublicKey, from_ms: u64, to_ms: u64, per_ms: u64) {
    let b = sim.endpoint(Side::B);
    for t in from_ms..to_ms {
        sim.run_until(ms(t));
        let now = sim.now();
        for k in 0..per_ms {
            let n = t * per_ms + k;
            let from: std::net::SocketAddr = format!("198.18.{}.{}:4000", n % 200, n % 250 + 1)
                .parse()
                .unwrap();
            let datagram = wg_sim::Datagram {
                from,
                to: b,
                bytes: forged_initiation(b_key, n, now),
            };
            sim.inject(Side::B, &datagram);
        }
    }
}

#[test]
fn a_handshake_flood_puts_the_responder_under_load_by_itself_and_the_honest_peer_gets_through() {
    let mut sim = Sim::new(SimConfig::default());
    let b_key = sim.node(Side::B).public_key();
    // 10,000 forged initiations a second, from 50,000 addresses, against a keyd that
    // takes 250 us each (4,000 a second): its queue grows, and at 512 the responder asks
    // for cookies by itself; nothing tells it to.
    flood(&mut sim, &b_key, 0, 1000, 10);
    let now = sim.now();
    assert!(
        sim.node_mut(Side::B).under_load(now),
        "a queue keyd cannot keep up with did not count as load"
    );
    // The honest peer starts a handshake in the middle of the flood; its retry comes after
    // REKEY_TIMEOUT (5 s).
    let id = sim.send(Side::A);
    flood(&mut sim, &b_key, 1000, 7000, 10);
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
    // Under load, the forgeries cost B a cookie reply each (no Diffie-Hellman). keyd saw
    // only those that came while its queue built up again after each second of load:
    // about 850 (512 / (10 - 4) per ms, times 10) in each cycle of about 1.1 s.
    let reached_keyd = bn.count(|e| matches!(e, EventKind::HandshakeAccepted { .. }));
    let cookies = bn.count(|e| matches!(e, EventKind::CookieReplySent));
    assert!(cookies > 60_000, "only {cookies} cookie replies of 70,000");
    assert!(
        reached_keyd < 8_000,
        "{reached_keyd} forged initiations reached keyd"
    );
}

/// A burst that keyd works off before its queue reaches 512 costs nobody a cookie: the
/// kernel's rule, where a rate threshold would have sent every one of these initiators
/// back for a cookie round trip.
#[test]
fn a_burst_keyd_keeps_up_with_asks_for_no_cookies() {
    let mut sim = Sim::new(SimConfig::default());
    let b_key = sim.node(Side::B).public_key();
    // 400 at once, then quiet: the queue peaks at 400.
    flood(&mut sim, &b_key, 0, 1, 400);
    sim.run_for(ms(100));
    let now = sim.now();
    let bn = sim.node_mut(Side::B);
    assert_eq!(bn.count(|e| matches!(e, EventKind::CookieReplySent)), 0);
    assert_eq!(
        bn.count(|e| matches!(e, EventKind::HandshakeAccepted { under_load: false })),
        400
    );
    assert_eq!(bn.keyd_queue_len(now), 0, "keyd caught up within 100 ms");
    assert!(!bn.under_load(now));
}
