#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The device driven as datad drives it, against keyd's real handshake oracle
//! (`wg_keyd::handshakes::Handshakes`), sans-IO and deterministic: seeded RNGs, a virtual
//! `Instant` advanced by additions, a wall clock derived from it. Two devices (A and B)
//! exchange their `Transmit`s and the data they seal through a synchronous "network" that
//! can also lose everything. What used to need root (a TUN device, sockets, two processes
//! per side) is reached here: every drop reason, load and cookies, keepalives, rekeying,
//! staging, key erasure, statistics and keyd's protocol checks.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use rand::SeedableRng;
use rand::rngs::StdRng;
use wg_cookie::CookieChecker;
use wg_keyd::handshakes::LocalIdentity;
use wg_keyd::handshakes::{Answer, Handshakes, Refusal, peer_update};
use wg_messages::messages::{Hello, PeerUpdate, Role, STATS_PER_MESSAGE};
use wg_router::{HEADROOM, Outbound, PeerId, TAILROOM};
use wg_timers::{
    KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REJECT_AFTER_TIME, REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX,
};
use wg_wire::{CookieReply, INITIATION_LEN, PresharedKey, PublicKey, RESPONSE_LEN, WireError};
use zeroize::Zeroizing;

use crate::{
    DatadToKeyd, Device, DeviceError, Discard, DropReason, Encapsulated, Event, KeydToDatad,
    MAX_QUEUED_HANDSHAKES, Received, Transmit, TransmitKind,
};

// ----- fixtures -----

const A: char = 'a';
const B: char = 'b';
const A_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);
const B_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 51820);
/// A third peer of A's that no device answers for: what is sent there is lost.
const C_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(203, 0, 113, 3)), 51820);
const A_INNER: [u8; 4] = [10, 0, 0, 1];
const B_INNER: [u8; 4] = [10, 0, 0, 2];
const C_INNER: [u8; 4] = [10, 0, 0, 3];
/// The wall clock at the virtual `t0` (November 2023).
const WALL0_SECS: u64 = 1_700_000_000;

fn identity(seed: u8) -> LocalIdentity {
    LocalIdentity::from_private_bytes(Zeroizing::new([seed; 32]))
}

