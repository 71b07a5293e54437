//! Fuzzes the data plane's inbound transport path: arbitrary datagrams against a router with
//! a live session. Nothing may panic and nothing forged may authenticate.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use wg_router::{NewSession, Router};
use wg_wire::SessionKey;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut router = Router::new();
    let peer = router.add_peer();
    let _ = router.insert_allowed_ip(peer, "0.0.0.0/0".parse().expect("literal"));
    let session = NewSession {
        initiator: true,
        local_index: u32::from_le_bytes([0, 0, 0, 0]),
        remote_index: 1,
        send: SessionKey::from_bytes([4; 32]),
        recv: SessionKey::from_bytes([5; 32]),
    };
    let _ = router.add_session(peer, session, now);
    if let Ok(job) = router.plan_inbound(data, now) {
        let mut buf = data.to_vec();
        assert!(job.open(&mut buf).is_err(), "forged transport authenticated");
    }
});
