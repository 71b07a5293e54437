//! Fuzzes keyd's handshake oracle (`wg_keyd::handshakes::Handshakes`) on its own, with a
//! seeded random number generator and fixed clocks, so every input replays exactly. The
//! oracle has an identity and two configured peers; the input plays a hostile data plane
//! (arbitrary `DatadToKeyd` messages) mixed with honest moves of the two peers (each a
//! real oracle of its own), so responses, crossing initiations and cookie replies that
//! open are reached, not only garbage.
//!
//! Input: chunks of `[op: u8][len: u8][len bytes]`; `op >> 4` picks the peer where one is
//! needed, `op & 15` the move:
//! - 0–7: the bytes decoded with `wg_ipc::decode::<DatadToKeyd>` and, if valid, handled;
//! - 8: the data plane wants a handshake with the peer;
//! - 9: the peer answers keyd's last initiation to it; the response goes back to keyd,
//!   with one byte flipped if the chunk says so (`[position, xor]`);
//! - 10: the peer initiates; keyd answers; the peer takes the response;
//! - 11: a cookie reply (made by the peer's `CookieChecker`) to keyd's last message to the
//!   peer, or to bytes of the input if keyd sent it none;
//! - 12: the data plane retires indices: session indices keyd handed out, picked by the
//!   bytes, and the bytes themselves as raw `u32`s;
//! - 13: the data plane erases the peer's keys (`ZeroKeys`);
//! - 14: the clock advances by `bytes[0]` × 100 ms (wall clock alike);
//! - 15: the data plane restarted (`reset_sessions`), or the peer is removed and
//!   re-added if the first byte is odd.
//!
//! Nothing may panic, and the receiver indices keyd holds are exactly accounted for: each
//! peer waits on at most one pending initiation, and every other live index is a session
//! keyd announced (`KeydToDatad::Session`) that the data plane has not retired. A session
//! index outlives its peer until retired; a reset frees all. So `live_indices()` equals
//! pending initiations plus unretired sessions, with no bound of its own beyond that:
//! an honest data plane retires what it drops.
#![no_main]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use wg_cookie::CookieChecker;
use wg_handshake::LocalIdentity;
use wg_ipc::messages::{DatadToKeyd, KeydToDatad};
use wg_keyd::handshakes::{Answer, Handshakes};
use wg_wire::{PresharedKey, PublicKey};
use zeroize::Zeroizing;

/// keyd's private key, and the peers' (32 equal bytes each).
const KEYD: u8 = 0x42;
const PEERS: [u8; 2] = [1, 2];

fn identity(seed: u8) -> LocalIdentity {
    LocalIdentity::from_private_bytes(Zeroizing::new([seed; 32]))
}

fn source(peer: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 51820 + peer as u16))
}

/// One configured peer, played honestly.
struct Remote {
    key: PublicKey,
    /// The peer's own oracle, which knows keyd.
    oracle: Handshakes,
    /// The cookie side of the peer's interface.
    checker: CookieChecker,
    /// keyd's last initiation for this peer, and its last handshake message to it.
    last_initiation: Option<Vec<u8>>,
    last_message: Option<Vec<u8>>,
}

struct Harness {
    keyd: Handshakes,
    keyd_key: PublicKey,
    remotes: Vec<Remote>,
    rng: StdRng,
    start: Instant,
    now: Instant,
    wall_start: SystemTime,
    /// Session indices keyd announced and the data plane has not retired.
    sessions: BTreeSet<u32>,
}

impl Harness {
    fn new() -> Self {
        let keyd_identity = identity(KEYD);
        let keyd_key = *keyd_identity.public_key();
        let mut keyd = Handshakes::new();
        keyd.set_identity(Some(keyd_identity));
        let remotes = PEERS
            .iter()
            .map(|&seed| {
                let mut oracle = Handshakes::new();
                oracle.set_identity(Some(identity(seed)));
                oracle.upsert_peer(keyd_key, PresharedKey::zero());
                let key = *identity(seed).public_key();
                keyd.upsert_peer(key, PresharedKey::zero());
                Remote {
                    key,
                    oracle,
                    checker: CookieChecker::new(&key),
                    last_initiation: None,
                    last_message: None,
                }
            })
            .collect();
        let start = Instant::now();
        Self {
            keyd,
            keyd_key,
            remotes,
            rng: StdRng::seed_from_u64(0),
            start,
            now: start,
            wall_start: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            sessions: BTreeSet::new(),
        }
    }

    fn wall(&self) -> SystemTime {
        self.wall_start + self.now.duration_since(self.start)
    }

    fn pending(&self) -> Vec<u32> {
        self.remotes
            .iter()
            .filter_map(|r| self.keyd.peer(&r.key)?.pending_local_index())
            .collect()
    }