fn key(seed: u8) -> PublicKey {
    *identity(seed).public_key()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// An IPv4 packet of `len` bytes in all (a 20-byte header with the right total length and
/// checksum), its payload a pattern seeded by `tag` so packets can be told apart.
fn ipv4(src: [u8; 4], dst: [u8; 4], len: usize, tag: u8) -> Vec<u8> {
    assert!((20..=usize::from(u16::MAX)).contains(&len));
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    p[8] = 64;
    p[9] = 253; // RFC 3692 experimentation
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let mut sum: u32 = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    for (i, b) in p[20..].iter_mut().enumerate() {
        *b = tag.wrapping_add(i as u8);
    }
    p
}

/// A small packet from A to B.
fn a_to_b(tag: u8) -> Vec<u8> {
    ipv4(A_INNER, B_INNER, 60, tag)
}

/// A small packet from B to A.
fn b_to_a(tag: u8) -> Vec<u8> {
    ipv4(B_INNER, A_INNER, 60, tag)
}

/// An initiation from identity `from` to `to`, made by an oracle of its own (no device).
fn raw_initiation(from: u8, to: PublicKey, now: Instant) -> Vec<u8> {
    let mut hs = Handshakes::new();
    hs.set_identity(Some(identity(from)));
    hs.upsert_peer(to, PresharedKey::zero());
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(u64::from(from) + 100);
    let msg = DatadToKeyd::WantHandshake {
        public_key: to,
        retry: false,
    };
    let wall = UNIX_EPOCH + secs(WALL0_SECS);
    assert_eq!(
        hs.on_datad(msg, now, wall, &mut rng, &mut out),
        Ok(Answer::Initiated)
    );
    match out.pop() {
        Some(KeydToDatad::SendHandshake { message, .. }) => message,
        other => panic!("expected an initiation, got {other:?}"),
    }
}

// ----- one side: a device and its keyd -----

/// A device paired with a keyd oracle, pumped synchronously: every message the device has
/// for keyd is answered at once and the answers are handed back, until both are quiet.
struct Node {
    dev: Device,
    hs: Handshakes,
    rng: StdRng,
    addr: SocketAddr,
    t0: Instant,
    /// Every message the device sent keyd, in order.
    to_keyd: Vec<DatadToKeyd>,
    /// What the oracle made of each.
    answers: Vec<Result<Answer, Refusal>>,
}

impl Node {
    /// A device and oracle with neither identity nor peers.
    fn bare(seed: u8, addr: SocketAddr, t0: Instant) -> Self {
        let mut node = Self {
            dev: Device::new(StdRng::seed_from_u64(u64::from(seed) * 1000 + 1)),
            hs: Handshakes::new(),
            rng: StdRng::seed_from_u64(u64::from(seed) * 1000 + 2),
            addr,
            t0,
            to_keyd: Vec::new(),
            answers: Vec::new(),
        };
        node.keyd(KeydToDatad::Hello(Hello::new(Role::Keyd)), t0);
        node
    }

    /// A device and oracle with identity `seed`, configured as keyd configures datad.
    fn new(seed: u8, addr: SocketAddr, t0: Instant) -> Self {
        let mut node = Self::bare(seed, addr, t0);
        node.hs.set_identity(Some(identity(seed)));
        let public_key = node.hs.public_key();
        node.keyd(KeydToDatad::Interface { public_key }, t0);
        node
    }

    /// The wall clock at `now`: moves with the virtual clock (initiation timestamps must
    /// grow, or the responder's oracle takes them for replays).
    fn wall(&self, now: Instant) -> SystemTime {
        UNIX_EPOCH + secs(WALL0_SECS) + now.saturating_duration_since(self.t0)
    }

    /// A message from keyd, which must be within the protocol.
    fn keyd(&mut self, msg: KeydToDatad, now: Instant) {
        let wall = self.wall(now);
        self.dev
            .handle_keyd(msg, now, wall)
            .expect("keyd stays within the protocol");
    }

    /// Configures a peer in oracle and device, as keyd's service does.
    fn add_peer(
        &mut self,
        peer: PublicKey,
        endpoint: Option<SocketAddr>,
        allowed_ips: &[&str],
        persistent_keepalive: u16,
        now: Instant,
    ) -> PeerId {
        self.hs.upsert_peer(peer, PresharedKey::zero());
        let nets = allowed_ips.iter().map(|s| net(s)).collect();
        for msg in peer_update(peer, endpoint, nets, persistent_keepalive) {
            self.keyd(msg, now);
        }
        self.dev.peer_id(&peer).unwrap()
    }

    /// Answers `msg` with the oracle and hands its answers to the device.
    fn ask_oracle(&mut self, msg: DatadToKeyd, now: Instant) {
        let wall = self.wall(now);
        let mut out = Vec::new();
        let answer = self.hs.on_datad(msg, now, wall, &mut self.rng, &mut out);
        self.answers.push(answer);
        for reply in out {
            self.keyd(reply, now);
        }
    }

    /// Drains the device's messages for keyd into the oracle until both are quiet.
    fn pump(&mut self, now: Instant) {
        while let Some(msg) = self.dev.poll_keyd() {
            self.to_keyd.push(msg.clone());
            let handshake = msg.is_handshake();
            self.ask_oracle(msg, now);
            if handshake {
                self.dev.handshakes_taken(1).unwrap();
            }
        }
    }

    /// The datagrams the device made, counted as sent (as a driver does after a send).
    fn transmits(&mut self) -> Vec<Transmit> {
        let mut out = Vec::new();
        while let Some(t) = self.dev.poll_transmit() {
            self.dev.transmitted(t.peer, t.bytes.len());
            out.push(t);
        }
        out
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.dev.poll_event()).collect()
    }

    /// One datagram from `from`; returns the verdict and, for data, the plaintext.
    fn receive(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> (Result<Received, Discard>, Vec<u8>) {
        let mut datagram = bytes.to_vec();
        let result = self.dev.handle_datagram(&mut datagram, from, now);
        let plaintext = match result {
            Ok(Received::Data { len, .. }) => datagram[HEADROOM..HEADROOM + len].to_vec(),
            _ => Vec::new(),
        };
        self.pump(now);
        (result, plaintext)
    }

    /// Seals one packet read from the TUN device; the transport message if it was sent.
    fn seal(&mut self, packet: &[u8], now: Instant) -> (Encapsulated, Vec<u8>) {
        let mut out = vec![0u8; HEADROOM + packet.len() + TAILROOM];
        let result = self.dev.encapsulate(packet, &mut out, now);
        match result {
            Encapsulated::Send { len, .. } => out.truncate(len),
            _ => out.clear(),
        }
        self.pump(now);
        (result, out)
    }

    fn tick(&mut self, now: Instant) {
        self.dev.handle_timeout(now);
        self.pump(now);
    }

    /// The `WantHandshake` requests the device sent keyd: (peer, retry).
    fn wants(&self) -> Vec<(PublicKey, bool)> {
        self.to_keyd
            .iter()
            .filter_map(|m| match m {
                DatadToKeyd::WantHandshake { public_key, retry } => Some((*public_key, *retry)),
                _ => None,
            })
            .collect()
    }
}

// ----- two sides and a network -----

/// A datagram that reached the other side.
#[derive(Debug)]
struct Delivery {
    from: char,
    /// `None` for data the sender sealed itself (not a `Transmit`).
    kind: Option<TransmitKind>,
    result: Result<Received, Discard>,
    plaintext: Vec<u8>,
}

/// A (10.0.0.1, identity 1) and B (10.0.0.2, identity 2), each the other's only peer.
struct World {
    t0: Instant,
    now: Instant,
    a: Node,
    b: Node,
    /// Whether datagrams between A and B arrive (false: the network eats them).
    link: bool,
    /// Every event, with its time since `t0` and whose it was.
    log: Vec<(Duration, char, Event)>,
    deliveries: Vec<Delivery>,
    /// Datagrams the network ate, by sender.
    lost: Vec<(char, Transmit)>,
}

impl World {
    fn new() -> Self {
        Self::with_keepalive(0)
    }

    /// A's persistent keepalive for B is `a_keepalive` seconds.
    fn with_keepalive(a_keepalive: u16) -> Self {
        let t0 = Instant::now();
        let mut a = Node::new(1, A_ADDR, t0);
        let mut b = Node::new(2, B_ADDR, t0);
        a.add_peer(key(2), Some(B_ADDR), &["10.0.0.2/32"], a_keepalive, t0);
        b.add_peer(key(1), Some(A_ADDR), &["10.0.0.1/32"], 0, t0);
        Self {
            t0,
            now: t0,
            a,
            b,
            link: true,
            log: Vec::new(),
            deliveries: Vec::new(),
            lost: Vec::new(),
        }
    }

    /// A and B after a handshake A initiated at `t0` (no data yet).
    fn established() -> Self {
        let mut w = Self::new();
        w.handshake(A);
        w
    }

    fn node(&mut self, who: char) -> &mut Node {
        if who == A { &mut self.a } else { &mut self.b }
    }

    fn other(who: char) -> char {
        if who == A { B } else { A }
    }

    fn peer_of(who: char) -> PublicKey {
        if who == A { key(2) } else { key(1) }
    }

    fn peer_id(&self, who: char) -> PeerId {
        let node = if who == A { &self.a } else { &self.b };
        node.dev.peer_id(&Self::peer_of(who)).unwrap()
    }

    /// Moves the clock to `t0 + since` without running timers.
    fn at(&mut self, since: Duration) {
        let t = self.t0 + since;
        assert!(t >= self.now, "time only moves forward");
        self.now = t;
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn collect_events(&mut self) {
        let at = self.elapsed();
        for who in [A, B] {
            let events = self.node(who).events();
            self.log.extend(events.into_iter().map(|e| (at, who, e)));
        }
    }

    /// Delivers every `Transmit` to its destination until both sides are quiet.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for from in [A, B] {
                let now = self.now;
                for t in self.node(from).transmits() {
                    moved = true;
                    let to = [(A_ADDR, A), (B_ADDR, B)]
                        .into_iter()
                        .find(|(addr, _)| *addr == t.destination)
                        .map(|(_, who)| who);
                    match to.filter(|_| self.link) {
                        Some(to) => {
                            let src = self.node(from).addr;
                            let (result, plaintext) = self.node(to).receive(&t.bytes, src, now);
                            self.deliveries.push(Delivery {
                                from,
                                kind: Some(t.kind),
                                result,
                                plaintext,
                            });
                        }
                        None => self.lost.push((from, t)),
                    }
                }
            }
            if !moved {
                self.collect_events();
                return;
            }
        }
        panic!("the devices never fell quiet");
    }

    /// Asks `initiator`'s keyd for an initiation, as the device does on a timer's behalf,
    /// and lets the handshake run over the network.
    fn handshake(&mut self, initiator: char) {
        let now = self.now;
        let public_key = Self::peer_of(initiator);
        self.node(initiator).ask_oracle(
            DatadToKeyd::WantHandshake {
                public_key,
                retry: false,
            },
            now,
        );
        self.settle();
        let peer = self.peer_id(initiator);
        assert!(
            self.node(initiator).dev.router().can_send(peer, now),
            "the handshake completed: {:?}",
            self.deliveries
        );
    }

    /// `from` seals `packet`; if it was sent, delivers it (when the link is up) and returns
    /// what the other side made of it.
    fn send(&mut self, from: char, packet: &[u8]) -> (Encapsulated, Option<Delivery>) {
        let now = self.now;
        let (result, bytes) = self.node(from).seal(packet, now);
        let mut delivered = None;
        if let Encapsulated::Send { endpoint, .. } = result {
            assert_eq!(endpoint, self.node(Self::other(from)).addr);
            if self.link {
                let (result, plaintext) = self.deliver(Self::other(from), &bytes);
                delivered = Some(Delivery {
                    from,
                    kind: None,
                    result,
                    plaintext,
                });
            }
        }
        self.settle();
        (result, delivered)
    }

    /// `from` seals a packet that must go out, and returns the transport message unsent.
    fn seal(&mut self, from: char, packet: &[u8]) -> Vec<u8> {
        let now = self.now;
        let (result, bytes) = self.node(from).seal(packet, now);
        assert!(matches!(result, Encapsulated::Send { .. }), "{result:?}");
        self.settle();
        bytes
    }

    /// `bytes` arrive at `to` from the other side's address.
    fn deliver(&mut self, to: char, bytes: &[u8]) -> (Result<Received, Discard>, Vec<u8>) {
        let now = self.now;
        let src = self.node(Self::other(to)).addr;
        let result = self.node(to).receive(bytes, src, now);
        self.settle();
        result
    }

    /// Runs both devices' timers (and the network) up to `t0 + since`.
    fn run_to(&mut self, since: Duration) {
        let end = self.t0 + since;
        for _ in 0..100_000 {
            let now = self.now;
            let next = [self.a.dev.poll_timeout(now), self.b.dev.poll_timeout(now)]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = t.max(now);
                    let now = self.now;
                    self.a.tick(now);
                    self.b.tick(now);
                    self.settle();
                }
                _ => {
                    self.now = self.now.max(end);
                    return;
                }
            }
        }
        panic!("the timers never fell quiet");
    }

    /// `who`'s events, with their times.
    fn events_of(&self, who: char) -> Vec<(Duration, Event)> {
        self.log
            .iter()
            .filter(|(_, w, _)| *w == who)
            .map(|&(at, _, e)| (at, e))
            .collect()
    }

    fn has_event(&self, who: char, event: Event) -> bool {
        self.events_of(who).iter().any(|&(_, e)| e == event)
    }

    /// When `who` recorded `event`.
    fn times_of(&self, who: char, event: Event) -> Vec<Duration> {
        self.events_of(who)
            .into_iter()
            .filter(|&(_, e)| e == event)
            .map(|(at, _)| at)
            .collect()
    }
}

// ----- 1. every drop reason -----

