//! One simulated WireGuard interface: glue between the real data-plane core
//! ([`wg_device::Device`]) and the real handshake oracle ([`wg_keyd::handshakes::Handshakes`]),
//! the two halves the daemon runs in datad and keyd.
//!
//! Where the daemon sends an IPC message from one process to the other, the node hands it
//! over in a synchronous pump ([`Node::pump`]): after every input, each message the device
//! queued for keyd goes to the oracle, and each answer back to the device, until both are
//! quiet. Nothing of either half is copied here: this file configures them, feeds them
//! inputs, moves their outputs into the network and keeps a log of what happened.
//!
//! Deliberate differences from the daemon: the IPC round trip is synchronous (keyd's answer
//! is handled before the next input, where the daemon may interleave other packets), and
//! keyd's data-plane budgets (`wg_keyd::link`) are left out (they bound a hostile data
//! plane; this one is honest).

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use rand::SeedableRng;
use rand::rngs::StdRng;
use wg_device::{Device, Encapsulated, KeydToDatad, Received};
use wg_handshake::{LocalIdentity, Peer};
use wg_keyd::handshakes::{Answer, Handshakes, Refusal};
use wg_messages::messages::PeerUpdate;
use wg_router::{DropReason, HEADROOM, PeerId, Router, TAILROOM};
use wg_timers::PeerTimers;
use wg_wire::{KEY_LEN, PresharedKey, PublicKey};
use zeroize::Zeroizing;

use crate::clock::Clock;

/// keyd's time per handshake message unless [`Node::set_keyd_handshake_cost`] says
/// otherwise: what the release build's responder spends per handshake on the 2-core
/// benchmark machine (docs/benchmarks.md), so about 4,000 a second.
pub const KEYD_HANDSHAKE_COST: Duration = Duration::from_micros(250);
use crate::network::Datagram;
use crate::packet::{inner_packet, payload_id};
use crate::record::{Counters, Event, EventKind, Receipt, SendOutcome};

/// How to build a [`Node`].
pub struct NodeConfig {
    /// A short name for messages ("A", "B").
    pub name: &'static str,
    /// The node's static private key.
    pub private_key: Zeroizing<[u8; KEY_LEN]>,
    /// The remote peer's static public key.
    pub remote_public: PublicKey,
    /// The pre-shared key of the pair.
    pub psk: PresharedKey,
    /// The node's tunnel address; its packets carry it as source.
    pub inner: Ipv4Addr,
    /// The remote peer's tunnel address: its `/32` is the peer's only allowed IP.
    pub remote_inner: Ipv4Addr,
    /// The node's UDP address.
    pub endpoint: SocketAddr,
    /// The remote peer's UDP address, if configured (else learned from its packets).
    pub remote_endpoint: Option<SocketAddr>,
    /// The persistent keepalive interval configured for the remote peer.
    pub persistent_keepalive: Option<NonZeroU16>,
    /// Seed of the node's RNGs (indices, ephemeral keys, jitter, cookie secrets).
    pub rng_seed: u64,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("remote_public", &self.remote_public)
            .field("inner", &self.inner)
            .field("remote_inner", &self.remote_inner)
            .field("endpoint", &self.endpoint)
            .field("remote_endpoint", &self.remote_endpoint)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish_non_exhaustive()
    }
}

