//! Fuzzes the data plane's DoS checks: MAC1/MAC2 verification and cookie-reply creation on
//! arbitrary datagrams, and the initiator's consumption of arbitrary cookie replies.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use wg_cookie::{CookieChecker, MacSigner};
use wg_wire::{CookieReply, PublicKey};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let key = PublicKey([3; 32]);
    let src = SocketAddr::from(([192, 0, 2, 1], 51820));
    let mut checker = CookieChecker::new(&key);
    let _ = checker.check(data, src, now, true);
    let _ = checker.create_reply(data, src, now, &mut StdRng::seed_from_u64(1));

    let mut signer = MacSigner::new(&key);
    let mut sent = [0u8; 148];
    sent[0] = 1;
    let _ = signer.sign(&mut sent, now);
    if let Ok(reply) = CookieReply::parse(data) {
        assert!(signer.consume_cookie_reply(&reply, now).is_err());
    }
});