#[test]
fn datagrams_that_are_no_wireguard_message_are_malformed() {
    let t0 = Instant::now();
    let mut node = Node::new(2, B_ADDR, t0);
    node.add_peer(key(1), Some(A_ADDR), &["10.0.0.1/32"], 0, t0);
    let (result, _) = node.receive(&[1, 0], A_ADDR, t0);
    assert_eq!(result, Err(Discard::Malformed(WireError::TooShort(2))));
    let (result, _) = node.receive(&[], A_ADDR, t0);
    assert_eq!(result, Err(Discard::Malformed(WireError::TooShort(0))));
    let (result, _) = node.receive(&[9, 0, 0, 0, 1, 2, 3, 4], A_ADDR, t0);
    assert_eq!(result, Err(Discard::Malformed(WireError::UnknownType(9))));
    // A cookie reply of the wrong length.
    let (result, _) = node.receive(&[3, 0, 0, 0, 1, 2, 3, 4], A_ADDR, t0);
    assert!(
        matches!(
            result,
            Err(Discard::Malformed(WireError::WrongLength { .. }))
        ),
        "{result:?}"
    );
    // A transport message too short for its header and tag: the router's verdict.
    let (result, _) = node.receive(&[4, 0, 0, 0, 1, 2, 3, 4], A_ADDR, t0);
    assert!(
        matches!(
            result,
            Err(Discard::Transport(DropReason::Malformed(
                WireError::WrongLength { .. }
            )))
        ),
        "{result:?}"
    );
    assert!(node.to_keyd.is_empty(), "nothing reached keyd");
}

/// A handshake message of the wrong length is malformed, not a wrong key: the length is
/// checked before the MAC check (which could not find MAC1 and would blame the key).
#[test]
fn a_handshake_message_of_the_wrong_length_is_malformed() {
    let t0 = Instant::now();
    let mut node = Node::new(2, B_ADDR, t0);
    let initiation = raw_initiation(1, key(2), t0);
    let (result, _) = node.receive(&initiation[..100], A_ADDR, t0);
    assert!(
        matches!(
            result,
            Err(Discard::Malformed(WireError::WrongLength { .. }))
        ),
        "{result:?}"
    );
}

#[test]
fn handshakes_without_a_private_key_are_dropped() {
    let t0 = Instant::now();
    let initiation = raw_initiation(1, key(2), t0);
    let mut node = Node::bare(2, B_ADDR, t0);
    let (result, _) = node.receive(&initiation, A_ADDR, t0);
    assert_eq!(result, Err(Discard::NoPrivateKey));
    // keyd says explicitly that there is none.
    node.keyd(KeydToDatad::Interface { public_key: None }, t0);
    let (result, _) = node.receive(&initiation, A_ADDR, t0);
    assert_eq!(result, Err(Discard::NoPrivateKey));
    assert!(node.to_keyd.is_empty());
    // With the key, the same message goes to keyd.
    node.keyd(
        KeydToDatad::Interface {
            public_key: Some(key(2)),
        },
        t0,
    );
    let (result, _) = node.receive(&initiation, A_ADDR, t0);
    assert_eq!(result, Ok(Received::HandshakeToKeyd { under_load: false }));
    assert!(matches!(
        node.to_keyd.as_slice(),
        [DatadToKeyd::Handshake { source: A_ADDR, .. }]
    ));
}

#[test]
fn handshakes_for_another_key_fail_mac1() {
    let t0 = Instant::now();
    let mut node = Node::new(2, B_ADDR, t0);
    node.add_peer(key(1), Some(A_ADDR), &["10.0.0.1/32"], 0, t0);
    // An initiation addressed to identity 3, and identity 3's response meant for A
    // (a response's MAC1 is checked the same way).
    let initiation = raw_initiation(1, key(3), t0);
    let (result, _) = node.receive(&initiation, A_ADDR, t0);
    assert_eq!(result, Err(Discard::InvalidMac1));
    let mut c = Node::new(3, C_ADDR, t0);
    c.add_peer(key(1), Some(A_ADDR), &[], 0, t0);
    assert_eq!(
        c.receive(&initiation, A_ADDR, t0).0,
        Ok(Received::HandshakeToKeyd { under_load: false })
    );
    let response = c
        .transmits()
        .into_iter()
        .find(|t| t.kind == TransmitKind::Response)
        .expect("identity 3 answers its initiation");
    let (result, _) = node.receive(&response.bytes, C_ADDR, t0);
    assert_eq!(result, Err(Discard::InvalidMac1));
    // A flipped bit in MAC1 of a message for us.
    let mut forged = raw_initiation(1, key(2), t0);
    forged[INITIATION_LEN - 32] ^= 1;
    let (result, _) = node.receive(&forged, A_ADDR, t0);
    assert_eq!(result, Err(Discard::InvalidMac1));
    assert!(node.to_keyd.is_empty(), "nothing reached keyd");
}

/// Under load a handshake message needs MAC2: the first gets a cookie reply, which the
/// initiator's keyd takes; its next initiation carries MAC2 and passes, but one source gets
/// a burst of five and then twenty a second.
#[test]
fn under_load_one_source_over_its_burst_is_rate_limited() {
    let mut w = World::new();
    w.b.dev.set_always_under_load(true);
    let now = w.now;
    w.a.ask_oracle(
        DatadToKeyd::WantHandshake {
            public_key: key(2),
            retry: false,
        },
        now,
    );
    w.settle();
    let first = &w.deliveries[0];
    assert_eq!(first.kind, Some(TransmitKind::Initiation));
    assert_eq!(first.result, Ok(Received::CookieReplySent));
    let reply = &w.deliveries[1];
    assert_eq!(
        (reply.from, reply.kind, reply.result),
        (
            B,
            Some(TransmitKind::CookieReply),
            Ok(Received::CookieReplyToKeyd)
        )
    );
    assert_eq!(w.a.answers.last(), Some(&Ok(Answer::CookieConsumed)));
    assert!(
        !w.a.dev.router().can_send(w.peer_id(A), w.now),
        "no session"
    );

    // keyd initiates at most once per REKEY_TIMEOUT; the next initiation has MAC2.
    w.link = false;
    w.at(REKEY_TIMEOUT);
    let now = w.now;
    w.a.ask_oracle(
        DatadToKeyd::WantHandshake {
            public_key: key(2),
            retry: false,
        },
        now,
    );
    w.settle();
    assert!(w.has_event(
        A,
        Event::InitiationSent {
            peer: key(2),
            retry: false,
            with_mac2: true
        }
    ));
    let (_, initiation) = w.lost.pop().unwrap();
    assert_eq!(initiation.kind, TransmitKind::Initiation);

    // The same message five times passes (keyd would refuse the replays, not the device).
    let mut verdicts = Vec::new();
    for _ in 0..7 {
        let mut msg = initiation.bytes.clone();
        verdicts.push(w.b.dev.handle_datagram(&mut msg, A_ADDR, now));
    }
    let accepted = Ok(Received::HandshakeToKeyd { under_load: true });
    assert_eq!(verdicts[..5], [accepted; 5]);
    assert_eq!(verdicts[5..], [Err(Discard::RateLimited); 2]);
    // MAC2 is bound to the source address: from elsewhere, the same bytes get a cookie.
    let mut msg = initiation.bytes.clone();
    let elsewhere = SocketAddr::from(([192, 0, 2, 99], 51820));
    assert_eq!(
        w.b.dev.handle_datagram(&mut msg, elsewhere, now),
        Ok(Received::CookieReplySent)
    );
    // One token comes back every 50 ms.
    let later = now + ms(50);
    let mut msg = initiation.bytes.clone();
    assert_eq!(w.b.dev.handle_datagram(&mut msg, A_ADDR, later), accepted);
    let mut msg = initiation.bytes.clone();
    assert_eq!(
        w.b.dev.handle_datagram(&mut msg, A_ADDR, later),
        Err(Discard::RateLimited)
    );
}

/// However fast handshake messages come, a keyd that takes each one in time never puts the
/// device under load (the kernel's rule: the queue's length, not the rate, decides).
#[test]
fn a_keyd_that_keeps_up_means_no_load_at_any_rate() {
    let t0 = Instant::now();
    let mut node = Node::new(2, B_ADDR, t0);
    node.add_peer(key(1), Some(A_ADDR), &["10.0.0.1/32"], 0, t0);
    let initiation = raw_initiation(1, key(2), t0);
    // 20,000 a second for a quarter of a second.
    for i in 0..5_000u32 {
        let now = t0 + Duration::from_micros(u64::from(i) * 50);
        let mut msg = initiation.clone();
        assert_eq!(
            node.dev.handle_datagram(&mut msg, A_ADDR, now),
            Ok(Received::HandshakeToKeyd { under_load: false }),
            "message {i}"
        );
        assert!(node.dev.poll_keyd().is_some_and(|m| m.is_handshake()));
        node.dev
            .handle_keyd(
                KeydToDatad::HandshakesTaken { count: 1 },
                now,
                SystemTime::now(),
            )
            .unwrap();
    }
    assert_eq!(node.dev.handshakes_queued(), 0);
}

