//! The cookie mechanism of whitepaper section 5.4.7, checked against its rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use wg_cookie::{COOKIE_REFRESH_TIME, CookieChecker, CookieError, MacSigner, Verdict};
use wg_wire::{CookieReply, INITIATION_LEN, PublicKey, RESPONSE_LEN};

const RESPONDER: PublicKey = PublicKey([0x21; 32]);

fn initiation(sender: u32, fill: u8) -> [u8; INITIATION_LEN] {
    let mut m = [fill; INITIATION_LEN];
    m[..4].copy_from_slice(&1u32.to_le_bytes());
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    m
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An initiator holding a cookie from the responder for `src`, and the responder's checker.
fn with_cookie(src: SocketAddr, now: Instant) -> (MacSigner, CookieChecker, StdRng) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut signer = MacSigner::new(&RESPONDER);
    let mut checker = CookieChecker::new(&RESPONDER);
    let mut msg = initiation(9, 0xaa);
    signer.sign(&mut msg, now).unwrap();
    assert_eq!(checker.check(&msg, src, now, true), Verdict::SendCookie);
    let reply = checker.create_reply(&msg, src, now, &mut rng).unwrap();
    assert_eq!(reply.receiver_index, 9);
    signer.consume_cookie_reply(&reply, now).unwrap();
    (signer, checker, rng)
}

#[test]
fn mac1_alone_passes_when_not_under_load() {
    let mut signer = MacSigner::new(&RESPONDER);
    let checker = CookieChecker::new(&RESPONDER);
    let mut msg = initiation(1, 0);
    signer.sign(&mut msg, Instant::now()).unwrap();
    assert_eq!(
        checker.check(&msg, addr("10.0.0.1:1"), Instant::now(), false),
        Verdict::Accept
    );
    assert_eq!(msg[132..], [0; 16], "without a cookie MAC2 is zeros");
}

#[test]
fn mac1_for_another_key_is_dropped() {
    let mut signer = MacSigner::new(&PublicKey([0x22; 32]));
    let checker = CookieChecker::new(&RESPONDER);
    let mut msg = initiation(1, 0);
    signer.sign(&mut msg, Instant::now()).unwrap();
    assert_eq!(
        checker.check(&msg, addr("10.0.0.1:1"), Instant::now(), false),
        Verdict::Drop
    );
    assert_eq!(
        checker.check(&msg, addr("10.0.0.1:1"), Instant::now(), true),
        Verdict::Drop
    );
}

#[test]
fn responses_carry_macs_too() {
    let mut signer = MacSigner::new(&RESPONDER);
    let checker = CookieChecker::new(&RESPONDER);
    let mut msg = [0u8; RESPONSE_LEN];
    msg[0] = 2;
    signer.sign(&mut msg, Instant::now()).unwrap();
    assert_eq!(
        checker.check(&msg, addr("10.0.0.1:1"), Instant::now(), false),
        Verdict::Accept
    );
    let mut wrong = [0u8; 64];
    wrong[0] = 3;
    assert_eq!(
        signer.sign(&mut wrong, Instant::now()),
        Err(CookieError::NotAHandshakeMessage)
    );
}

#[test]
fn cookie_round_trip_gives_a_valid_mac2() {
    let now = Instant::now();
    let src = addr("192.0.2.1:51820");
    let (mut signer, checker, _) = with_cookie(src, now);
    let mut next = initiation(10, 0xbb);
    signer
        .sign(&mut next, now + Duration::from_secs(1))
        .unwrap();
    assert_ne!(next[132..], [0; 16]);
    assert_eq!(
        checker.check(&next, src, now + Duration::from_secs(1), true),
        Verdict::Accept
    );
}

#[test]
fn cookie_for_another_ip_or_port_is_rejected() {
    let now = Instant::now();
    let src = addr("192.0.2.1:51820");
    let (mut signer, checker, _) = with_cookie(src, now);
    let mut next = initiation(10, 0xbb);
    signer.sign(&mut next, now).unwrap();
    for other in [
        "192.0.2.2:51820",
        "192.0.2.1:51821",
        "[::ffff:192.0.2.1]:51820",
    ] {
        assert_eq!(
            checker.check(&next, addr(other), now, true),
            Verdict::SendCookie,
            "{other}"
        );
    }
}