/// A WireGuard interface: the data-plane core and the handshake oracle, with its peers.
pub struct Node {
    name: &'static str,
    clock: Clock,
    endpoint: SocketAddr,
    inner: Ipv4Addr,
    /// The first peer: the one [`Node::send_ip`] sends to and the one-peer accessors show.
    remote: PublicKey,
    remote_inner: Ipv4Addr,
    device: Device,
    oracle: Handshakes,
    /// keyd's RNG (indices, ephemeral keys); the device has its own.
    keyd_rng: StdRng,
    /// keyd's time per handshake message on the virtual clock.
    keyd_handshake_cost: Duration,
    /// When keyd finishes the handshake messages it was given.
    keyd_busy_until: Instant,
    /// When keyd starts on each handshake message it was given and has not yet started:
    /// the queue whose length puts the device under load.
    keyd_queue: VecDeque<Instant>,
    outbox: Vec<Datagram>,
    events: Vec<Event>,
    delivered: HashMap<u64, u32>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("device", &self.device)
            .field("oracle", &self.oracle)
            .field("outbox", &self.outbox.len())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node configured as `wg set` would leave it: identity, one peer with its allowed IP
    /// and endpoint, timers started at `now`. Configuration travels as keyd sends it.
    pub fn new(config: NodeConfig, clock: Clock, now: Instant) -> Result<Self, DropReason> {
        let identity = LocalIdentity::from_private_bytes(config.private_key);
        let public_key = *identity.public_key();
        let mut seeds = StdRng::seed_from_u64(config.rng_seed);
        let device = Device::new(StdRng::from_rng(&mut seeds));
        let mut oracle = Handshakes::new();
        oracle.set_identity(Some(identity));
        let mut node = Self {
            name: config.name,
            clock,
            endpoint: config.endpoint,
            inner: config.inner,
            remote: config.remote_public,
            remote_inner: config.remote_inner,
            device,
            oracle,
            keyd_rng: StdRng::from_rng(&mut seeds),
            keyd_handshake_cost: KEYD_HANDSHAKE_COST,
            keyd_busy_until: now,
            keyd_queue: VecDeque::new(),
            outbox: Vec::new(),
            events: Vec::new(),
            delivered: HashMap::new(),
        };
        node.deliver_from_keyd(
            KeydToDatad::Interface {
                public_key: Some(public_key),
            },
            now,
        );
        node.add_peer(
            config.remote_public,
            config.psk,
            config.remote_inner,
            config.remote_endpoint,
            config.persistent_keepalive,
            now,
        )?;
        node.keyd_idle(now);
        Ok(node)
    }

    /// Configures one more peer (keyd's `upsert_peer`, then the `Peer` update it sends the
    /// data plane), with `allowed` as its only allowed IP.
    pub fn add_peer(
        &mut self,
        public_key: PublicKey,
        psk: PresharedKey,
        allowed: Ipv4Addr,
        endpoint: Option<SocketAddr>,
        persistent_keepalive: Option<NonZeroU16>,
        now: Instant,
    ) -> Result<(), DropReason> {
        self.oracle.upsert_peer(public_key, psk);
        let update = PeerUpdate {
            public_key,
            endpoint,
            allowed_ips: vec![IpNet::V4(Ipv4Net::from(allowed))],
            persistent_keepalive: persistent_keepalive.map_or(0, NonZeroU16::get),
            more_allowed_ips: false,
        };
        self.deliver_from_keyd(KeydToDatad::Peer(update), now);
        match self.device.peer_id(&public_key) {
            Some(_) => Ok(()),
            None => Err(DropReason::UnknownPeer),
        }
    }

    // ----- inspection -----

    /// The node's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The node's UDP address.
    pub fn endpoint(&self) -> SocketAddr {
        self.endpoint
    }

    /// Moves the node to another UDP address (it roams): what it sends from now on comes
    /// from there, and datagrams still addressed to the old one no longer reach it.
    pub fn set_endpoint(&mut self, endpoint: SocketAddr) {
        self.endpoint = endpoint;
    }

    /// The node's static public key.
    pub fn public_key(&self) -> PublicKey {
        self.oracle.public_key().unwrap_or(self.remote)
    }

    /// The data-plane core.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The data-plane core, mutable: to put it under load, say.
    pub fn device_mut(&mut self) -> &mut Device {
        &mut self.device
    }

    /// The router (keypairs, staging, counters).
    pub fn router(&self) -> &Router {
        self.device.router()
    }

    /// The first remote peer's id in the router.
    pub fn peer_id(&self) -> PeerId {
        self.peer_of(&self.remote)
    }

    /// The id of the peer with `public_key`.
    #[allow(clippy::expect_used)] // the node configures its peers and never removes one
    pub fn peer_of(&self, public_key: &PublicKey) -> PeerId {
        self.device
            .peer_id(public_key)
            .expect("a node's peers are configured at construction and never removed")
    }