/// keyd reporting more handshake messages taken than datad sent is a protocol violation.
#[test]
fn keyd_taking_more_handshakes_than_were_sent_breaks_protocol() {
    let t0 = Instant::now();
    let mut node = Node::new(2, B_ADDR, t0);
    node.add_peer(key(1), Some(A_ADDR), &["10.0.0.1/32"], 0, t0);
    let mut msg = raw_initiation(1, key(2), t0);
    assert!(node.dev.handle_datagram(&mut msg, A_ADDR, t0).is_ok());
    let taken = |count| KeydToDatad::HandshakesTaken { count };
    assert!(matches!(
        node.dev.handle_keyd(taken(2), t0, SystemTime::now()),
        Err(DeviceError::Protocol(_))
    ));
    assert_eq!(
        node.dev.handshakes_queued(),
        1,
        "nothing taken by a bad report"
    );
    node.dev
        .handle_keyd(taken(1), t0, SystemTime::now())
        .unwrap();
    assert_eq!(node.dev.handshakes_queued(), 0);
}

// `Discard::Cookie` is not reachable from a datagram: `CookieChecker::create_reply` runs
// only after `check` said `SendCookie`, which needs a valid MAC1 and therefore a handshake
// message of the right length (the only input `create_reply` refuses); a fresh secret is
// drawn when the old one is stale, so a cookie always exists and the AEAD cannot fail.

#[test]
fn cookie_replies_must_name_our_latest_handshake_index() {
    let mut w = World::new();
    w.link = false;
    let t0 = w.now;
    // A cookie reply before A sent anything.
    let mut checker = CookieChecker::new(&key(2));
    let mut rng = StdRng::seed_from_u64(9);
    let stray = raw_initiation(1, key(2), t0);
    let reply = checker.create_reply(&stray, A_ADDR, t0, &mut rng).unwrap();
    let (result, _) = w.deliver(A, &reply.to_bytes());
    assert_eq!(result, Err(Discard::UnknownIndex));

    // Two initiations REKEY_TIMEOUT apart: only the latest index is taken.
    let initiations: Vec<Vec<u8>> = [Duration::ZERO, REKEY_TIMEOUT]
        .into_iter()
        .map(|at| {
            w.at(at);
            let now = w.now;
            w.a.ask_oracle(
                DatadToKeyd::WantHandshake {
                    public_key: key(2),
                    retry: false,
                },
                now,
            );
            w.settle();
            w.lost.pop().unwrap().1.bytes
        })
        .collect();
    let now = w.now;
    let old = checker
        .create_reply(&initiations[0], A_ADDR, now, &mut rng)
        .unwrap();
    let (result, _) = w.deliver(A, &old.to_bytes());
    assert_eq!(result, Err(Discard::UnknownIndex), "not the latest");
    let mut other = checker
        .create_reply(&initiations[1], A_ADDR, now, &mut rng)
        .unwrap();
    let latest = other.to_bytes();
    other.receiver_index ^= 0x8000_0000;
    let (result, _) = w.deliver(A, &other.to_bytes());
    assert_eq!(result, Err(Discard::UnknownIndex), "an index never sent");
    assert!(
        !w.a.to_keyd
            .iter()
            .any(|m| matches!(m, DatadToKeyd::CookieReply { .. })),
        "no stray cookie reply reached keyd"
    );
    let (result, _) = w.deliver(A, &latest);
    assert_eq!(result, Ok(Received::CookieReplyToKeyd));
    assert_eq!(w.a.answers.last(), Some(&Ok(Answer::CookieConsumed)));
}

#[test]
fn transport_drops_say_why() {
    let mut w = World::established();
    w.at(secs(1));
    // An index nobody handed out.
    let mut unknown = w.seal(A, &a_to_b(1));
    unknown[4] ^= 0xff;
    assert_eq!(
        w.deliver(B, &unknown).0,
        Err(Discard::Transport(DropReason::UnknownIndex))
    );
    // Tampered ciphertext.
    let mut tampered = w.seal(A, &a_to_b(2));
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(
        w.deliver(B, &tampered).0,
        Err(Discard::Transport(DropReason::Unauthentic))
    );
    // The same message twice.
    let genuine = w.seal(A, &a_to_b(3));
    let (result, plaintext) = w.deliver(B, &genuine);
    assert!(matches!(result, Ok(Received::Data { len: 60, .. })));
    assert_eq!(plaintext, a_to_b(3));
    assert_eq!(
        w.deliver(B, &genuine).0,
        Err(Discard::Transport(DropReason::Replay))
    );
    // An inner source address that is not A's.
    let spoofed = ipv4([10, 9, 9, 9], B_INNER, 40, 4);
    let (_, delivered) = w.send(A, &spoofed);
    let b_sees_a = w.peer_id(B);
    assert_eq!(
        delivered.unwrap().result,
        Ok(Received::Refused {
            peer: b_sees_a,
            reason: DropReason::SourceNotAllowed
        })
    );
    // Sealed now, delivered after the keypair expired.
    let late = w.seal(A, &a_to_b(5));
    w.at(REJECT_AFTER_TIME + secs(1));
    assert_eq!(
        w.deliver(B, &late).0,
        Err(Discard::Transport(DropReason::Expired))
    );
}

// ----- 2. under load -----

#[test]
fn a_keyd_queue_of_512_means_cookie_replies_until_a_second_after_it_was_last_seen() {
    let t0 = Instant::now();
    let mut a = Node::new(1, A_ADDR, t0);
    a.add_peer(key(2), Some(B_ADDR), &["10.0.0.2/32"], 0, t0);
    let mut b = Node::new(2, B_ADDR, t0);
    b.add_peer(key(1), Some(A_ADDR), &["10.0.0.1/32"], 0, t0);
    a.ask_oracle(
        DatadToKeyd::WantHandshake {
            public_key: key(2),
            retry: false,
        },
        t0,
    );
    let initiation = a.transmits().pop().unwrap();
    assert_eq!(initiation.kind, TransmitKind::Initiation);
    let handshake = |b: &mut Node, at: Instant| {
        let mut msg = initiation.bytes.clone();
        b.dev.handle_datagram(&mut msg, A_ADDR, at)
    };
    let accepted = Ok(Received::HandshakeToKeyd { under_load: false });
    // keyd takes none of them: 511 waiting is not load, 512 is (the kernel's 4096 / 8).
    for i in 0..511 {
        assert_eq!(handshake(&mut b, t0), accepted, "message {i}");
    }
    assert!(!b.dev.under_load(t0));
    assert_eq!(handshake(&mut b, t0), accepted);
    assert_eq!(b.dev.handshakes_queued(), MAX_QUEUED_HANDSHAKES / 8);
    // Written to keyd's socket is not taken: still 512.
    while b.dev.poll_keyd().is_some() {}
    let last = t0 + ms(128);
    assert!(b.dev.under_load(last));
    assert_eq!(b.dev.poll_transmit(), None, "no cookie replies yet");
    // keyd catches up; load lasts a second from when the queue was last that long.
    b.dev
        .handle_keyd(
            KeydToDatad::HandshakesTaken { count: 512 },
            last,
            SystemTime::now(),
        )
        .unwrap();
    let t = last + ms(1);
    assert_eq!(handshake(&mut b, t), Ok(Received::CookieReplySent));
    let replies = b.transmits();
    let [reply] = replies.as_slice() else {
        panic!("one cookie reply, got {replies:?}")
    };
    assert_eq!(reply.kind, TransmitKind::CookieReply);
    assert_eq!(reply.destination, A_ADDR);
    assert_eq!(reply.peer, None, "a cookie reply answers an address");
    let parsed = CookieReply::parse(&reply.bytes).unwrap();
    assert_eq!(parsed.receiver_index.to_le_bytes(), initiation.bytes[4..8]);
    // It is good for the initiator.
    assert_eq!(
        a.receive(&reply.bytes, B_ADDR, t).0,
        Ok(Received::CookieReplyToKeyd)
    );
    assert_eq!(a.answers.last(), Some(&Ok(Answer::CookieConsumed)));
    // Load lasts one second from the message that made it.
    let almost = last + Duration::from_secs(1) - Duration::from_nanos(1);
    assert_eq!(handshake(&mut b, almost), Ok(Received::CookieReplySent));
    assert_eq!(handshake(&mut b, last + secs(1)), accepted);
    assert!(!b.dev.under_load(last + secs(1)));
}

