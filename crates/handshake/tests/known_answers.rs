//! Known answers from `tests/vectors/gen_handshake_kat.py`, an independent Python
//! implementation of the whitepaper (Python `cryptography` + `hashlib`, no Rust code).
//! Same fixed keys, ephemerals, timestamp and indices must give the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::time::Instant;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand_core::{TryCryptoRng, TryRng};
use serde::Deserialize;
use wg_cookie::{CookieChecker, MacSigner};
use wg_handshake::{LocalIdentity, Peer, Role, Tai64N};
use wg_wire::{CookieReply, PresharedKey, PublicKey, Transport};
use zeroize::Zeroizing;

const VECTORS: &str = include_str!("../../../tests/vectors/handshake_kat.json");

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
    cookie_reply: CookieCase,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    initiator_static_private: String,
    initiator_static_public: String,
    responder_static_private: String,
    responder_static_public: String,
    initiator_ephemeral_private: String,
    responder_ephemeral_private: String,
    preshared_key: String,
    timestamp: String,
    initiator_index: u32,
    responder_index: u32,
    cookie: Option<String>,
    initiation: String,
    response: String,
    initiator_send_key: String,
    initiator_recv_key: String,
    first_transport: FirstTransport,
}

#[derive(Deserialize)]
struct FirstTransport {
    counter: u64,
    plaintext: String,
    message: String,
}

#[derive(Deserialize)]
struct CookieCase {
    responder_static_public: String,
    cookie_secret: String,
    source_bytes: String,
    nonce: String,
    receiver_index: u32,
    mac1: String,
    message: String,
}

fn bytes<const N: usize>(hex_str: &str) -> [u8; N] {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

/// An "RNG" that hands out a fixed script of bytes: the ephemeral keys and the cookie nonce
/// of the vectors.
struct Script(Vec<u8>);

impl TryRng for Script {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(self.0.len() >= dst.len(), "script exhausted");
        let rest = self.0.split_off(dst.len());
        dst.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}
impl TryCryptoRng for Script {}

fn vectors() -> Vectors {
    serde_json::from_str(VECTORS).unwrap()
}

fn identity(private: &str) -> LocalIdentity {
    LocalIdentity::from_private_bytes(Zeroizing::new(bytes(private)))
}

/// A signer for the responder that holds the vectors' cookie, obtained the honest way: by
/// signing the no-psk initiation and consuming the vectors' cookie reply to it.
fn signer_with_cookie(v: &Vectors, now: Instant) -> MacSigner {
    let base = v.cases.iter().find(|c| c.name == "no-psk").unwrap();
    let mut signer = MacSigner::new(&PublicKey(bytes(&base.responder_static_public)));
    let mut msg: [u8; 148] = bytes(&base.initiation);
    signer.sign(&mut msg, now).unwrap();
    let reply = CookieReply::parse(&hex::decode(&v.cookie_reply.message).unwrap()).unwrap();
    signer.consume_cookie_reply(&reply, now).unwrap();
    signer
}

#[test]
fn handshakes_match_the_independent_implementation() {
    let v = vectors();
    assert_eq!(v.cases.len(), 3);
    let now = Instant::now();
    for case in &v.cases {
        let initiator = identity(&case.initiator_static_private);
        let responder = identity(&case.responder_static_private);
        assert_eq!(
            initiator.public_key().0,
            bytes::<32>(&case.initiator_static_public)
        );
        assert_eq!(
            responder.public_key().0,
            bytes::<32>(&case.responder_static_public)
        );
        let psk = || PresharedKey::from_bytes(bytes(&case.preshared_key));

        // Initiator: the same initiation bytes, MACs included.
        let mut i_peer = Peer::new(&initiator, *responder.public_key(), psk());
        let mut i_macs = match case.cookie {
            Some(_) => signer_with_cookie(&v, now),
            None => MacSigner::new(responder.public_key()),
        };
        let mut rng = Script(hex::decode(&case.initiator_ephemeral_private).unwrap());
        let timestamp = Tai64N::from_bytes(bytes(&case.timestamp));
        let init = i_peer
            .create_initiation(
                &initiator,
                case.initiator_index,
                timestamp,
                &mut i_macs,
                now,
                &mut rng,
            )
            .unwrap();
        assert_eq!(
            hex::encode(init),
            case.initiation,
            "{}: initiation",
            case.name
        );

        // Responder: accepts it and answers with the same response bytes.
        let mut r_peer = Peer::new(&responder, *initiator.public_key(), psk());
        let mut r_macs = MacSigner::new(initiator.public_key());
        let incoming = responder
            .open_initiation(&bytes::<148>(&case.initiation))
            .unwrap();
        assert_eq!(incoming.sender_index(), case.initiator_index);
        r_peer
            .consume_initiation(&responder, incoming, now)
            .unwrap();
        let mut rng = Script(hex::decode(&case.responder_ephemeral_private).unwrap());
        let (resp, r_session) = r_peer
            .create_response(case.responder_index, &mut r_macs, now, &mut rng)
            .unwrap();
        assert_eq!(hex::encode(resp), case.response, "{}: response", case.name);

        // Initiator: the same transport keys.
        let i_session = i_peer
            .consume_response(&initiator, &bytes::<92>(&case.response))
            .unwrap();
        assert_eq!(i_session.role, Role::Initiator);
        assert_eq!(
            hex::encode(i_session.send.expose_secret()),
            case.initiator_send_key
        );
        assert_eq!(
            hex::encode(i_session.recv.expose_secret()),
            case.initiator_recv_key
        );
        assert_eq!(r_session.send, i_session.recv);
        assert_eq!(r_session.recv, i_session.send);

        // And the first transport packet under those keys (the router's job later; here it
        // pins the key direction).
        let t = &case.first_transport;
        let mut payload = hex::decode(&t.plaintext).unwrap();
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&t.counter.to_le_bytes());
        let cipher = ChaCha20Poly1305::new(<&Key>::from(i_session.send.expose_secret()));
        let tag = cipher
            .encrypt_inout_detached(&Nonce::from(nonce), &[], payload.as_mut_slice().into())
            .unwrap();
        let mut message = Transport::header(i_session.remote_index, t.counter).to_vec();
        message.extend_from_slice(&payload);
        message.extend_from_slice(&tag);
        assert_eq!(hex::encode(message), t.message, "{}: transport", case.name);
    }
}

#[test]
fn cookie_reply_matches_the_independent_implementation() {
    let v = vectors();
    let c = &v.cookie_reply;
    let now = Instant::now();
    let mut checker = CookieChecker::new(&PublicKey(bytes(&c.responder_static_public)));
    checker.set_secret_for_test(bytes(&c.cookie_secret), now);
    let src_bytes = hex::decode(&c.source_bytes).unwrap();
    let ip: [u8; 4] = src_bytes[..4].try_into().unwrap();
    let port = u16::from_be_bytes(src_bytes[4..].try_into().unwrap());
    let src = std::net::SocketAddr::from((ip, port));

    let base = v.cases.iter().find(|c| c.name == "no-psk").unwrap();
    let initiation: [u8; 148] = bytes(&base.initiation);
    assert_eq!(hex::encode(&initiation[116..132]), c.mac1);
    let mut rng = Script(hex::decode(&c.nonce).unwrap());
    let reply = checker
        .create_reply(&initiation, src, now, &mut rng)
        .unwrap();
    assert_eq!(reply.receiver_index, c.receiver_index);
    assert_eq!(hex::encode(reply.to_bytes()), c.message);
}
