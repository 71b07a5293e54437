//! Fuzzes the UAPI text protocol (a local trust boundary: any client that reaches the
//! socket): request parsing, `get` answer parsing, and applying parsed `set` requests.
//! Nothing may panic; a failed apply must leave no partial configuration behind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wg_uapi::{DeviceConfig, Limits, Request};
use wg_wire::PublicKey;

fuzz_target!(|data: &[u8]| {
    let _ = wg_uapi::parse_get_response(data, &Limits::DEFAULT);
    if let Ok(Request::Set(set)) = wg_uapi::parse_request(data) {
        let config = DeviceConfig::default();
        let _ = wg_uapi::apply(&config, &set, |k| PublicKey(*k.expose_secret()));
    }
});