// ----- 3. keepalives -----

#[test]
fn data_received_and_nothing_sent_means_a_keepalive_after_keepalive_timeout() {
    let mut w = World::established();
    w.at(secs(1));
    let (_, delivered) = w.send(A, &a_to_b(1));
    assert!(matches!(
        delivered.unwrap().result,
        Ok(Received::Data { .. })
    ));
    let now = w.now;
    assert_eq!(w.b.dev.poll_timeout(now), Some(now + KEEPALIVE_TIMEOUT));
    let sent_before = w.deliveries.len();
    w.run_to(secs(11) - Duration::from_nanos(1));
    assert!(
        !w.has_event(B, Event::KeepaliveSent { peer: key(1) }),
        "{:?}",
        w.log
    );
    w.run_to(secs(11));
    assert_eq!(
        w.times_of(B, Event::KeepaliveSent { peer: key(1) }),
        [secs(11)]
    );
    let keepalive = &w.deliveries[sent_before];
    assert_eq!(keepalive.from, B);
    assert_eq!(keepalive.kind, Some(TransmitKind::Keepalive));
    let a_sees_b = w.peer_id(A);
    assert_eq!(keepalive.result, Ok(Received::Keepalive { peer: a_sees_b }));
    assert_eq!(w.deliveries.len(), sent_before + 1, "one keepalive");
    // The keepalive told A that B hears it: A's new-handshake timer (data sent, nothing
    // heard) is off, and nothing else is due before the keys are erased.
    let now = w.now;
    assert_eq!(
        w.a.dev.poll_timeout(now),
        Some(w.t0 + REJECT_AFTER_TIME * 3)
    );
}

#[test]
fn sending_data_before_keepalive_timeout_cancels_the_keepalive() {
    let mut w = World::established();
    w.at(secs(1));
    w.send(A, &a_to_b(1));
    w.at(secs(5));
    let (_, delivered) = w.send(B, &b_to_a(2));
    assert!(matches!(
        delivered.unwrap().result,
        Ok(Received::Data { .. })
    ));
    w.run_to(secs(30));
    assert!(
        !w.events_of(B)
            .iter()
            .any(|(_, e)| matches!(e, Event::KeepaliveSent { .. })),
        "B's data carried what a keepalive would: {:?}",
        w.log
    );
    // A received B's data and sent nothing: A's keepalive goes out instead (after the
    // one that opened the session).
    assert_eq!(
        w.times_of(A, Event::KeepaliveSent { peer: key(2) }),
        [secs(0), secs(15)]
    );
}

#[test]
fn a_keepalive_due_without_a_keypair_is_skipped_and_asks_for_a_handshake() {
    let mut w = World::with_keepalive(25);
    let now = w.now;
    // Turning the persistent keepalive on sends one at once.
    assert_eq!(w.a.dev.poll_timeout(now), Some(now));
    w.a.dev.handle_timeout(now);
    assert_eq!(w.a.dev.poll_transmit(), None, "nothing to seal it with");
    let events = w.a.events();
    assert_eq!(
        events,
        [
            Event::KeepaliveSkipped {
                peer: key(2),
                reason: DropReason::Expired
            },
            Event::HandshakeWanted {
                peer: key(2),
                retry: false
            }
        ]
    );
    assert!(matches!(
        w.a.dev.poll_keyd(),
        Some(DatadToKeyd::WantHandshake { retry: false, .. })
    ));
}

#[test]
fn a_persistent_keepalive_goes_out_every_interval() {
    let mut w = World::with_keepalive(25);
    // The first one finds no session and asks for one; the initiator's first packet on the
    // new session is a keepalive (B confirms the session with it).
    w.run_to(Duration::ZERO);
    assert!(w.has_event(
        A,
        Event::KeepaliveSkipped {
            peer: key(2),
            reason: DropReason::Expired
        }
    ));
    assert!(w.has_event(B, Event::HandshakeConfirmed { peer: key(1) }));
    w.run_to(secs(80));
    let keepalives = w.times_of(A, Event::KeepaliveSent { peer: key(2) });
    assert_eq!(keepalives, [secs(0), secs(25), secs(50), secs(75)]);
    let at_b: Vec<Received> = w
        .deliveries
        .iter()
        .filter(|d| d.from == A && d.kind == Some(TransmitKind::Keepalive))
        .map(|d| d.result.unwrap())
        .collect();
    assert_eq!(at_b.len(), 4);
    assert!(at_b.iter().all(|r| matches!(r, Received::Keepalive { .. })));
    assert!(
        !w.events_of(B)
            .iter()
            .any(|(_, e)| matches!(e, Event::KeepaliveSent { .. })),
        "keepalives are not answered"
    );
}

// ----- 4. rekeying -----

#[test]
fn an_initiator_sending_on_an_old_keypair_asks_for_a_handshake_once_per_rekey_timeout() {
    let mut w = World::established();
    assert!(w.a.wants().is_empty());
    w.at(REKEY_AFTER_TIME - secs(1));
    w.send(A, &a_to_b(1));
    assert!(w.a.wants().is_empty(), "young enough");
    // The network loses A's initiations: the old session stays.
    w.link = false;
    w.at(REKEY_AFTER_TIME);
    let (sent, _) = w.send(A, &a_to_b(2));
    assert!(matches!(sent, Encapsulated::Send { .. }), "still sent");
    assert_eq!(w.a.wants(), [(key(2), false)]);
    assert_eq!(w.a.answers.last(), Some(&Ok(Answer::Initiated)));
    for t in [ms(1), secs(1), secs(4), REKEY_TIMEOUT - ms(1)] {
        w.at(REKEY_AFTER_TIME + t);
        w.send(A, &a_to_b(3));
    }
    assert_eq!(w.a.wants().len(), 1, "rate-limited by REKEY_TIMEOUT");
    w.at(REKEY_AFTER_TIME + REKEY_TIMEOUT);
    w.send(A, &a_to_b(4));
    assert_eq!(w.a.wants(), [(key(2), false), (key(2), false)]);
    assert!(
        w.a.answers.iter().all(Result::is_ok),
        "the device never asks keyd for what keyd refuses: {:?}",
        w.a.answers
    );
    // The responder's keypair is as old, but the responder does not rekey on send.
    w.at(REKEY_AFTER_TIME + secs(30));
    let (sent, _) = w.send(B, &b_to_a(5));
    assert!(matches!(sent, Encapsulated::Send { .. }));
    assert!(w.b.wants().is_empty());
}

#[test]
fn an_initiator_receiving_on_an_old_keypair_asks_once_per_session_the_responder_never() {
    let last_minute = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
    let mut w = World::established();
    w.link = false;
    /// B's data at `at` reaches A (the network loses only what the devices send
    /// themselves); how many handshakes A asked for on receiving it.
    fn receive_from_b(w: &mut World, at: Duration, tag: u8) -> usize {
        w.at(at);
        let before = w.a.wants().len();
        let bytes = w.seal(B, &b_to_a(tag));
        assert!(matches!(w.deliver(A, &bytes).0, Ok(Received::Data { .. })));
        w.a.wants().len() - before
    }
    assert_eq!(receive_from_b(&mut w, last_minute - ms(1), 1), 0);
    assert_eq!(receive_from_b(&mut w, last_minute, 2), 1);
    assert_eq!(w.a.wants(), [(key(2), false)]);
    // Many more packets, over more than REKEY_TIMEOUT: still one request for this session.
    let mut asked = 0;
    for (i, at) in [1u64, 2, 5, 6, 10, 11, 14].into_iter().enumerate() {
        asked += receive_from_b(&mut w, last_minute + secs(at), i as u8);
    }
    assert_eq!(asked, 0, "once per session: {:?}", w.a.wants());

    // B receives A's data on the same old session and never asks (A, sending on a keypair
    // past REKEY_AFTER_TIME, asks again by the send-side rule: not counted above).
    let bytes = w.seal(A, &a_to_b(9));
    assert!(matches!(w.deliver(B, &bytes).0, Ok(Received::Data { .. })));
    assert!(
        w.b.wants().is_empty(),
        "the responder never asks on receive"
    );

    // A new session (A's retransmission gets through) starts the count afresh.
    w.link = true;
    w.run_to(REJECT_AFTER_TIME + secs(25));
    w.link = false;
    let session = *w
        .times_of(
            A,
            Event::SessionInstalled {
                peer: key(2),
                initiator: true,
            },
        )
        .last()
        .unwrap();
    assert!(session > last_minute, "{:?}", w.log);
    assert_eq!(receive_from_b(&mut w, session + last_minute - ms(1), 20), 0);
    assert_eq!(receive_from_b(&mut w, session + last_minute, 21), 1);
    assert_eq!(
        receive_from_b(&mut w, session + last_minute + secs(6), 22),
        0
    );
    assert!(w.b.wants().is_empty());
}

