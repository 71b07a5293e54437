//! Two peers' handshake states in memory: the whitepaper's flow, and every way it must fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use wg_cookie::{CookieChecker, MacSigner, Verdict};
use wg_handshake::{
    HandshakeError, IncomingInitiation, LocalIdentity, Peer, Role, Session, Tai64N,
};
use wg_wire::{CookieReply, PresharedKey};

struct Side {
    local: LocalIdentity,
    peer: Peer,
    macs: MacSigner,
}

fn pair(seed: u64, psk_a: [u8; 32], psk_b: [u8; 32]) -> (Side, Side, StdRng) {
    let mut rng = StdRng::seed_from_u64(seed);
    let a = LocalIdentity::generate(&mut rng);
    let b = LocalIdentity::generate(&mut rng);
    let side = |local: LocalIdentity, remote: &LocalIdentity, psk| Side {
        peer: Peer::new(&local, *remote.public_key(), PresharedKey::from_bytes(psk)),
        macs: MacSigner::new(remote.public_key()),
        local,
    };
    let sa = side(a, &b, psk_a);
    let sb = side(b, &sa.local, psk_b);
    (sa, sb, rng)
}

fn ts(secs: u64) -> Tai64N {
    Tai64N::from_unix(1_700_000_000 + secs, 0)
}

fn open_and_consume(
    r: &mut Side,
    msg: &[u8],
    now: Instant,
) -> Result<IncomingInitiationSender, HandshakeError> {
    let incoming: IncomingInitiation = r.local.open_initiation(msg)?;
    assert_eq!(incoming.remote_static(), r.peer.remote_public());
    let sender = incoming.sender_index();
    r.peer.consume_initiation(&r.local, incoming, now)?;
    Ok(IncomingInitiationSender(sender))
}

struct IncomingInitiationSender(u32);

/// Runs a whole handshake and returns (initiator session, responder session).
fn handshake(
    i: &mut Side,
    r: &mut Side,
    rng: &mut StdRng,
    now: Instant,
    t: Tai64N,
) -> (Session, Session) {
    let init = i
        .peer
        .create_initiation(&i.local, 0x1111, t, &mut i.macs, now, rng)
        .unwrap();
    let sender = open_and_consume(r, &init, now).unwrap();
    assert_eq!(sender.0, 0x1111);
    let (resp, rs) = r
        .peer
        .create_response(0x2222, &mut r.macs, now, rng)
        .unwrap();
    let is = i.peer.consume_response(&i.local, &resp).unwrap();
    (is, rs)
}

fn assert_matching(is: &Session, rs: &Session) {
    assert_eq!(is.role, Role::Initiator);
    assert_eq!(rs.role, Role::Responder);
    assert_eq!(is.send, rs.recv);
    assert_eq!(is.recv, rs.send);
    assert_ne!(is.send, is.recv);
    assert_eq!((is.local_index, is.remote_index), (0x1111, 0x2222));
    assert_eq!((rs.local_index, rs.remote_index), (0x2222, 0x1111));
}

#[test]
fn both_sides_derive_the_same_keys_without_psk() {
    let (mut a, mut b, mut rng) = pair(1, [0; 32], [0; 32]);
    let (is, rs) = handshake(&mut a, &mut b, &mut rng, Instant::now(), ts(0));
    assert_matching(&is, &rs);
}

#[test]
fn both_sides_derive_the_same_keys_with_psk() {
    let (mut a, mut b, mut rng) = pair(2, [0x42; 32], [0x42; 32]);
    let (is, rs) = handshake(&mut a, &mut b, &mut rng, Instant::now(), ts(0));
    assert_matching(&is, &rs);
}

#[test]
fn a_psk_changes_the_keys() {
    let (mut a, mut b, mut rng) = pair(3, [0; 32], [0; 32]);
    let (plain, _) = handshake(&mut a, &mut b, &mut rng, Instant::now(), ts(0));
    let (mut a, mut b, mut rng) = pair(3, [7; 32], [7; 32]);
    let (with_psk, _) = handshake(&mut a, &mut b, &mut rng, Instant::now(), ts(0));
    assert_ne!(plain.send, with_psk.send);
}