#[test]
fn cookie_older_than_120_s_is_not_used_by_the_initiator() {
    let now = Instant::now();
    let src = addr("192.0.2.1:51820");
    let (mut signer, _, _) = with_cookie(src, now);
    let mut late = initiation(10, 0xbb);
    signer.sign(&mut late, now + COOKIE_REFRESH_TIME).unwrap();
    assert_eq!(
        late[132..],
        [0; 16],
        "a stale cookie must not be used for MAC2"
    );
    let mut early = initiation(10, 0xbb);
    signer
        .sign(
            &mut early,
            now + COOKIE_REFRESH_TIME - Duration::from_millis(1),
        )
        .unwrap();
    assert_ne!(early[132..], [0; 16]);
}

#[test]
fn cookie_older_than_120_s_is_rejected_by_the_responder() {
    let now = Instant::now();
    let src = addr("192.0.2.1:51820");
    let (mut signer, mut checker, mut rng) = with_cookie(src, now);
    let mut next = initiation(10, 0xbb);
    // Signed just before the cookie expires at the initiator, checked after the secret aged.
    let signed_at = now + COOKIE_REFRESH_TIME - Duration::from_millis(1);
    signer.sign(&mut next, signed_at).unwrap();
    assert_eq!(checker.check(&next, src, signed_at, true), Verdict::Accept);
    let checked_at = now + COOKIE_REFRESH_TIME;
    assert_eq!(
        checker.check(&next, src, checked_at, true),
        Verdict::SendCookie
    );
    // The next reply draws a new secret, so the old cookie stays invalid.
    checker
        .create_reply(&next, src, checked_at, &mut rng)
        .unwrap();
    assert_eq!(
        checker.check(&next, src, checked_at, true),
        Verdict::SendCookie
    );
}

#[test]
fn cookie_reply_to_another_message_is_rejected() {
    let now = Instant::now();
    let src = addr("192.0.2.1:51820");
    let mut rng = StdRng::seed_from_u64(1);
    let mut signer = MacSigner::new(&RESPONDER);
    let mut checker = CookieChecker::new(&RESPONDER);
    // No message sent yet: nothing to answer.
    let mut first = initiation(1, 1);
    let mut other_signer = MacSigner::new(&RESPONDER);
    other_signer.sign(&mut first, now).unwrap();
    let reply = checker.create_reply(&first, src, now, &mut rng).unwrap();
    assert_eq!(
        signer.consume_cookie_reply(&reply, now),
        Err(CookieError::UnexpectedCookieReply)
    );
    // We sent a different message: its MAC1 is the associated data, so the reply fails.
    let mut ours = initiation(2, 2);
    signer.sign(&mut ours, now).unwrap();
    assert_eq!(
        signer.consume_cookie_reply(&reply, now),
        Err(CookieError::InvalidCookieReply)
    );
    // A reply from someone who does not know the responder's key fails too.
    let mut impostor = CookieChecker::new(&PublicKey([0x99; 32]));
    let forged = impostor.create_reply(&ours, src, now, &mut rng).unwrap();
    assert_eq!(
        signer.consume_cookie_reply(&forged, now),
        Err(CookieError::InvalidCookieReply)
    );
    // The genuine reply to our message works.
    let genuine = checker.create_reply(&ours, src, now, &mut rng).unwrap();
    signer.consume_cookie_reply(&genuine, now).unwrap();
}

proptest! {
    #[test]
    fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                    load: bool, port: u16) {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(3);
        let mut checker = CookieChecker::new(&RESPONDER);
        let src = SocketAddr::from(([10, 0, 0, 1], port));
        let _ = checker.check(&bytes, src, now, load);
        let _ = checker.create_reply(&bytes, src, now, &mut rng);
        let mut signer = MacSigner::new(&RESPONDER);
        let mut copy = bytes.clone();
        let _ = signer.sign(&mut copy, now);
        if let Ok(reply) = CookieReply::parse(&bytes) {
            let _ = signer.consume_cookie_reply(&reply, now);
        }
    }
}