// ----- 5. staged packets -----

#[test]
fn packets_before_a_session_are_staged_and_flushed_when_the_initiator_installs_it() {
    let mut w = World::new();
    let now = w.now;
    let packets: Vec<Vec<u8>> = (1..=3).map(a_to_b).collect();
    for p in &packets {
        let (result, _) = w.a.seal(p, now);
        assert!(matches!(result, Encapsulated::Staged { .. }), "{result:?}");
    }
    assert_eq!(
        w.a.wants(),
        [(key(2), false)],
        "one request for three packets"
    );
    w.settle();
    let from_a: Vec<Option<TransmitKind>> = w
        .deliveries
        .iter()
        .filter(|d| d.from == A)
        .map(|d| d.kind)
        .collect();
    assert_eq!(
        from_a,
        [
            Some(TransmitKind::Initiation),
            Some(TransmitKind::Staged),
            Some(TransmitKind::Staged),
            Some(TransmitKind::Staged)
        ]
    );
    let received: Vec<&Vec<u8>> = w
        .deliveries
        .iter()
        .filter(|d| d.kind == Some(TransmitKind::Staged))
        .map(|d| &d.plaintext)
        .collect();
    assert_eq!(received, packets.iter().collect::<Vec<_>>(), "in order");
    let a_events: Vec<Event> = w.events_of(A).into_iter().map(|(_, e)| e).collect();
    assert!(a_events.contains(&Event::SessionInstalled {
        peer: key(2),
        initiator: true
    }));
    assert!(a_events.contains(&Event::StagedSent {
        peer: key(2),
        count: 3
    }));
    assert!(
        !a_events.contains(&Event::KeepaliveSent { peer: key(2) }),
        "staged data speaks first, no keepalive needed"
    );
    assert!(w.has_event(B, Event::HandshakeConfirmed { peer: key(1) }));
    let peer = w.peer_id(A);
    assert_eq!(w.a.dev.router().staged_len(peer), 0);
}

#[test]
fn a_responder_flushes_its_staged_packets_when_the_session_is_confirmed() {
    let mut w = World::new();
    let now = w.now;
    // B has something for A, but its initiation is lost.
    let packet = b_to_a(7);
    let (result, _) = w.b.seal(&packet, now);
    assert!(matches!(result, Encapsulated::Staged { .. }));
    let lost = w.b.transmits();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].kind, TransmitKind::Initiation);
    // A initiates; B answers as responder, and flushes only when A's first packet (the
    // initiator's keepalive) confirms the session.
    w.handshake(A);
    let b_events: Vec<Event> = w.events_of(B).into_iter().map(|(_, e)| e).collect();
    let position = |e: Event| b_events.iter().position(|x| *x == e).unwrap();
    let installed = position(Event::SessionInstalled {
        peer: key(1),
        initiator: false,
    });
    let confirmed = position(Event::HandshakeConfirmed { peer: key(1) });
    let flushed = position(Event::StagedSent {
        peer: key(1),
        count: 1,
    });
    assert!(installed < confirmed && confirmed < flushed, "{b_events:?}");
    let from_b: Vec<&Delivery> = w.deliveries.iter().filter(|d| d.from == B).collect();
    assert_eq!(from_b.len(), 2);
    assert_eq!(from_b[0].kind, Some(TransmitKind::Response));
    assert_eq!(from_b[1].kind, Some(TransmitKind::Staged));
    assert!(matches!(
        from_b[1].result,
        Ok(Received::Data { len: 60, .. })
    ));
    assert_eq!(from_b[1].plaintext, packet);
}

#[test]
fn staged_packets_are_dropped_when_the_handshake_is_given_up() {
    let mut w = World::new();
    w.link = false;
    for tag in 1..=3 {
        let (result, _) = w.send(A, &a_to_b(tag));
        assert!(matches!(result, Encapsulated::Staged { .. }));
    }
    w.run_to(secs(120));
    let gave_up: Vec<(Duration, Event)> = w
        .events_of(A)
        .into_iter()
        .filter(|(_, e)| matches!(e, Event::GaveUp { .. }))
        .collect();
    let [(at, event)] = gave_up.as_slice() else {
        panic!("one GaveUp, got {gave_up:?}")
    };
    assert_eq!(
        *event,
        Event::GaveUp {
            peer: key(2),
            staged_dropped: 3
        }
    );
    // The first initiation and MAX_TIMER_HANDSHAKES + 1 retransmissions, each REKEY_TIMEOUT
    // plus jitter after the last; then one more timeout, and the timer gives up.
    let retries = w.a.wants().iter().filter(|(_, retry)| *retry).count();
    assert_eq!(retries, MAX_TIMER_HANDSHAKES as usize + 1);
    assert_eq!(
        w.lost
            .iter()
            .filter(|(from, t)| *from == A && t.kind == TransmitKind::Initiation)
            .count(),
        MAX_TIMER_HANDSHAKES as usize + 2
    );
    let attempts = MAX_TIMER_HANDSHAKES + 2;
    assert!(*at >= REKEY_ATTEMPT_TIME, "{at:?}");
    assert!(*at >= REKEY_TIMEOUT * attempts, "{at:?}");
    assert!(
        *at <= (REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX) * attempts,
        "{at:?}"
    );
    let peer = w.peer_id(A);
    assert_eq!(w.a.dev.router().staged_len(peer), 0);
    assert!(
        w.a.wants().len() == MAX_TIMER_HANDSHAKES as usize + 2,
        "no initiation after giving up: {:?}",
        w.a.wants()
    );
    // New data starts a new attempt.
    let (result, _) = w.send(A, &a_to_b(9));
    assert!(matches!(result, Encapsulated::Staged { .. }));
    assert_eq!(w.a.wants().last(), Some(&(key(2), false)));
}

// ----- 6. key erasure -----

#[test]
fn keys_are_erased_after_three_reject_after_times_without_a_handshake() {
    let mut w = World::established();
    let zero_at = REJECT_AFTER_TIME * 3;
    let now = w.now;
    assert_eq!(w.a.dev.poll_timeout(now), Some(w.t0 + zero_at));
    w.run_to(zero_at - Duration::from_nanos(1));
    assert!(
        !w.log
            .iter()
            .any(|(_, _, e)| matches!(e, Event::KeysZeroed { .. })),
        "{:?}",
        w.log
    );
    w.run_to(zero_at);
    assert_eq!(w.times_of(A, Event::KeysZeroed { peer: key(2) }), [zero_at]);
    assert_eq!(w.times_of(B, Event::KeysZeroed { peer: key(1) }), [zero_at]);
    for node in [&w.a, &w.b] {
        assert!(
            node.to_keyd
                .iter()
                .any(|m| matches!(m, DatadToKeyd::ZeroKeys { .. })),
            "{:?}",
            node.to_keyd
        );
        assert!(node.answers.contains(&Ok(Answer::KeysZeroed)));
        // The router dropped the keypair and told keyd its index is free.
        assert!(
            node.to_keyd.iter().any(
                |m| matches!(m, DatadToKeyd::RetiredIndices { indices } if !indices.is_empty())
            ),
            "{:?}",
            node.to_keyd
        );
        assert_eq!(node.hs.live_indices(), 0, "keyd holds no index any more");
    }
    let now = w.now;
    let peer = w.peer_id(A);
    assert!(!w.a.dev.router().can_send(peer, now));
    assert_eq!(w.a.dev.router().current_keypair_age(peer, now), None);
}

// ----- 7. statistics -----

fn stats(node: &mut Node, request: u32, now: Instant, wall: SystemTime) -> Vec<DatadToKeyd> {
    node.dev
        .handle_keyd(KeydToDatad::StatsRequest { request }, now, wall)
        .unwrap();
    std::iter::from_fn(|| node.dev.poll_keyd()).collect()
}