#[test]
fn wrong_psk_fails_at_the_initiator() {
    let (mut a, mut b, mut rng) = pair(4, [1; 32], [2; 32]);
    let now = Instant::now();
    let init = a
        .peer
        .create_initiation(&a.local, 1, ts(0), &mut a.macs, now, &mut rng)
        .unwrap();
    open_and_consume(&mut b, &init, now).unwrap();
    let (resp, _) = b
        .peer
        .create_response(2, &mut b.macs, now, &mut rng)
        .unwrap();
    assert_eq!(
        a.peer.consume_response(&a.local, &resp).err(),
        Some(HandshakeError::DecryptionFailed)
    );
}

#[test]
fn psk_can_change_between_handshakes() {
    let (mut a, mut b, mut rng) = pair(5, [0; 32], [0; 32]);
    let now = Instant::now();
    handshake(&mut a, &mut b, &mut rng, now, ts(0));
    a.peer.set_preshared_key(PresharedKey::from_bytes([9; 32]));
    b.peer.set_preshared_key(PresharedKey::from_bytes([9; 32]));
    let (is, rs) = handshake(
        &mut a,
        &mut b,
        &mut rng,
        now + Duration::from_secs(1),
        ts(1),
    );
    assert_matching(&is, &rs);
}

#[test]
fn wrong_static_key_fails() {
    // The initiator believes the responder's key is that of a third party.
    let (mut a, b, mut rng) = pair(6, [0; 32], [0; 32]);
    let stranger = LocalIdentity::generate(&mut rng);
    a.peer = Peer::new(&a.local, *stranger.public_key(), PresharedKey::zero());
    a.macs = MacSigner::new(b.local.public_key()); // MAC1 right, so the Noise layer decides
    let init = a
        .peer
        .create_initiation(&a.local, 1, ts(0), &mut a.macs, Instant::now(), &mut rng)
        .unwrap();
    assert_eq!(
        b.local.open_initiation(&init).err(),
        Some(HandshakeError::DecryptionFailed)
    );
    // A responder that does not know the initiator's key: decrypts the static key, but the
    // peer it is given is someone else.
    let (mut a, b, mut rng) = pair(7, [0; 32], [0; 32]);
    let init = a
        .peer
        .create_initiation(&a.local, 1, ts(0), &mut a.macs, Instant::now(), &mut rng)
        .unwrap();
    let incoming = b.local.open_initiation(&init).unwrap();
    let mut other = Peer::new(&b.local, *stranger.public_key(), PresharedKey::zero());
    assert_eq!(
        other
            .consume_initiation(&b.local, incoming, Instant::now())
            .err(),
        Some(HandshakeError::WrongPeer)
    );
}

#[test]
fn every_flipped_bit_of_the_initiation_is_rejected() {
    let (mut a, b, mut rng) = pair(8, [0; 32], [0; 32]);
    let now = Instant::now();
    let init = a
        .peer
        .create_initiation(&a.local, 1, ts(0), &mut a.macs, now, &mut rng)
        .unwrap();
    // MAC2 is zero and unchecked when not under load, so every byte before it is covered.
    for i in 0..init.len() - 16 {
        let mut bad = init;
        bad[i] ^= 0x01;
        let mut peer = Peer::new(&b.local, *a.local.public_key(), PresharedKey::zero());
        let result = b
            .local
            .open_initiation(&bad)
            .and_then(|inc| peer.consume_initiation(&b.local, inc, now));
        assert!(result.is_err(), "byte {i} flipped was accepted");
    }
}

#[test]
fn every_flipped_bit_of_the_response_is_rejected() {
    let (mut a, mut b, mut rng) = pair(9, [3; 32], [3; 32]);
    let now = Instant::now();
    let init = a
        .peer
        .create_initiation(&a.local, 1, ts(0), &mut a.macs, now, &mut rng)
        .unwrap();
    open_and_consume(&mut b, &init, now).unwrap();
    let (resp, _) = b
        .peer
        .create_response(2, &mut b.macs, now, &mut rng)
        .unwrap();
    for i in 0..resp.len() - 16 {
        let mut bad = resp;
        bad[i] ^= 0x80;
        assert!(
            a.peer.consume_response(&a.local, &bad).is_err(),
            "byte {i} flipped was accepted"
        );
    }
    // The untouched response still completes: failed attempts left the state intact.
    a.peer.consume_response(&a.local, &resp).unwrap();
}