    /// Hands keyd one message from the data plane and checks what it sends back.
    fn feed(&mut self, msg: DatadToKeyd) -> Vec<KeydToDatad> {
        // The retirements keyd must honour: every index but a pending initiation's.
        if let DatadToKeyd::RetiredIndices { indices } = &msg {
            let pending = self.pending();
            for index in indices {
                if !pending.contains(index) {
                    self.sessions.remove(index);
                }
            }
        }
        let mut out = Vec::new();
        let wall = self.wall();
        let result = self
            .keyd
            .on_datad(msg, self.now, wall, &mut self.rng, &mut out);
        match result {
            Ok(Answer::Initiated | Answer::Responded | Answer::Completed) => {
                assert!(!out.is_empty(), "{result:?} without a message");
            }
            _ => assert!(out.is_empty(), "{result:?} sent {} messages", out.len()),
        }
        for m in &out {
            match m {
                KeydToDatad::Session(s) => {
                    assert!(
                        self.remote(&s.public_key).is_some(),
                        "session for a stranger"
                    );
                    assert!(
                        self.sessions.insert(s.local_index),
                        "session index {} handed out twice",
                        s.local_index
                    );
                }
                KeydToDatad::SendHandshake {
                    public_key,
                    message,
                    endpoint,
                } => {
                    let i = self
                        .remote(public_key)
                        .unwrap_or_else(|| panic!("handshake for a stranger"));
                    let r = &mut self.remotes[i];
                    if endpoint.is_none() {
                        r.last_initiation = Some(message.clone());
                    }
                    r.last_message = Some(message.clone());
                }
                other => panic!("the oracle sent {other:?}"),
            }
        }
        self.check();
        out
    }

    fn remote(&self, key: &PublicKey) -> Option<usize> {
        self.remotes.iter().position(|r| r.key == *key)
    }

    /// The index accounting: pending initiations plus unretired sessions, nothing else.
    fn check(&self) {
        let pending = self.pending();
        for index in &pending {
            assert!(
                !self.sessions.contains(index),
                "index {index} both pending and a session"
            );
        }
        assert_eq!(
            self.keyd.live_indices(),
            pending.len() + self.sessions.len(),
            "keyd holds indices nobody accounts for ({} pending, {} sessions)",
            pending.len(),
            self.sessions.len()
        );
    }

    /// The peer's oracle handles keyd's message; returns what it sends.
    fn remote_handles(&mut self, i: usize, message: Vec<u8>, source: SocketAddr) -> Vec<u8> {
        let wall = self.wall();
        let r = &mut self.remotes[i];
        let mut out = Vec::new();
        let msg = DatadToKeyd::Handshake { message, source };
        let _ = r
            .oracle
            .on_datad(msg, self.now, wall, &mut self.rng, &mut out);
        out.into_iter()
            .find_map(|m| match m {
                KeydToDatad::SendHandshake { message, .. } => Some(message),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn step(&mut self, op: u8, bytes: &[u8]) {
        let i = usize::from(op >> 4) % self.remotes.len();
        let key = self.remotes[i].key;
        match op & 15 {
            0..=7 => {
                if let Ok(msg) = wg_ipc::decode::<DatadToKeyd>(bytes) {
                    self.feed(msg);
                }
            }
            8 => {
                self.feed(DatadToKeyd::WantHandshake {
                    public_key: key,
                    retry: false,
                });
            }
            9 => {
                let Some(init) = self.remotes[i].last_initiation.clone() else {
                    return;
                };
                let mut response = self.remote_handles(i, init, source(99));
                if let [at, xor, ..] = bytes
                    && !response.is_empty()
                {
                    let at = usize::from(*at) % response.len();
                    response[at] ^= xor;
                }
                if !response.is_empty() {
                    self.feed(DatadToKeyd::Handshake {
                        message: response,
                        source: source(i),
                    });
                }
            }
            10 => {
                let wall = self.wall();
                let r = &mut self.remotes[i];
                let mut out = Vec::new();
                let want = DatadToKeyd::WantHandshake {
                    public_key: self.keyd_key,
                    retry: false,
                };
                let _ = r
                    .oracle
                    .on_datad(want, self.now, wall, &mut self.rng, &mut out);
                let Some(KeydToDatad::SendHandshake { message, .. }) = out.pop() else {
                    return;
                };
                let answer = self.feed(DatadToKeyd::Handshake {
                    message,
                    source: source(i),
                });
                if let Some(KeydToDatad::SendHandshake { message, .. }) = answer.last() {
                    self.remote_handles(i, message.clone(), source(99));
                }
            }
            11 => {
                let target = self.remotes[i]
                    .last_message
                    .clone()
                    .unwrap_or_else(|| bytes.to_vec());
                let r = &mut self.remotes[i];
                if let Ok(reply) =
                    r.checker
                        .create_reply(&target, source(99), self.now, &mut self.rng)
                {
                    self.feed(DatadToKeyd::CookieReply {
                        message: reply.to_bytes().to_vec(),
                    });
                }
            }
            12 => {
                let sessions: Vec<u32> = self.sessions.iter().copied().collect();
                let mut indices: Vec<u32> = bytes
                    .iter()
                    .filter_map(|b| sessions.get(usize::from(*b)).copied())
                    .collect();
                indices.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
                self.feed(DatadToKeyd::RetiredIndices { indices });
            }
            13 => {
                self.feed(DatadToKeyd::ZeroKeys { public_key: key });
            }
            14 => {
                let steps = bytes.first().copied().unwrap_or(1);
                self.now += Duration::from_millis(u64::from(steps) * 100);
            }
            _ => {
                if bytes.first().is_some_and(|b| b & 1 == 1) {
                    // The peer's sessions stay until the data plane retires them.
                    self.keyd.remove_peer(&key);
                    assert!(self.keyd.peer(&key).is_none());
                    self.keyd.upsert_peer(key, PresharedKey::zero());
                } else {
                    self.keyd.reset_sessions();
                    self.sessions.clear();
                }
                self.check();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut harness = Harness::new();
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(len);
        rest = next;
        harness.step(*op, chunk);
    }
});