#[test]
fn statistics_come_in_chunks_with_done_only_on_the_last() {
    let t0 = Instant::now();
    let wall = UNIX_EPOCH + secs(WALL0_SECS);
    let mut node = Node::new(1, A_ADDR, t0);
    let shape = |answer: &[DatadToKeyd]| -> Vec<(u32, usize, bool)> {
        answer
            .iter()
            .map(|m| match m {
                DatadToKeyd::Stats {
                    request,
                    peers,
                    done,
                } => (*request, peers.len(), *done),
                other => panic!("not statistics: {other:?}"),
            })
            .collect()
    };
    assert_eq!(shape(&stats(&mut node, 1, t0, wall)), [(1, 0, true)]);
    let key_of = |i: u16| {
        let mut bytes = [0u8; 32];
        bytes[..2].copy_from_slice(&i.to_le_bytes());
        bytes[31] = 0x42;
        PublicKey::from(bytes)
    };
    let mut configured = HashSet::new();
    let mut add = |node: &mut Node, i: u16| {
        configured.insert(key_of(i));
        for msg in peer_update(key_of(i), None, Vec::new(), 0) {
            node.keyd(msg, t0);
        }
    };
    for i in 0..STATS_PER_MESSAGE as u16 {
        add(&mut node, i);
    }
    assert_eq!(
        shape(&stats(&mut node, 2, t0, wall)),
        [(2, STATS_PER_MESSAGE, true)]
    );
    for i in STATS_PER_MESSAGE as u16..300 {
        add(&mut node, i);
    }
    let answer = stats(&mut node, 7, t0, wall);
    assert_eq!(
        shape(&answer),
        [
            (7, STATS_PER_MESSAGE, false),
            (7, 300 - STATS_PER_MESSAGE, true)
        ]
    );
    let mut seen = HashSet::new();
    for m in &answer {
        if let DatadToKeyd::Stats { peers, .. } = m {
            for p in peers {
                assert!(seen.insert(p.public_key), "each peer once");
                assert_eq!(p.last_handshake, None);
            }
        }
    }
    assert_eq!(seen, configured);
}

#[test]
fn statistics_date_the_last_handshake_by_the_wall_clock_argument() {
    let mut w = World::established();
    w.at(Duration::from_millis(37_500));
    let now = w.now;
    // A wall clock unrelated to the one the handshake ran under.
    let wall = UNIX_EPOCH + secs(1_800_000_000);
    for who in [A, B] {
        let answer = stats(w.node(who), 3, now, wall);
        let [DatadToKeyd::Stats { peers, done, .. }] = answer.as_slice() else {
            panic!("{answer:?}")
        };
        assert!(*done);
        let [p] = peers.as_slice() else {
            panic!("{peers:?}")
        };
        assert_eq!(p.public_key, World::peer_of(who));
        // The handshake completed at t0, 37.5 s before `now`.
        assert_eq!(p.last_handshake, Some((1_800_000_000 - 38, 500_000_000)));
        assert_eq!(p.endpoint, Some(w.node(World::other(who)).addr));
    }
    // Byte counters: what one side sent the other received (A: initiation, keepalive;
    // B: response), handshake messages included.
    let counters = |w: &mut World, who: char| {
        let answer = stats(w.node(who), 4, now, wall);
        match answer.as_slice() {
            [DatadToKeyd::Stats { peers, .. }] => (peers[0].tx_bytes, peers[0].rx_bytes),
            other => panic!("{other:?}"),
        }
    };
    let (a_tx, a_rx) = counters(&mut w, A);
    let (b_tx, b_rx) = counters(&mut w, B);
    assert_eq!(a_tx, (INITIATION_LEN + 32) as u64);
    assert_eq!(b_tx, RESPONSE_LEN as u64);
    assert_eq!((a_tx, b_tx), (b_rx, a_rx));
}

// ----- 8. keyd's protocol -----

#[test]
fn allowed_ips_without_a_chunked_peer_update_are_a_protocol_error() {
    let t0 = Instant::now();
    let wall = UNIX_EPOCH + secs(WALL0_SECS);
    let mut node = Node::new(1, A_ADDR, t0);
    let chunk = |public_key, more| KeydToDatad::AllowedIps {
        public_key,
        allowed_ips: vec![net("10.0.9.0/24")],
        more,
    };
    assert!(matches!(
        node.dev.handle_keyd(chunk(key(2), false), t0, wall),
        Err(DeviceError::Protocol(_))
    ));
    // After a complete (unchunked) update there is nothing to continue either.
    node.add_peer(key(2), Some(B_ADDR), &["10.0.0.2/32"], 0, t0);
    assert!(matches!(
        node.dev.handle_keyd(chunk(key(2), false), t0, wall),
        Err(DeviceError::Protocol(_))
    ));
    // A chunk for another peer than the update in progress.
    let update = PeerUpdate {
        public_key: key(2),
        endpoint: None,
        allowed_ips: vec![net("10.0.1.0/24")],
        persistent_keepalive: 0,
        more_allowed_ips: true,
    };
    node.keyd(KeydToDatad::Peer(update), t0);
    assert!(matches!(
        node.dev.handle_keyd(chunk(key(3), false), t0, wall),
        Err(DeviceError::Protocol(_))
    ));
    // A hello from someone else than keyd.
    assert!(matches!(
        node.dev
            .handle_keyd(KeydToDatad::Hello(Hello::new(Role::Datad)), t0, wall),
        Err(DeviceError::Protocol(_))
    ));
}

#[test]
fn chunks_beyond_max_allowed_ips_are_a_protocol_error() {
    let max = wg_wire::constants::MAX_ALLOWED_IPS;
    let t0 = Instant::now();
    let wall = UNIX_EPOCH + secs(WALL0_SECS);
    let mut node = Node::new(1, A_ADDR, t0);
    // Distinct IPv6 /128s.
    let nets = |from: usize, n: usize| -> Vec<IpNet> {
        (from..from + n)
            .map(|i| {
                let addr = std::net::Ipv6Addr::from(0xfd00_u128 << 112 | i as u128);
                IpNet::new(addr.into(), 128).unwrap()
            })
            .collect()
    };
    let first = 2048;
    node.keyd(
        KeydToDatad::Peer(PeerUpdate {
            public_key: key(2),
            endpoint: None,
            allowed_ips: nets(0, first),
            persistent_keepalive: 0,
            more_allowed_ips: true,
        }),
        t0,
    );
    // Up to the limit is fine (and still not applied: more follows).
    node.keyd(
        KeydToDatad::AllowedIps {
            public_key: key(2),
            allowed_ips: nets(first, max - first),
            more: true,
        },
        t0,
    );
    assert_eq!(
        node.dev.peer_id(&key(2)),
        None,
        "not applied before the last"
    );
    // One more is not.
    assert_eq!(
        node.dev.handle_keyd(
            KeydToDatad::AllowedIps {
                public_key: key(2),
                allowed_ips: nets(max, 1),
                more: false,
            },
            t0,
            wall,
        ),
        Err(DeviceError::Protocol("too many allowed IPs"))
    );
    assert_eq!(node.dev.peer_id(&key(2)), None, "nothing of it applied");
}

