//! Two nodes, a network between them and a virtual clock that jumps from event to event.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wg_handshake::LocalIdentity;
use wg_wire::PresharedKey;

use crate::clock::Clock;
use crate::network::{Datagram, LinkConditions, Network};
use crate::node::{Node, NodeConfig};
use crate::record::{Receipt, SendOutcome};

/// One of the two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Tunnel address 10.0.0.1, UDP 192.0.2.1:51820.
    A,
    /// Tunnel address 10.0.0.2, UDP 192.0.2.2:51820.
    B,
}

impl Side {
    /// The other peer.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// The peer's tunnel address.
    pub fn inner(self) -> Ipv4Addr {
        match self {
            Side::A => Ipv4Addr::new(10, 0, 0, 1),
            Side::B => Ipv4Addr::new(10, 0, 0, 2),
        }
    }

    /// The peer's UDP address.
    pub fn endpoint(self) -> SocketAddr {
        let ip = match self {
            Side::A => Ipv4Addr::new(192, 0, 2, 1),
            Side::B => Ipv4Addr::new(192, 0, 2, 2),
        };
        SocketAddr::new(ip.into(), 51820)
    }
}

/// How to build a [`Sim`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Seeds every RNG of the run (keys, nodes, network).
    pub seed: u64,
    /// Conditions of both directions.
    pub link: LinkConditions,
    /// A's persistent keepalive interval for B.
    pub persistent_keepalive_a: Option<NonZeroU16>,
    /// B's persistent keepalive interval for A.
    pub persistent_keepalive_b: Option<NonZeroU16>,
    /// Whether B has A's endpoint configured (else it learns it from A's packets).
    pub b_knows_a: bool,
    /// Whether the pair shares a (random, non-zero) pre-shared key.
    pub psk: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            link: LinkConditions::CLEAN,
            persistent_keepalive_a: None,
            persistent_keepalive_b: None,
            b_knows_a: true,
            psk: false,
        }
    }
}

/// Something the simulated applications do at a given time.
#[derive(Debug, Clone, Copy)]
enum AppAction {
    /// Send one packet.
    Send { from: Side },
    /// Send one packet and schedule the next `every` later, while before `until`.
    Periodic {
        from: Side,
        every: Duration,
        until: Instant,
    },
}

struct AppEvent {
    at: Instant,
    seq: u64,
    action: AppAction,
}

impl PartialEq for AppEvent {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for AppEvent {}
impl PartialOrd for AppEvent {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for AppEvent {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Two WireGuard peers, A and B, on a simulated network and a virtual clock.
pub struct Sim {
    a: Node,
    b: Node,
    net: Network,
    clock: Clock,
    now: Instant,
    app: BinaryHeap<AppEvent>,
    app_seq: u64,
    next_payload: u64,
    sent: HashMap<u64, Side>,
    undeliverable: u64,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("elapsed", &self.elapsed())
            .field("a", &self.a)
            .field("b", &self.b)
            .field("net", &self.net)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// Two freshly configured peers that know each other, at virtual time 0.
    pub fn new(config: SimConfig) -> Self {
        let start = Instant::now();
        let clock = Clock::new(start);
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut key = || crate::clock::private_key(&mut rng);
        let (key_a, key_b) = (key(), key());
        let psk = config.psk.then(|| *key());
        let public_a = *LocalIdentity::from_private_bytes(key_a.clone()).public_key();
        let public_b = *LocalIdentity::from_private_bytes(key_b.clone()).public_key();
        let (seed_a, seed_b, seed_net) = (rng.next_u64(), rng.next_u64(), rng.next_u64());
        let node = |side: Side, private_key, remote_public, remote_endpoint, keepalive, seed| {
            let config = NodeConfig {
                name: if side == Side::A { "A" } else { "B" },
                private_key,
                remote_public,
                psk: psk.map_or_else(PresharedKey::zero, PresharedKey::from_bytes),
                inner: side.inner(),
                remote_inner: side.other().inner(),
                endpoint: side.endpoint(),
                remote_endpoint,
                persistent_keepalive: keepalive,
                rng_seed: seed,
            };
            Node::new(config, clock, start)
        };
        let a = node(
            Side::A,
            key_a,
            public_b,
            Some(Side::B.endpoint()),
            config.persistent_keepalive_a,
            seed_a,
        );
        let b = node(
            Side::B,
            key_b,
            public_a,
            config.b_knows_a.then(|| Side::A.endpoint()),
            config.persistent_keepalive_b,
            seed_b,
        );
        let (Ok(a), Ok(b)) = (a, b) else {
            unreachable!("a /32 of a fixed IPv4 address is always a valid allowed IP");
        };
        Self {
            a,
            b,
            net: Network::new(config.link, seed_net),
            clock,
            now: start,
            app: BinaryHeap::new(),
            app_seq: 0,
            next_payload: 1,
            sent: HashMap::new(),
            undeliverable: 0,
        }
    }

    // ----- inspection -----

    /// The current virtual `Instant`.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.clock.elapsed(self.now)
    }

