//! Fuzzes the key process's handshake entry points with arbitrary datagrams: opening an
//! initiation as the responder, and consuming a response while an initiation is pending.
//! Nothing may panic, and random bytes must never complete a handshake.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use wg_cookie::MacSigner;
use wg_handshake::{LocalIdentity, Peer, Tai64N};
use wg_wire::PresharedKey;
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    let mut rng = StdRng::seed_from_u64(0);
    let responder = LocalIdentity::from_private_bytes(Zeroizing::new([1; 32]));
    let initiator = LocalIdentity::from_private_bytes(Zeroizing::new([2; 32]));
    assert!(responder.open_initiation(data).is_err());

    let mut peer = Peer::new(&initiator, *responder.public_key(), PresharedKey::zero());
    let mut macs = MacSigner::new(responder.public_key());
    let now = Instant::now();
    let ts = Tai64N::from_unix(1, 0);
    if peer
        .create_initiation(&initiator, 7, ts, &mut macs, now, &mut rng)
        .is_ok()
    {
        assert!(peer.consume_response(&initiator, data).is_err());
    }
});