#[test]
fn a_chunked_peer_update_is_applied_only_when_its_last_chunk_arrives() {
    let t0 = Instant::now();
    let mut node = Node::new(1, A_ADDR, t0);
    let peer = node.add_peer(key(2), Some(B_ADDR), &["10.0.0.2/32"], 0, t0);
    let routes_to_b = |node: &mut Node, dst: [u8; 4]| -> bool {
        match node.dev.route_outbound(&ipv4(A_INNER, dst, 40, 0), t0) {
            Outbound::Staged { peer: p } | Outbound::Send { peer: p, .. } => {
                assert_eq!(p, peer);
                true
            }
            Outbound::Dropped(DropReason::NoRoute) => false,
            Outbound::Dropped(other) => panic!("{other:?}"),
        }
    };
    assert!(routes_to_b(&mut node, B_INNER));
    // 5,000 /32s in 10.1.0.0/16 and 10.2.0.0/16: three messages, as keyd sends them.
    let nets: Vec<IpNet> = (0..5000u32)
        .map(|i| {
            let second = if i < 2500 { 1 } else { 2 };
            let j = i % 2500;
            let addr = Ipv4Addr::new(10, second, (j / 256) as u8, (j % 256) as u8);
            IpNet::new(addr.into(), 32).unwrap()
        })
        .collect();
    let messages = peer_update(key(2), None, nets, 0);
    assert_eq!(messages.len(), 3);
    assert!(matches!(
        &messages[0],
        KeydToDatad::Peer(PeerUpdate {
            more_allowed_ips: true,
            ..
        })
    ));
    let total = messages.len();
    for (i, msg) in messages.into_iter().enumerate() {
        node.keyd(msg, t0);
        let last = i + 1 == total;
        assert_eq!(routes_to_b(&mut node, B_INNER), !last, "after message {i}");
        assert_eq!(
            routes_to_b(&mut node, [10, 1, 0, 0]),
            last,
            "after message {i}"
        );
        assert_eq!(
            routes_to_b(&mut node, [10, 2, 9, 195]),
            last,
            "after message {i}"
        );
    }
    assert!(!routes_to_b(&mut node, [10, 2, 9, 196]));
    assert_eq!(
        node.dev.peer_id(&key(2)),
        Some(peer),
        "the same peer, updated"
    );
}

// ----- 9. poll_timeout -----

#[test]
fn poll_timeout_is_the_earliest_peer_deadline_and_handle_timeout_acts_on_it() {
    let t0 = Instant::now();
    assert_eq!(Node::new(1, A_ADDR, t0).dev.poll_timeout(t0), None);

    let mut w = World::established();
    let now = w.now;
    let c = w.a.add_peer(key(3), Some(C_ADDR), &["10.0.0.3/32"], 0, now);
    // B's data at 1 s: A owes a keepalive at 11 s.
    w.at(secs(1));
    let bytes = w.seal(B, &b_to_a(1));
    assert!(matches!(w.deliver(A, &bytes).0, Ok(Received::Data { .. })));
    // A's data for C at 2 s: staged, an initiation into the void, a retransmission at
    // 7 s plus jitter.
    w.at(secs(2));
    let (result, _) = w.send(A, &ipv4(A_INNER, C_INNER, 40, 2));
    assert!(matches!(result, Encapsulated::Staged { .. }));
    assert_eq!(w.lost.len(), 1);
    let b = w.peer_id(A);
    let now = w.now;
    let b_due = w.a.dev.timers(b).unwrap().next_deadline().unwrap();
    let c_due = w.a.dev.timers(c).unwrap().next_deadline().unwrap();
    assert_eq!(b_due, w.t0 + secs(11));
    assert!(c_due >= w.t0 + secs(7) && c_due <= w.t0 + secs(7) + REKEY_TIMEOUT_JITTER_MAX);
    assert_eq!(w.a.dev.poll_timeout(now), Some(c_due));

    // Just before, nothing happens.
    w.a.tick(c_due - Duration::from_nanos(1));
    assert!(w.a.events().is_empty());
    assert!(w.a.transmits().is_empty());
    // At the deadline, C's initiation is retransmitted.
    let wants = w.a.wants().len();
    w.a.tick(c_due);
    assert_eq!(w.a.wants()[wants..], [(key(3), true)]);
    let sent = w.a.transmits();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].kind, sent[0].destination),
        (TransmitKind::Initiation, C_ADDR)
    );
    assert!(w.a.events().contains(&Event::InitiationSent {
        peer: key(3),
        retry: true,
        with_mac2: false
    }));
    // Next is B's keepalive (C's next retransmission is after 12 s).
    assert_eq!(w.a.dev.poll_timeout(c_due), Some(w.t0 + secs(11)));
    w.a.tick(w.t0 + secs(11));
    let sent = w.a.transmits();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].kind, sent[0].destination),
        (TransmitKind::Keepalive, B_ADDR)
    );
    assert_eq!(w.a.events(), [Event::KeepaliveSent { peer: key(2) }]);
    let next = w.a.dev.poll_timeout(w.t0 + secs(11)).unwrap();
    assert!(next >= w.t0 + secs(12), "{:?}", next - w.t0);
}

// ----- 10. MTU -----

#[test]
fn padding_never_goes_past_the_mtu() {
    let mut w = World::established();
    let packet = ipv4(A_INNER, B_INNER, 1281, 3);
    // The default MTU (1420): padded to a multiple of 16.
    let sealed = w.seal(A, &packet);
    assert_eq!(sealed.len(), 1296 + 32);
    let (result, plaintext) = w.deliver(B, &sealed);
    assert!(matches!(result, Ok(Received::Data { len: 1281, .. })));
    assert_eq!(plaintext, packet);
    // An MTU of 1281: a full-size packet is not padded.
    w.a.dev.set_mtu(1281);
    let sealed = w.seal(A, &packet);
    assert_eq!(sealed.len(), 1281 + 32);
    let (result, plaintext) = w.deliver(B, &sealed);
    assert!(matches!(result, Ok(Received::Data { len: 1281, .. })));
    assert_eq!(plaintext, packet);
    // Smaller packets still round up to 16 under that MTU.
    let small = ipv4(A_INNER, B_INNER, 1250, 4);
    assert_eq!(w.seal(A, &small).len(), 1264 + 32);
}

#[test]
fn a_packet_from_a_new_address_moves_the_endpoint_and_says_so_once() {
    let mut w = World::established();
    let moved: SocketAddr = "203.0.113.9:4444".parse().unwrap();
    let endpoint_changes = |w: &World| {
        w.events_of(B)
            .into_iter()
            .filter(|(_, e)| matches!(e, Event::EndpointChanged { .. }))
            .count()
    };
    let before = endpoint_changes(&w);
    // A roams: its next packets come from `moved`.
    for tag in 0..3 {
        let bytes = w.seal(A, &a_to_b(tag));
        let now = w.now;
        let (result, _) = w.b.receive(&bytes, moved, now);
        assert!(matches!(result, Ok(Received::Data { .. })), "{result:?}");
        w.settle();
    }
    assert_eq!(
        endpoint_changes(&w),
        before + 1,
        "one change, not one per packet"
    );
    assert!(w.has_event(
        B,
        Event::EndpointChanged {
            peer: World::peer_of(B),
            endpoint: moved,
        }
    ));
    let peer = w.peer_id(B);
    assert_eq!(w.b.dev.router().stats(peer).unwrap().endpoint, Some(moved));
}

#[test]
fn with_roaming_off_a_configured_endpoint_stays_and_without_one_it_is_learned() {
    let mut w = World::established();
    w.b.dev.set_roaming(false);
    let moved: SocketAddr = "203.0.113.9:4444".parse().unwrap();
    let bytes = w.seal(A, &a_to_b(1));
    let now = w.now;
    let (result, _) = w.b.receive(&bytes, moved, now);
    assert!(matches!(result, Ok(Received::Data { .. })), "{result:?}");
    let peer = w.peer_id(B);
    assert_eq!(w.b.dev.router().stats(peer).unwrap().endpoint, Some(A_ADDR));
    assert!(
        !w.events_of(B)
            .iter()
            .any(|(_, e)| matches!(e, Event::EndpointChanged { .. }))
    );
    // A peer configured without an endpoint learns it from a handshake even so.
    let now = w.now;
    let mut c = Node::new(3, "198.51.100.3:3333".parse().unwrap(), now);
    c.dev.set_roaming(false);
    c.add_peer(key(4), None, &["10.0.0.4/32"], 0, now);
    let initiation = raw_initiation(4, key(3), now);
    let from: SocketAddr = "198.51.100.4:4444".parse().unwrap();
    let (result, _) = c.receive(&initiation, from, now);
    assert!(
        matches!(result, Ok(Received::HandshakeToKeyd { .. })),
        "{result:?}"
    );
    let c_peer = c.dev.peer_id(&key(4)).unwrap();
    assert_eq!(c.dev.router().stats(c_peer).unwrap().endpoint, Some(from));
    let sent = c.transmits();
    assert!(sent.iter().any(|t| t.destination == from), "{sent:?}");
    // Roaming on again: B follows A.
    w.b.dev.set_roaming(true);
    let bytes = w.seal(A, &a_to_b(2));
    let now = w.now;
    let (result, _) = w.b.receive(&bytes, moved, now);
    assert!(matches!(result, Ok(Received::Data { .. })), "{result:?}");
    assert_eq!(w.b.dev.router().stats(peer).unwrap().endpoint, Some(moved));
}