    /// The first remote peer's timers.
    #[allow(clippy::expect_used)] // the node configures its peers and never removes one
    pub fn timers(&self) -> &PeerTimers {
        self.device
            .timers(self.peer_id())
            .expect("a node's peers are configured at construction and never removed")
    }

    /// The first remote peer's handshake state, as keyd holds it.
    #[allow(clippy::expect_used)] // the node configures its peers and never removes one
    pub fn handshake(&self) -> &Peer {
        self.oracle
            .peer(&self.remote)
            .expect("a node's peers are configured at construction and never removed")
    }

    /// Receiver indices keyd holds (pending initiations and sessions).
    pub fn live_indices(&self) -> usize {
        self.oracle.live_indices()
    }

    /// Whether the router has a keypair it may send to the first peer with at `now`.
    pub fn can_send(&self, now: Instant) -> bool {
        self.router().can_send(self.peer_id(), now)
    }

    /// Everything the node did, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Number of events matching `pred`.
    pub fn count(&self, pred: impl Fn(&EventKind) -> bool) -> usize {
        self.events.iter().filter(|e| pred(&e.kind)).count()
    }

    /// Times of the events matching `pred`.
    pub fn times(&self, pred: impl Fn(&EventKind) -> bool) -> Vec<Duration> {
        self.events
            .iter()
            .filter(|e| pred(&e.kind))
            .map(|e| e.at)
            .collect()
    }

    /// Tallies of [`events`](Self::events).
    pub fn counters(&self) -> Counters {
        Counters::tally(&self.events)
    }

    /// How often each payload id was delivered to this node.
    pub fn delivered(&self) -> &HashMap<u64, u32> {
        &self.delivered
    }

    /// How often `payload_id` was delivered to this node.
    pub fn delivered_count(&self, payload_id: u64) -> u32 {
        self.delivered.get(&payload_id).copied().unwrap_or(0)
    }

    /// Whether the node answers handshake messages without a valid MAC2 with cookie replies
    /// right now (its load meter, or [`set_under_load`](Self::set_under_load)).
    pub fn under_load(&mut self, now: Instant) -> bool {
        self.keyd_take_due(now);
        self.device.under_load(now)
    }

    /// Forces the node under load (every handshake message must carry MAC2) or lets its
    /// load meter decide again.
    pub fn set_under_load(&mut self, under_load: bool) {
        self.device.set_always_under_load(under_load);
    }