#[test]
fn mac2_is_checked_under_load() {
    let (mut a, b, mut rng) = pair(10, [0; 32], [0; 32]);
    let now = Instant::now();
    let src = "192.0.2.7:51820".parse().unwrap();
    let init = a
        .peer
        .create_initiation(&a.local, 1, ts(0), &mut a.macs, now, &mut rng)
        .unwrap();
    let checker = CookieChecker::new(b.local.public_key());
    assert_eq!(checker.check(&init, src, now, false), Verdict::Accept);
    assert_eq!(checker.check(&init, src, now, true), Verdict::SendCookie);
}

#[test]
fn replayed_initiation_is_rejected() {
    let (mut a, mut b, mut rng) = pair(11, [0; 32], [0; 32]);
    let now = Instant::now();
    let init = a
        .peer
        .create_initiation(&a.local, 1, ts(0), &mut a.macs, now, &mut rng)
        .unwrap();
    open_and_consume(&mut b, &init, now).unwrap();
    let later = now + Duration::from_secs(10);
    assert_eq!(
        open_and_consume(&mut b, &init, later).err(),
        Some(HandshakeError::Replay)
    );
    // An older timestamp is as bad as an equal one.
    let old = a
        .peer
        .create_initiation(
            &a.local,
            2,
            Tai64N::from_unix(1, 0),
            &mut a.macs,
            later,
            &mut rng,
        )
        .unwrap();
    assert_eq!(
        open_and_consume(&mut b, &old, later).err(),
        Some(HandshakeError::Replay)
    );
    // A newer one is fine.
    let new = a
        .peer
        .create_initiation(&a.local, 3, ts(1), &mut a.macs, later, &mut rng)
        .unwrap();
    open_and_consume(&mut b, &new, later).unwrap();
}

#[test]
fn initiations_faster_than_fifty_per_second_are_rejected() {
    let (mut a, mut b, mut rng) = pair(12, [0; 32], [0; 32]);
    let now = Instant::now();
    let first = a
        .peer
        .create_initiation(&a.local, 1, ts(0), &mut a.macs, now, &mut rng)
        .unwrap();
    open_and_consume(&mut b, &first, now).unwrap();
    let soon = now + Duration::from_millis(20);
    let second = a
        .peer
        .create_initiation(&a.local, 2, ts(1), &mut a.macs, soon, &mut rng)
        .unwrap();
    assert_eq!(
        open_and_consume(&mut b, &second, soon).err(),
        Some(HandshakeError::Flood)
    );
    // The flood rejection did not burn the timestamp: the same message is fine a bit later.
    let later = now + Duration::from_millis(21);
    open_and_consume(&mut b, &second, later).unwrap();
}

#[test]
fn response_without_initiation_is_unexpected() {
    let (mut a, mut b, mut rng) = pair(13, [0; 32], [0; 32]);
    let now = Instant::now();
    let init = a
        .peer
        .create_initiation(&a.local, 1, ts(0), &mut a.macs, now, &mut rng)
        .unwrap();
    open_and_consume(&mut b, &init, now).unwrap();
    let (resp, _) = b
        .peer
        .create_response(2, &mut b.macs, now, &mut rng)
        .unwrap();
    a.peer.consume_response(&a.local, &resp).unwrap();
    // The same response again: the handshake state was consumed.
    assert_eq!(
        a.peer.consume_response(&a.local, &resp).err(),
        Some(HandshakeError::UnexpectedMessage)
    );
    // A response cannot be created twice for one initiation.
    assert_eq!(
        b.peer.create_response(3, &mut b.macs, now, &mut rng).err(),
        Some(HandshakeError::UnexpectedMessage)
    );
}

#[test]
fn clearing_erases_the_pending_handshake() {
    let (mut a, mut b, mut rng) = pair(14, [0; 32], [0; 32]);
    let now = Instant::now();
    let init = a
        .peer
        .create_initiation(&a.local, 1, ts(0), &mut a.macs, now, &mut rng)
        .unwrap();
    assert_eq!(a.peer.pending_local_index(), Some(1));
    open_and_consume(&mut b, &init, now).unwrap();
    let (resp, _) = b
        .peer
        .create_response(2, &mut b.macs, now, &mut rng)
        .unwrap();
    a.peer.clear();
    assert_eq!(a.peer.pending_local_index(), None);
    assert_eq!(
        a.peer.consume_response(&a.local, &resp).err(),
        Some(HandshakeError::UnexpectedMessage)
    );
}

