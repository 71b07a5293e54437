//! Fuzzes `wg_wire::Message::parse`: it must never panic on any datagram, and every
//! message it accepts must serialize back to exactly the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wg_wire::{Message, Transport};

fuzz_target!(|data: &[u8]| {
    match Message::parse(data) {
        Ok(Message::Initiation(m)) => assert_eq!(m.to_bytes().as_slice(), data),
        Ok(Message::Response(m)) => assert_eq!(m.to_bytes().as_slice(), data),
        Ok(Message::CookieReply(m)) => assert_eq!(m.to_bytes().as_slice(), data),
        Ok(Message::Transport(t)) => {
            let header = Transport::header(t.receiver_index, t.counter);
            assert_eq!(&data[..header.len()], header.as_slice());
            assert_eq!(&data[header.len()..], t.ciphertext);
        }
        Err(_) => {}
    }
});
