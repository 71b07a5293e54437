//! Fuzzes the key process's handling of a hostile data plane: arbitrary sequences of
//! `DatadToKeyd` messages fed to keyd's sans-IO link (`wg_keyd::link::DatadLink` and the
//! handshake oracle), with keyd's own moves (statistics requests, deadline checks) and a
//! data plane that reads or does not, on a fake clock (and a fixed wall clock and seeded
//! random number generator).
//!
//! Input: chunks of `[control: u8][len: u16 LE][len bytes]`. `control >> 2` advances the
//! clock by that many 100 ms steps (0–6.3 s); `control & 3` is keyd's move first: 0 none,
//! 1 request statistics, 2 the data plane reads everything queued, 3 check the deadlines.
//! Then the bytes are decoded with `wg_ipc::decode::<DatadToKeyd>` and, if valid, handled.
//! A `Misbehaviour` ends the data plane as in keyd: a new link, sessions reset.
//!
//! Nothing may panic, and what keyd lets through must be true:
//! - a finished statistics answer names at most the peers configured when it was asked
//!   for, with handshake times no later than keyd's clock allows;
//! - a deadline check fails exactly when the deadline keyd announced has passed;
//! - keyd's own messages decode; handshakes and sessions are only for configured peers;
//!   initiations per peer stay within one per `REKEY_TIMEOUT` (plus the first).
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use wg_handshake::LocalIdentity;
use wg_ipc::messages::{DatadToKeyd, KeydToDatad};
use wg_keyd::handshakes::Handshakes;
use wg_keyd::link::DatadLink;
use wg_wire::constants::REKEY_TIMEOUT;
use wg_wire::{PresharedKey, PublicKey};
use zeroize::Zeroizing;

/// The configured peers: keys a fuzzer finds easily (32 equal bytes).
const PEERS: [u8; 3] = [1, 2, 3];
/// How far ahead of keyd's clock a handshake time may be (keyd's slack for a clock set
/// meanwhile is one hour).
const CLOCK_SLACK: Duration = Duration::from_secs(3600);

/// keyd's side of one data plane at a time.
struct Keyd {
    handshakes: Handshakes,
    link: DatadLink,
    /// When the current data plane was attached.
    attached: Instant,
    /// Peers configured when the statistics request in flight was made.
    asked_for: Option<usize>,
    /// Initiations the current data plane received, per peer.
    initiations: HashMap<PublicKey, u64>,
}

impl Keyd {
    fn new(now: Instant) -> Self {
        let mut handshakes = Handshakes::new();
        handshakes.set_identity(Some(LocalIdentity::from_private_bytes(Zeroizing::new(
            [0x42; 32],
        ))));
        for k in PEERS {
            handshakes.upsert_peer(PublicKey([k; 32]), PresharedKey::zero());
        }
        Self {
            handshakes,
            link: DatadLink::new(),
            attached: now,
            asked_for: None,
            initiations: HashMap::new(),
        }
    }

    /// Gives up on the data plane and attaches a new one, as keyd does.
    fn restart(&mut self, now: Instant) {
        self.link = DatadLink::new();
        self.handshakes.reset_sessions();
        self.attached = now;
        self.asked_for = None;
        self.initiations.clear();
    }

    /// The data plane reads everything keyd queued; checks each message.
    fn drain(&mut self, now: Instant) {
        while let Some(bytes) = self.link.front() {
            let msg: KeydToDatad = match wg_ipc::decode(bytes) {
                Ok(m) => m,
                Err(e) => panic!("keyd queued a message that does not decode: {e}"),
            };
            match &msg {
                KeydToDatad::SendHandshake {
                    public_key,
                    endpoint,
                    ..
                } => {
                    assert!(configured(public_key), "handshake for {public_key:?}");
                    if endpoint.is_none() {
                        let n = self.initiations.entry(*public_key).or_default();
                        *n += 1;
                        let allowed = 1 + now.duration_since(self.attached).as_secs()
                            / REKEY_TIMEOUT.as_secs();
                        assert!(
                            *n <= allowed,
                            "{n} initiations for {public_key:?} in {:?}",
                            now.duration_since(self.attached)
                        );
                    }
                }
                KeydToDatad::Session(s) => {
                    assert!(configured(&s.public_key), "session for {:?}", s.public_key);
                }
                _ => {}
            }
            self.link.sent_front(now);
        }
    }

    fn check_deadlines(&mut self, now: Instant) {
        let due = self.link.next_deadline().is_some_and(|d| d <= now);
        let late = self.link.check_deadlines(now);
        assert_eq!(
            late.is_err(),
            due,
            "deadline check {late:?} disagrees with the announced deadline"
        );
        if late.is_err() {
            self.restart(now);
        }
    }
}

fn configured(key: &PublicKey) -> bool {
    PEERS.iter().any(|k| key.0 == [*k; 32])
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    // Fixed clocks and randomness: an input replays the same run.
    let wall_start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut rng = StdRng::seed_from_u64(0);
    let mut now = start;
    let mut keyd = Keyd::new(now);
    let mut rest = data;
    while let [control, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (chunk, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_millis(u64::from(control >> 2) * 100);
        let wall = wall_start + now.duration_since(start);
        match control & 3 {
            1 => match keyd.link.request_stats(PEERS.len(), now) {
                Ok(true) => keyd.asked_for = Some(PEERS.len()),
                Ok(false) => assert!(keyd.link.stats_pending()),
                Err(_) => keyd.restart(now),
            },
            2 => keyd.drain(now),
            3 => keyd.check_deadlines(now),
            _ => {}
        }
        let Ok(msg) = wg_ipc::decode::<DatadToKeyd>(chunk) else {
            continue;
        };
        match keyd
            .link
            .on_message(msg, &mut keyd.handshakes, now, wall, &mut rng)
        {
            Ok(outcome) => {
                if let Some(answer) = outcome.stats {
                    let asked = keyd
                        .asked_for
                        .take()
                        .expect("statistics finished without a request");
                    assert!(
                        answer.len() <= asked,
                        "{} peers in an answer for {asked}",
                        answer.len()
                    );
                    for runtime in answer.values() {
                        if let Some(t) = runtime.last_handshake {
                            assert!(t <= wall + CLOCK_SLACK, "handshake at {t:?}");
                        }
                    }
                }
            }
            Err(_) => keyd.restart(now),
        }
    }
    keyd.drain(now);
});