#[test]
fn a_new_initiation_supersedes_the_previous_one() {
    let (mut a, mut b, mut rng) = pair(15, [0; 32], [0; 32]);
    let now = Instant::now();
    let first = a
        .peer
        .create_initiation(&a.local, 1, ts(0), &mut a.macs, now, &mut rng)
        .unwrap();
    let later = now + Duration::from_secs(5);
    let second = a
        .peer
        .create_initiation(&a.local, 2, ts(5), &mut a.macs, later, &mut rng)
        .unwrap();
    open_and_consume(&mut b, &first, now).unwrap();
    let (stale, _) = b
        .peer
        .create_response(3, &mut b.macs, now, &mut rng)
        .unwrap();
    assert!(a.peer.consume_response(&a.local, &stale).is_err());
    open_and_consume(&mut b, &second, later).unwrap();
    let (resp, _) = b
        .peer
        .create_response(4, &mut b.macs, later, &mut rng)
        .unwrap();
    a.peer.consume_response(&a.local, &resp).unwrap();
}

#[test]
fn cookie_reply_makes_the_next_initiation_pass_under_load() {
    let (mut a, b, mut rng) = pair(16, [0; 32], [0; 32]);
    let now = Instant::now();
    let src = "[2001:db8::1]:40000".parse().unwrap();
    let mut checker = CookieChecker::new(b.local.public_key());
    let init = a
        .peer
        .create_initiation(&a.local, 1, ts(0), &mut a.macs, now, &mut rng)
        .unwrap();
    assert_eq!(checker.check(&init, src, now, true), Verdict::SendCookie);
    let reply: CookieReply = checker.create_reply(&init, src, now, &mut rng).unwrap();
    assert_eq!(reply.receiver_index, 1);
    a.macs.consume_cookie_reply(&reply, now).unwrap();
    let t = now + Duration::from_secs(1);
    let again = a
        .peer
        .create_initiation(&a.local, 2, ts(1), &mut a.macs, t, &mut rng)
        .unwrap();
    assert_eq!(checker.check(&again, src, t, true), Verdict::Accept);
    // The Noise layer is unaffected by MAC2.
    b.local.open_initiation(&again).unwrap();
}

#[test]
fn debug_output_holds_no_key_material() {
    let (mut a, mut b, mut rng) = pair(17, [0x5a; 32], [0x5a; 32]);
    let (is, _) = handshake(&mut a, &mut b, &mut rng, Instant::now(), ts(0));
    let private = a.local.private_bytes();
    let shown = format!("{:?} {:?} {:?} {:?}", a.local, a.peer, is, a.macs);
    for secret in [
        &private[..],
        &is.send.expose_secret()[..],
        &is.recv.expose_secret()[..],
        &[0x5a; 32],
    ] {
        let hex = hex::encode(&secret[..4]);
        assert!(!shown.contains(&hex), "{shown} shows {hex}");
        let decimal = format!("{:?}", &secret[..4]);
        assert!(
            !shown.contains(decimal.trim_matches(|c| c == '[' || c == ']')),
            "{shown}"
        );
    }
}

mod parsers {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary datagrams never panic the responder or the initiator, and never pass.
        #[test]
        fn arbitrary_bytes_never_panic_or_pass(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (mut a, b, mut rng) = pair(20, [0; 32], [0; 32]);
            prop_assert!(b.local.open_initiation(&bytes).is_err());
            a.peer.create_initiation(&a.local, 1, ts(0), &mut a.macs, Instant::now(), &mut rng).unwrap();
            prop_assert!(a.peer.consume_response(&a.local, &bytes).is_err());
        }

        /// A correctly typed and sized message with random content never passes either.
        #[test]
        fn random_well_formed_messages_fail(body in proptest::collection::vec(any::<u8>(), 144)) {
            let (mut a, b, mut rng) = pair(21, [0; 32], [0; 32]);
            let mut init = vec![1, 0, 0, 0];
            init.extend_from_slice(&body);
            prop_assert!(b.local.open_initiation(&init).is_err());
            a.peer.create_initiation(&a.local, 1, ts(0), &mut a.macs, Instant::now(), &mut rng).unwrap();
            let mut resp = vec![2, 0, 0, 0];
            resp.extend_from_slice(&body[..88]);
            prop_assert!(a.peer.consume_response(&a.local, &resp).is_err());
        }
    }
}