    /// The virtual clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// One of the peers.
    pub fn node(&self, side: Side) -> &Node {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// One of the peers, to change its settings (such as being under load).
    pub fn node_mut(&mut self, side: Side) -> &mut Node {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// The UDP address of a peer.
    pub fn endpoint(&self, side: Side) -> SocketAddr {
        self.node(side).endpoint()
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// The network, to change its conditions or capture datagrams.
    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.net
    }

    /// Sets the conditions of the path toward `to`.
    pub fn set_link_toward(&mut self, to: Side, conditions: LinkConditions) {
        self.net.set_conditions_toward(to.endpoint(), conditions);
    }

    /// Sets the conditions of both directions.
    pub fn set_link(&mut self, conditions: LinkConditions) {
        self.net.set_conditions(conditions);
    }

    /// Every payload id the applications sent, and by whom.
    pub fn sent_payloads(&self) -> &HashMap<u64, Side> {
        &self.sent
    }

    /// Payload ids `from` sent, in increasing order.
    pub fn sent_by(&self, from: Side) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .sent
            .iter()
            .filter(|&(_, &s)| s == from)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Datagrams addressed to neither node.
    pub fn undeliverable(&self) -> u64 {
        self.undeliverable
    }

    // ----- driving -----

    /// `from`'s application sends one packet now; returns its payload id.
    pub fn send(&mut self, from: Side) -> u64 {
        let now = self.now;
        let id = self.app_send(from, now);
        self.flush_outboxes();
        id
    }

    /// `from`'s application sends an arbitrary IP packet now (to spoof a source address,
    /// say); it is routed by its destination.
    pub fn send_raw(&mut self, from: Side, packet: &[u8]) -> SendOutcome {
        let now = self.now;
        let outcome = self.node_mut(from).send_raw_ip(packet, now);
        self.flush_outboxes();
        outcome
    }

    /// `from`'s application will send one packet at virtual time `at`.
    pub fn send_at(&mut self, from: Side, at: Duration) {
        let at = self.clock.at(at);
        self.schedule(at, AppAction::Send { from });
    }

    /// `from`'s application sends a packet now and then every `every` until virtual time
    /// `until` (exclusive).
    pub fn schedule_traffic(&mut self, from: Side, every: Duration, until: Duration) {
        self.schedule_traffic_from(from, self.elapsed(), every, until);
    }

    /// `from`'s application sends a packet at virtual time `first` and then every `every`
    /// until virtual time `until` (exclusive).
    pub fn schedule_traffic_from(
        &mut self,
        from: Side,
        first: Duration,
        every: Duration,
        until: Duration,
    ) {
        let until = self.clock.at(until);
        let first = self.clock.at(first);
        if first < until && !every.is_zero() {
            self.schedule(first, AppAction::Periodic { from, every, until });
        }
    }

    /// Delivers `datagram` to `to` now, bypassing the network (to replay a captured
    /// datagram, say), and sends whatever the node answers.
    pub fn inject(&mut self, to: Side, datagram: &Datagram) -> Receipt {
        let now = self.now;
        let receipt = self
            .node_mut(to)
            .receive(&datagram.bytes, datagram.from, now);
        self.flush_outboxes();
        receipt
    }

    /// When something next happens: a delivery, a timer or an application event.
    pub fn next_event(&mut self) -> Option<Instant> {
        let now = self.now;
        [
            self.net.next_delivery(),
            self.a.next_deadline(now),
            self.b.next_deadline(now),
            self.app.peek().map(|e| e.at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances the clock to the next event and handles everything due then: deliveries,
    /// application events, then both nodes' timers. Returns `false` when nothing is left to
    /// happen.
    pub fn step(&mut self) -> bool {
        let Some(at) = self.next_event() else {
            return false;
        };
        self.now = self.now.max(at);
        let now = self.now;
        while let Some(datagram) = self.net.pop_due(now) {
            self.deliver(&datagram, now);
            self.flush_outboxes();
        }
        while self.app.peek().is_some_and(|e| e.at <= now) {
            if let Some(event) = self.app.pop() {
                self.run_app(event.action, now);
                self.flush_outboxes();
            }
        }
        self.a.poll_timers(now);
        self.b.poll_timers(now);
        self.flush_outboxes();
        true
    }

    /// Runs every event up to and including virtual time `at`, then sets the clock to `at`.
    pub fn run_until(&mut self, at: Duration) {
        let target = self.clock.at(at);
        while self.next_event().is_some_and(|t| t <= target) {
            self.step();
        }
        self.now = self.now.max(target);
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let at = self.elapsed() + duration;
        self.run_until(at);
    }

    fn schedule(&mut self, at: Instant, action: AppAction) {
        self.app_seq += 1;
        self.app.push(AppEvent {
            at,
            seq: self.app_seq,
            action,
        });
    }

    fn app_send(&mut self, from: Side, now: Instant) -> u64 {
        let id = self.next_payload;
        self.next_payload += 1;
        self.sent.insert(id, from);
        self.node_mut(from).send_ip(id, now);
        id
    }

    fn run_app(&mut self, action: AppAction, now: Instant) {
        match action {
            AppAction::Send { from } => {
                self.app_send(from, now);
            }
            AppAction::Periodic { from, every, until } => {
                self.app_send(from, now);
                let next = now + every;
                if next < until {
                    self.schedule(next, AppAction::Periodic { from, every, until });
                }
            }
        }
    }

    fn deliver(&mut self, datagram: &Datagram, now: Instant) {
        let node = if datagram.to == self.a.endpoint() {
            &mut self.a
        } else if datagram.to == self.b.endpoint() {
            &mut self.b
        } else {
            self.undeliverable += 1;
            return;
        };
        node.receive(&datagram.bytes, datagram.from, now);
    }

    fn flush_outboxes(&mut self) {
        let now = self.now;
        for datagram in self.a.take_outbox().into_iter().chain(self.b.take_outbox()) {
            self.net.send(datagram, now);
        }
    }
}