    /// When the node next wants [`poll_timers`](Self::poll_timers).
    pub fn next_deadline(&mut self, now: Instant) -> Option<Instant> {
        [self.device.poll_timeout(now), self.oracle.next_key_expiry()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Takes the datagrams waiting to be sent.
    pub fn take_outbox(&mut self) -> Vec<Datagram> {
        std::mem::take(&mut self.outbox)
    }

    // ----- inputs -----

    /// The application sends an IP packet carrying `payload_id` from this node's tunnel
    /// address to the first peer's.
    pub fn send_ip(&mut self, payload_id: u64, now: Instant) -> SendOutcome {
        self.send_ip_to(self.remote_inner, payload_id, now)
    }

    /// The application sends an IP packet carrying `payload_id` to tunnel address `to`.
    pub fn send_ip_to(&mut self, to: Ipv4Addr, payload_id: u64, now: Instant) -> SendOutcome {
        let packet = inner_packet(self.inner, to, payload_id);
        self.send_raw_ip(&packet, now)
    }

    /// The application sends an arbitrary IP packet: the router routes it by its
    /// destination, whatever its source.
    pub fn send_raw_ip(&mut self, packet: &[u8], now: Instant) -> SendOutcome {
        let id = payload_id(packet);
        let mut buf = vec![0u8; HEADROOM + packet.len() + 16 + TAILROOM];
        let outcome = match self.device.encapsulate(packet, &mut buf, now) {
            Encapsulated::Send { endpoint, len, .. } => {
                buf.truncate(len);
                self.transmit(endpoint, buf);
                self.record(now, EventKind::DataSent { payload_id: id });
                SendOutcome::Sent
            }
            Encapsulated::Staged { .. } => {
                self.record(now, EventKind::DataStaged { payload_id: id });
                SendOutcome::Staged
            }
            Encapsulated::Dropped(reason) => {
                let kind = EventKind::DataDropped {
                    payload_id: id,
                    reason,
                };
                self.record(now, kind);
                SendOutcome::Dropped(reason)
            }
        };
        self.pump(now);
        outcome
    }

    /// A datagram arrived from `from`.
    pub fn receive(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) -> Receipt {
        self.keyd_take_due(now);
        let mut bytes = datagram.to_vec();
        let received = self.device.handle_datagram(&mut bytes, from, now);
        let answer = self.pump(now);
        let receipt = match received {
            Ok(Received::Data { len, .. }) => {
                let id = bytes.get(HEADROOM..HEADROOM + len).and_then(payload_id);
                if let Some(id) = id {
                    *self.delivered.entry(id).or_default() += 1;
                }
                self.record(now, EventKind::Delivered { payload_id: id });
                Receipt::Data { payload_id: id }
            }
            Ok(Received::Keepalive { .. }) => {
                self.record(now, EventKind::KeepaliveReceived);
                Receipt::Keepalive
            }
            Ok(Received::Refused { reason, .. }) => Receipt::Rejected(reason.into()),
            Ok(Received::CookieReplySent) => {
                self.record(now, EventKind::CookieReplySent);
                Receipt::CookieReplySent
            }
            // A handshake message or cookie reply is keyd's to judge: its answer decides.
            Ok(Received::HandshakeToKeyd { under_load }) => {
                self.record(now, EventKind::HandshakeAccepted { under_load });
                self.keyd_receipt(answer, now)
            }
            Ok(Received::CookieReplyToKeyd) => self.keyd_receipt(answer, now),
            Err(discard) => Receipt::Rejected(discard.into()),
        };
        if let Receipt::Rejected(why) = receipt {
            self.record(now, EventKind::Rejected(why));
        }
        receipt
    }

    fn keyd_receipt(&mut self, answer: Option<Result<Answer, Refusal>>, now: Instant) -> Receipt {
        match answer {
            Some(Ok(Answer::Responded)) => Receipt::InitiationAnswered,
            Some(Ok(Answer::Completed)) => Receipt::ResponseConsumed,
            Some(Ok(Answer::CookieConsumed)) => {
                self.record(now, EventKind::CookieReplyConsumed);
                Receipt::CookieReplyConsumed
            }
            Some(Err(refusal)) => Receipt::Rejected(refusal.into()),
            other => unreachable!("keyd answers the datagram it was handed, not with {other:?}"),
        }
    }

    /// Sets keyd's time per handshake message ([`KEYD_HANDSHAKE_COST`] by default).
    pub fn set_keyd_handshake_cost(&mut self, cost: Duration) {
        self.keyd_handshake_cost = cost;
    }

    /// Handshake messages handed to keyd that it has not started on at `now`.
    pub fn keyd_queue_len(&mut self, now: Instant) -> usize {
        self.keyd_take_due(now);
        self.keyd_queue.len()
    }

    /// keyd was handed a handshake message at `now`: it starts on it when it finished
    /// the ones before. (Its answer is computed at once; the model delays only the
    /// moment keyd reports it taken, which is what the device's load decision reads.)
    fn keyd_enqueue(&mut self, now: Instant) {
        let start = self.keyd_busy_until.max(now);
        self.keyd_busy_until = start + self.keyd_handshake_cost;
        self.keyd_queue.push_back(start);
        self.keyd_take_due(now);
    }

    /// Tells the device about the handshake messages keyd has started on by `now`, as
    /// keyd's `HandshakesTaken` does (at once here, not in steps).
    fn keyd_take_due(&mut self, now: Instant) {
        let mut taken = 0;
        while self.keyd_queue.front().is_some_and(|&start| start <= now) {
            self.keyd_queue.pop_front();
            taken += 1;
        }
        if taken > 0 {
            let counted = self.device.handshakes_taken(taken);
            debug_assert!(
                counted.is_ok(),
                "the node counts only what the device queued"
            );
        }
    }

    /// Runs every timer due at `now`, then what keyd does when nothing waits for it: wipe
    /// the ready ephemeral keys that went stale and make new ones while they are wanted.
    /// (The simulation calls this once everything due at `now` was delivered, so a burst
    /// of messages at one instant drains the pool as a flood would.)
    pub fn poll_timers(&mut self, now: Instant) {
        self.keyd_take_due(now);
        self.device.handle_timeout(now);
        self.pump(now);
        self.keyd_idle(now);
    }

    /// keyd with nothing to do: wipes the ready ephemeral keys that went stale and makes
    /// new ones while they are wanted (the service does this after a moment of quiet).
    fn keyd_idle(&mut self, now: Instant) {
        self.oracle.expire_keys(now);
        while self.oracle.wants_refill() {
            self.oracle.refill_one(now, &mut self.keyd_rng);
        }
    }

    /// The ephemeral keys keyd holds ready (public halves), oldest first.
    pub fn ready_keys(&self) -> Vec<[u8; 32]> {
        self.oracle.ready_key_publics()
    }

    /// Uses up `n` send counters of the current keypair without sending anything, as if `n`
    /// packets had been sent and lost on the way (a test can thus move the peer's replay
    /// window without paying for `n` encryptions). Returns how many were used: fewer than
    /// `n` only without a usable keypair.
    pub fn skip_send_counters(&mut self, n: u64, now: Instant) -> u64 {
        let peer = self.peer_id();
        let router = self.device.router_mut();
        let mut used = 0;
        while used < n
            && matches!(
                router.keepalive(peer, now),
                wg_router::Outbound::Send { .. }
            )
        {
            used += 1;
        }
        used
    }

    // ----- the message pump between the two halves -----

    /// Hands every message the device queued for keyd to the oracle and every answer back,
    /// until both are quiet; then moves the device's datagrams to the outbox and its events
    /// to the log. Returns keyd's verdict on the first handshake message or cookie reply
    /// among them (the one the input that started the pump carried).
    fn pump(&mut self, now: Instant) -> Option<Result<Answer, Refusal>> {
        let wall = self.clock.wall(now);
        let mut first = None;
        while let Some(msg) = self.device.poll_keyd() {
            let from_network = msg.is_handshake();
            if from_network {
                self.keyd_enqueue(now);
            }
            let mut answers = Vec::new();
            let verdict = self
                .oracle
                .on_datad(msg, now, wall, &mut self.keyd_rng, &mut answers);
            if from_network && first.is_none() {
                first = Some(verdict);
            }
            for answer in answers {
                self.deliver_from_keyd(answer, now);
            }
        }
        while let Some(transmit) = self.device.poll_transmit() {
            self.device.transmitted(transmit.peer, transmit.bytes.len());
            self.transmit(transmit.destination, transmit.bytes);
        }
        while let Some(event) = self.device.poll_event() {
            if let Some(kind) = EventKind::from_device(event) {
                self.record(now, kind);
            }
        }
        first
    }

    /// One message from keyd to the device. keyd's messages to its own data plane are
    /// well-formed by construction; a violation is a bug the simulation must not hide.
    fn deliver_from_keyd(&mut self, msg: KeydToDatad, now: Instant) {
        if let Err(e) = self.device.handle_keyd(msg, now, self.clock.wall(now)) {
            unreachable!("the key process broke protocol with its own data plane: {e}");
        }
    }

    fn record(&mut self, now: Instant, kind: EventKind) {
        self.events.push(Event {
            at: self.clock.elapsed(now),
            kind,
        });
    }

    fn transmit(&mut self, to: SocketAddr, bytes: Vec<u8>) {
        self.outbox.push(Datagram {
            from: self.endpoint,
            to,
            bytes,
        });
    }
}
