//! One simulated WireGuard peer with one remote peer.
//!
//! A [`Node`] is the daemon's two workers folded into one value: the data plane's handling
//! of TUN packets, datagrams and timers (`crates/datad/src/plane.rs`) and the key process's
//! handshake oracle (`crates/keyd/src/handshakes.rs`). Where the daemon sends an IPC message
//! from one to the other, the node calls the receiving side's code directly, in the same
//! order, so the simulation exercises the same calls into the sans-IO crates with the same
//! arguments. Each method below names the daemon function it follows.
//!
//! Deliberate differences from the daemon:
//! - the IPC round trip is synchronous: keyd's answer to a request is handled before the
//!   next input, where the daemon may interleave other packets;
//! - "under load" is a flag ([`Node::set_under_load`]) instead of datad's `LoadMeter`, and
//!   the per-source handshake rate limiter is left out (one honest peer never trips it);
//! - one remote peer, so peer lookups by public key or index reduce to a comparison.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use rand::SeedableRng;
use rand::rngs::StdRng;
use wg_cookie::{CookieChecker, CookieError, MacSigner, Verdict};
use wg_handshake::{HandshakeError, IndexTable, LocalIdentity, Peer, Role, Session, Tai64N};
use wg_router::{
    DropReason, HEADROOM, InboundKind, NewSession, Outbound, PeerId, Router, TAILROOM,
};
use wg_timers::{PeerTimers, TimerAction};
use wg_wire::{
    CookieReply, KEY_LEN, MAC_LEN, MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT, PresharedKey, PublicKey, Response, WireError, message_type,
};
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::network::Datagram;
use crate::packet::{inner_packet, payload_id};

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
    /// Seed of the node's RNG (indices, ephemeral keys, jitter, cookie secrets).
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

/// Why a node did not accept a datagram. The daemon drops these with a trace log; the
/// simulation reports them so tests can tell which rule applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not a WireGuard message.
    #[error("not a WireGuard message: {0}")]
    Malformed(#[from] WireError),
    /// A handshake message whose MAC1 is not for our public key.
    #[error("handshake message with an invalid MAC1")]
    InvalidMac1,
    /// The handshake crate refused the message.
    #[error("handshake message refused: {0}")]
    Handshake(#[from] HandshakeError),
    /// A valid initiation from a peer that is not configured.
    #[error("initiation from an unknown peer")]
    UnknownPeer,
    /// A response or cookie reply naming an index we did not hand out (or no longer hold).
    #[error("response or cookie reply for an unknown index")]
    UnknownIndex,
    /// A cookie reply that did not open, or answered nothing.
    #[error("cookie reply refused: {0}")]
    Cookie(#[from] CookieError),
    /// The router dropped a transport message.
    #[error("transport message dropped: {0}")]
    Transport(#[from] DropReason),
}

/// What a node did with a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// An authenticated data packet, written to the (simulated) TUN device; its payload id
    /// if it is a packet of [`inner_packet`]'s format.
    Data {
        /// The payload id carried.
        payload_id: Option<u64>,
    },
    /// An authenticated keepalive.
    Keepalive,
    /// An initiation was accepted and answered with a response.
    InitiationAnswered,
    /// A response completed our handshake.
    ResponseConsumed,
    /// Under load: the handshake message was answered with a cookie reply.
    CookieReplySent,
    /// A cookie reply was accepted; our next handshake message carries MAC2.
    CookieReplyConsumed,
    /// Dropped.
    Rejected(Rejection),
}

/// What became of a packet the application sent with [`Node::send_ip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Sealed and sent with the current keypair.
    Sent,
    /// Held until a session exists.
    Staged,
    /// Not sent.
    Dropped(DropReason),
}

/// Something a node did, for tests to count and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An application packet was sealed and sent at once.
    DataSent {
        /// Its payload id, if it is an [`inner_packet`].
        payload_id: Option<u64>,
    },
    /// An application packet was staged, waiting for a session.
    DataStaged {
        /// Its payload id, if it is an [`inner_packet`].
        payload_id: Option<u64>,
    },
    /// An application packet was dropped by the router.
    DataDropped {
        /// Its payload id, if it is an [`inner_packet`].
        payload_id: Option<u64>,
        /// Why.
        reason: DropReason,
    },
    /// Staged packets were sealed and sent.
    StagedSent {
        /// How many.
        count: usize,
    },
    /// A data packet from the peer was delivered to the (simulated) TUN device.
    Delivered {
        /// Its payload id, if it is an [`inner_packet`].
        payload_id: Option<u64>,
    },
    /// A keepalive was sent.
    KeepaliveSent,
    /// A keepalive was due but not sent: the router had no usable keypair.
    KeepaliveSkipped {
        /// What the router said.
        reason: DropReason,
    },
    /// A keepalive arrived from the peer.
    KeepaliveReceived,
    /// A handshake initiation was sent.
    InitiationSent {
        /// The timers asked for it as a retransmission.
        retry: bool,
        /// It carries a non-zero MAC2 (a cookie from the peer was fresh).
        with_mac2: bool,
    },
    /// A handshake response was sent.
    ResponseSent,
    /// Under load, a cookie reply answered a handshake message.
    CookieReplySent,
    /// A cookie reply from the peer was accepted.
    CookieReplyConsumed,
    /// A handshake message passed the MAC checks (`CookieChecker::check` said `Accept`).
    HandshakeAccepted {
        /// Whether the node was under load, so that MAC2 was verified.
        under_load: bool,
    },
    /// Transport keys were derived and installed in the router.
    SessionInstalled {
        /// We sent the initiation.
        initiator: bool,
    },
    /// The first packet on a responder keypair confirmed it (the handshake is complete).
    HandshakeConfirmed,
    /// The timers gave up on the handshake; staged packets were dropped.
    GaveUp {
        /// How many staged packets were dropped.
        staged_dropped: usize,
    },
    /// All key material was erased (3 x Reject-After-Time without a new session).
    KeysZeroed,
    /// A received datagram was dropped.
    Rejected(Rejection),
}

/// An [`EventKind`] and when it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Virtual time since the simulation started.
    pub at: Duration,
    /// What happened.
    pub kind: EventKind,
}

/// Tallies of a node's [`Event`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Application packets sealed and sent at once.
    pub data_sent: usize,
    /// Application packets staged for want of a session.
    pub data_staged: usize,
    /// Staged packets sealed and sent once a session existed.
    pub staged_sent: usize,
    /// Data packets delivered to the (simulated) TUN device.
    pub delivered: usize,
    /// Keepalives sent.
    pub keepalives_sent: usize,
    /// Keepalives received.
    pub keepalives_received: usize,
    /// Handshake initiations sent.
    pub initiations_sent: usize,
    /// Handshake responses sent.
    pub responses_sent: usize,
    /// Cookie replies sent.
    pub cookie_replies_sent: usize,
    /// Cookie replies accepted.
    pub cookie_replies_consumed: usize,
    /// Sessions installed in the router (as initiator or responder).
    pub sessions: usize,
    /// Sessions installed as initiator: handshakes this node completed.
    pub handshakes_completed: usize,
    /// Handshakes abandoned.
    pub give_ups: usize,
    /// Key-material erasures.
    pub keys_zeroed: usize,
    /// Received datagrams dropped.
    pub rejected: usize,
}

/// One WireGuard peer with one remote peer: handshake, cookies, router and timers.
pub struct Node {
    name: &'static str,
    clock: Clock,
    endpoint: SocketAddr,
    inner: Ipv4Addr,
    remote_inner: Ipv4Addr,

    // The key process's side (`Handshakes`).
    identity: LocalIdentity,
    noise: Peer,
    macs: MacSigner,
    indices: IndexTable<PublicKey>,

    // The data plane's side (`Daemon` and its `PeerSlot`).
    checker: CookieChecker,
    router: Router,
    peer: PeerId,
    timers: PeerTimers,
    /// Sender index of the last handshake message we sent: a cookie reply must name it.
    last_handshake_index: Option<u32>,
    under_load: bool,

    rng: StdRng,
    outbox: Vec<Datagram>,
    events: Vec<Event>,
    delivered: HashMap<u64, u32>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("noise", &self.noise)
            .field("timers", &self.timers)
            .field("outbox", &self.outbox.len())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

/// Whether the MAC2 field of a handshake message is non-zero.
fn has_mac2(message: &[u8]) -> bool {
    message
        .len()
        .checked_sub(MAC_LEN)
        .and_then(|at| message.get(at..))
        .is_some_and(|mac2| mac2.iter().any(|&b| b != 0))
}

impl Node {
    /// A node configured as `wg set` would leave it: identity, one peer with its allowed IP
    /// and endpoint, timers started at `now` (datad's `upsert_peer`).
    pub fn new(config: NodeConfig, clock: Clock, now: Instant) -> Result<Self, DropReason> {
        let identity = LocalIdentity::from_private_bytes(config.private_key);
        let noise = Peer::new(&identity, config.remote_public, config.psk);
        let mut router = Router::new();
        let peer = router.add_peer();
        if let Some(endpoint) = config.remote_endpoint {
            router.set_endpoint(peer, endpoint);
        }
        router.insert_allowed_ip(peer, IpNet::V4(Ipv4Net::from(config.remote_inner)))?;
        let mut timers = PeerTimers::new(None);
        timers.start(now);
        if config.persistent_keepalive.is_some() {
            timers.set_persistent_keepalive(config.persistent_keepalive, now);
        }
        Ok(Self {
            name: config.name,
            clock,
            endpoint: config.endpoint,
            inner: config.inner,
            remote_inner: config.remote_inner,
            checker: CookieChecker::new(identity.public_key()),
            macs: MacSigner::new(&config.remote_public),
            identity,
            noise,
            indices: IndexTable::new(),
            router,
            peer,
            timers,
            last_handshake_index: None,
            under_load: false,
            rng: StdRng::seed_from_u64(config.rng_seed),
            outbox: Vec::new(),
            events: Vec::new(),
            delivered: HashMap::new(),
        })
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

    /// The node's static public key.
    pub fn public_key(&self) -> &PublicKey {
        self.identity.public_key()
    }

    /// The router (keypairs, staging, counters).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The remote peer's id in the router.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// The remote peer's timers.
    pub fn timers(&self) -> &PeerTimers {
        &self.timers
    }

    /// The remote peer's handshake state.
    pub fn handshake(&self) -> &Peer {
        &self.noise
    }

    /// Receiver indices the key-process side holds (pending initiations and sessions).
    pub fn live_indices(&self) -> usize {
        self.indices.len()
    }

    /// Whether the router has a keypair it may send with at `now`.
    pub fn can_send(&self, now: Instant) -> bool {
        self.router.can_send(self.peer, now)
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
        let mut c = Counters::default();
        for event in &self.events {
            match event.kind {
                EventKind::DataSent { .. } => c.data_sent += 1,
                EventKind::DataStaged { .. } => c.data_staged += 1,
                EventKind::StagedSent { count } => c.staged_sent += count,
                EventKind::Delivered { .. } => c.delivered += 1,
                EventKind::KeepaliveSent => c.keepalives_sent += 1,
                EventKind::KeepaliveReceived => c.keepalives_received += 1,
                EventKind::InitiationSent { .. } => c.initiations_sent += 1,
                EventKind::ResponseSent => c.responses_sent += 1,
                EventKind::CookieReplySent => c.cookie_replies_sent += 1,
                EventKind::CookieReplyConsumed => c.cookie_replies_consumed += 1,
                EventKind::SessionInstalled { initiator } => {
                    c.sessions += 1;
                    c.handshakes_completed += usize::from(initiator);
                }
                EventKind::GaveUp { .. } => c.give_ups += 1,
                EventKind::KeysZeroed => c.keys_zeroed += 1,
                EventKind::Rejected(_) => c.rejected += 1,
                EventKind::DataDropped { .. }
                | EventKind::KeepaliveSkipped { .. }
                | EventKind::HandshakeAccepted { .. }
                | EventKind::HandshakeConfirmed => {}
            }
        }
        c
    }

    /// How often each payload id was delivered to this node.
    pub fn delivered(&self) -> &HashMap<u64, u32> {
        &self.delivered
    }

    /// How often `payload_id` was delivered to this node.
    pub fn delivered_count(&self, payload_id: u64) -> u32 {
        self.delivered.get(&payload_id).copied().unwrap_or(0)
    }

    /// Whether the node answers handshake messages without a valid MAC2 with cookie replies.
    pub fn under_load(&self) -> bool {
        self.under_load
    }

    /// Puts the node under load or takes it off. The daemon decides this from its rate of
    /// handshake messages (`LoadMeter`); the simulation sets it directly.
    pub fn set_under_load(&mut self, under_load: bool) {
        self.under_load = under_load;
    }

    /// When the node's timers next want [`poll_timers`](Self::poll_timers).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Takes the datagrams waiting to be sent.
    pub fn take_outbox(&mut self) -> Vec<Datagram> {
        std::mem::take(&mut self.outbox)
    }

    // ----- inputs -----

    /// The application sends an IP packet carrying `payload_id` from this node's tunnel
    /// address to the peer's (datad's `on_tun_packet`).
    pub fn send_ip(&mut self, payload_id: u64, now: Instant) -> SendOutcome {
        let packet = inner_packet(self.inner, self.remote_inner, payload_id);
        self.send_raw_ip(&packet, now)
    }

    /// The application sends an arbitrary IP packet (datad's `on_tun_packet`): the router
    /// routes it by its destination, whatever its source.
    pub fn send_raw_ip(&mut self, packet: &[u8], now: Instant) -> SendOutcome {
        let id = payload_id(packet);
        let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        let outcome = match self.router.route_outbound(packet, now) {
            Outbound::Send {
                endpoint,
                job,
                rekey,
                ..
            } => {
                let outcome = match job.seal(&mut buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        self.transmit(endpoint, buf);
                        self.sent_transport(n, true, now);
                        self.record(now, EventKind::DataSent { payload_id: id });
                        SendOutcome::Sent
                    }
                    Err(reason) => SendOutcome::Dropped(reason),
                };
                if rekey {
                    self.want_handshake(now);
                }
                outcome
            }
            Outbound::Staged { .. } => {
                self.record(now, EventKind::DataStaged { payload_id: id });
                self.want_handshake(now);
                SendOutcome::Staged
            }
            Outbound::Dropped(reason) => SendOutcome::Dropped(reason),
        };
        if let SendOutcome::Dropped(reason) = outcome {
            let kind = EventKind::DataDropped {
                payload_id: id,
                reason,
            };
            self.record(now, kind);
        }
        self.after_event();
        outcome
    }

    /// A datagram arrived from `from` (datad's `on_datagram`).
    pub fn receive(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) -> Receipt {
        let receipt = match message_type(datagram) {
            Ok(kind @ (MESSAGE_INITIATION | MESSAGE_RESPONSE)) => {
                self.on_handshake_message(kind, datagram, from, now)
            }
            Ok(MESSAGE_COOKIE_REPLY) => self.on_cookie_reply(datagram, now),
            Ok(MESSAGE_TRANSPORT) => self.on_transport(datagram, from, now),
            Ok(other) => Receipt::Rejected(Rejection::Malformed(WireError::UnknownType(other))),
            Err(e) => Receipt::Rejected(e.into()),
        };
        if let Receipt::Rejected(why) = receipt {
            self.record(now, EventKind::Rejected(why));
        }
        self.after_event();
        receipt
    }

    /// Runs every timer due at `now` (datad's `on_timers`).
    pub fn poll_timers(&mut self, now: Instant) {
        while let Some(action) = self.timers.poll(now) {
            match action {
                // datad asks keyd (`WantHandshake`); keyd makes the initiation and hands it
                // back (`SendHandshake`).
                TimerAction::SendInitiation { retry } => self.initiate(now, retry),
                TimerAction::SendKeepalive => self.send_keepalive(now),
                TimerAction::GiveUp => {
                    let staged_dropped = self.router.staged_len(self.peer);
                    self.router.clear_staged(self.peer);
                    self.record(now, EventKind::GaveUp { staged_dropped });
                }
                TimerAction::ZeroKeyMaterial => {
                    self.router.clear_keypairs(self.peer);
                    // keyd's `ZeroKeys`.
                    if let Some(index) = self.noise.pending_local_index() {
                        self.indices.remove(index);
                    }
                    self.noise.clear();
                    self.record(now, EventKind::KeysZeroed);
                }
            }
        }
        self.after_event();
    }

    /// Uses up `n` send counters of the current keypair without sending anything, as if `n`
    /// packets had been sent and lost on the way (a test can thus move the peer's replay
    /// window without paying for `n` encryptions). Returns how many were used: fewer than
    /// `n` only without a usable keypair.
    pub fn skip_send_counters(&mut self, n: u64, now: Instant) -> u64 {
        let mut used = 0;
        while used < n && matches!(self.router.keepalive(self.peer, now), Outbound::Send { .. }) {
            used += 1;
        }
        used
    }

    // ----- data plane -----

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

    /// What datad does after every event (`flush_to_keyd`): hand the router's retired
    /// indices to keyd, which frees those no handshake of ours still waits on.
    fn after_event(&mut self) {
        let retired: Vec<u32> = self.router.drain_retired_indices().collect();
        for index in retired {
            let pending = self.indices.get(index).is_some()
                && self.noise.pending_local_index() == Some(index);
            if !pending {
                self.indices.remove(index);
            }
        }
    }

    /// datad's `want_handshake`: asks keyd for an initiation if the timers allow one now.
    fn want_handshake(&mut self, now: Instant) {
        if self.timers.want_handshake(now) {
            self.initiate(now, false);
        }
    }

    /// datad's `sent_transport`: bookkeeping after a transport packet went out.
    fn sent_transport(&mut self, len: usize, data: bool, now: Instant) {
        self.router.count_tx(self.peer, len);
        if data {
            self.timers.data_sent(now, &mut self.rng);
        }
        self.timers.authenticated_packet_sent(now);
        self.timers.authenticated_packet_traversal(now);
    }

    /// datad's `on_datagram` for initiations and responses: MAC checks, cookie replies
    /// under load, then keyd.
    fn on_handshake_message(
        &mut self,
        kind: u32,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Receipt {
        let under_load = self.under_load;
        match self.checker.check(datagram, from, now, under_load) {
            Verdict::Drop => Receipt::Rejected(Rejection::InvalidMac1),
            Verdict::SendCookie => {
                match self
                    .checker
                    .create_reply(datagram, from, now, &mut self.rng)
                {
                    Ok(reply) => {
                        self.transmit(from, reply.to_bytes().to_vec());
                        self.record(now, EventKind::CookieReplySent);
                        Receipt::CookieReplySent
                    }
                    Err(e) => Receipt::Rejected(e.into()),
                }
            }
            Verdict::Accept => {
                // datad also applies a per-source rate limiter here when under load; one
                // peer at a handful of handshakes a minute never reaches it.
                self.record(now, EventKind::HandshakeAccepted { under_load });
                if kind == MESSAGE_INITIATION {
                    self.respond(datagram, from, now)
                } else {
                    self.complete(datagram, from, now)
                }
            }
        }
    }

    /// datad's cookie-reply branch of `on_datagram`, then keyd's `consume_cookie`.
    fn on_cookie_reply(&mut self, datagram: &[u8], now: Instant) -> Receipt {
        let reply = match CookieReply::parse(datagram) {
            Ok(reply) => reply,
            Err(e) => return Receipt::Rejected(e.into()),
        };
        if self.last_handshake_index != Some(reply.receiver_index)
            || self.indices.get(reply.receiver_index).is_none()
        {
            return Receipt::Rejected(Rejection::UnknownIndex);
        }
        match self.macs.consume_cookie_reply(&reply, now) {
            Ok(()) => {
                self.record(now, EventKind::CookieReplyConsumed);
                Receipt::CookieReplyConsumed
            }
            Err(e) => Receipt::Rejected(e.into()),
        }
    }

    /// datad's `on_transport`.
    fn on_transport(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) -> Receipt {
        let mut buf = datagram.to_vec();
        let job = match self.router.plan_inbound(&buf, now) {
            Ok(job) => job,
            Err(reason) => return Receipt::Rejected(reason.into()),
        };
        let n = match job.open(&mut buf) {
            Ok(n) => n,
            Err(reason) => return Receipt::Rejected(reason.into()),
        };
        let plaintext = buf.get(HEADROOM..HEADROOM + n).unwrap_or_default();
        let inbound = match self
            .router
            .finish_inbound(&job, plaintext, datagram.len(), from, now)
        {
            Ok(inbound) => inbound,
            Err(reason) => return Receipt::Rejected(reason.into()),
        };
        self.timers.authenticated_packet_received(now);
        self.timers.authenticated_packet_traversal(now);
        if inbound.handshake_complete {
            self.timers.handshake_complete(now);
            self.record(now, EventKind::HandshakeConfirmed);
        }
        let receipt = match inbound.kind {
            InboundKind::Data { len } => {
                self.timers.data_received(now);
                let id = plaintext.get(..len).and_then(payload_id);
                if let Some(id) = id {
                    *self.delivered.entry(id).or_default() += 1;
                }
                self.record(now, EventKind::Delivered { payload_id: id });
                Receipt::Data { payload_id: id }
            }
            InboundKind::Keepalive => {
                self.record(now, EventKind::KeepaliveReceived);
                Receipt::Keepalive
            }
            InboundKind::Refused(reason) => {
                self.timers.data_received(now);
                Receipt::Rejected(reason.into())
            }
        };
        if inbound.handshake_complete {
            self.send_staged(now);
        }
        if inbound.rekey {
            self.want_handshake(now);
        }
        receipt
    }

    /// datad's `send_staged`.
    fn send_staged(&mut self, now: Instant) {
        let mut out = Vec::new();
        self.router.flush_staged(self.peer, now, &mut out);
        let count = out.len();
        for staged in out {
            let len = staged.message.len();
            self.transmit(staged.endpoint, staged.message);
            self.sent_transport(len, true, now);
        }
        if count > 0 {
            self.record(now, EventKind::StagedSent { count });
        }
    }

    /// datad's `send_keepalive`: like every send it keeps the session fresh, so the
    /// router's `rekey` flag, or having no keypair at all, asks for a handshake.
    fn send_keepalive(&mut self, now: Instant) {
        match self.router.keepalive(self.peer, now) {
            Outbound::Send {
                endpoint,
                job,
                rekey,
                ..
            } => {
                let mut buf = vec![0u8; job.message_len()];
                if job.seal(&mut buf).is_ok() {
                    let len = buf.len();
                    self.transmit(endpoint, buf);
                    self.sent_transport(len, false, now);
                    self.record(now, EventKind::KeepaliveSent);
                }
                if rekey {
                    self.want_handshake(now);
                }
            }
            Outbound::Dropped(reason) => {
                self.record(now, EventKind::KeepaliveSkipped { reason });
                if reason == DropReason::Expired {
                    self.want_handshake(now);
                }
            }
            Outbound::Staged { .. } => self.want_handshake(now),
        }
    }

    /// datad's `install_session` (keys from keyd's `Session` message).
    fn install_session(&mut self, session: Session, endpoint: Option<SocketAddr>, now: Instant) {
        if let Some(endpoint) = endpoint {
            self.router.set_endpoint(self.peer, endpoint);
        }
        let initiator = session.role == Role::Initiator;
        let keys = NewSession {
            initiator,
            local_index: session.local_index,
            remote_index: session.remote_index,
            send: session.send,
            recv: session.recv,
        };
        if self.router.add_session(self.peer, keys, now).is_err() {
            return;
        }
        self.timers.session_derived(now);
        self.timers.authenticated_packet_received(now);
        self.timers.authenticated_packet_traversal(now);
        if initiator {
            self.timers.handshake_complete(now);
        }
        self.record(now, EventKind::SessionInstalled { initiator });
        if initiator {
            // The initiator speaks first so the responder can confirm the keypair.
            if self.router.staged_len(self.peer) == 0 {
                self.send_keepalive(now);
            } else {
                self.send_staged(now);
            }
        }
    }

    /// datad's `send_handshake` (keyd's `SendHandshake`). Returns whether it went out.
    fn send_handshake(
        &mut self,
        message: &[u8],
        endpoint: Option<SocketAddr>,
        now: Instant,
    ) -> bool {
        if let Some(endpoint) = endpoint {
            self.router.set_endpoint(self.peer, endpoint);
        }
        let Some(endpoint) = self.router.stats(self.peer).and_then(|s| s.endpoint) else {
            return false;
        };
        let sender_index = message
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes);
        self.transmit(endpoint, message.to_vec());
        self.router.count_tx(self.peer, message.len());
        if message_type(message) == Ok(MESSAGE_INITIATION) {
            self.timers.handshake_initiated(now, &mut self.rng);
        } else {
            self.timers.handshake_response_sent(now);
        }
        self.timers.authenticated_packet_sent(now);
        self.timers.authenticated_packet_traversal(now);
        self.last_handshake_index = sender_index;
        true
    }

    // ----- key process -----

    /// keyd's `initiate`, then datad's `send_handshake`.
    fn initiate(&mut self, now: Instant, retry: bool) {
        if let Some(old) = self.noise.pending_local_index() {
            self.indices.remove(old);
        }
        let remote = *self.noise.remote_public();
        let index = self.indices.insert(&mut self.rng, remote);
        let timestamp = Tai64N::from_system_time(self.clock.wall(now));
        match self.noise.create_initiation(
            &self.identity,
            index,
            timestamp,
            &mut self.macs,
            now,
            &mut self.rng,
        ) {
            Ok(message) => {
                if self.send_handshake(&message, None, now) {
                    let with_mac2 = has_mac2(&message);
                    self.record(now, EventKind::InitiationSent { retry, with_mac2 });
                }
            }
            Err(_) => {
                self.indices.remove(index);
            }
        }
    }

    /// keyd's `respond`, then datad's `install_session` and `send_handshake`.
    fn respond(&mut self, message: &[u8], from: SocketAddr, now: Instant) -> Receipt {
        let incoming = match self.identity.open_initiation(message) {
            Ok(incoming) => incoming,
            Err(e) => return Receipt::Rejected(e.into()),
        };
        let remote = *incoming.remote_static();
        if &remote != self.noise.remote_public() {
            return Receipt::Rejected(Rejection::UnknownPeer);
        }
        let superseded = self.noise.pending_local_index();
        if let Err(e) = self.noise.consume_initiation(&self.identity, incoming, now) {
            return Receipt::Rejected(e.into());
        }
        if let Some(old) = superseded {
            self.indices.remove(old);
        }
        let index = self.indices.insert(&mut self.rng, remote);
        match self
            .noise
            .create_response(index, &mut self.macs, now, &mut self.rng)
        {
            Ok((response, session)) => {
                // Keys first: the initiator's first packet may follow the response closely.
                self.install_session(session, Some(from), now);
                if self.send_handshake(&response, Some(from), now) {
                    self.record(now, EventKind::ResponseSent);
                }
                Receipt::InitiationAnswered
            }
            Err(e) => {
                self.indices.remove(index);
                Receipt::Rejected(e.into())
            }
        }
    }

    /// keyd's `complete`, then datad's `install_session`.
    fn complete(&mut self, message: &[u8], from: SocketAddr, now: Instant) -> Receipt {
        let response = match Response::parse(message) {
            Ok(response) => response,
            Err(e) => return Receipt::Rejected(e.into()),
        };
        if self.indices.get(response.receiver_index).is_none() {
            return Receipt::Rejected(Rejection::UnknownIndex);
        }
        match self.noise.consume_response(&self.identity, message) {
            Ok(session) => {
                self.install_session(session, Some(from), now);
                Receipt::ResponseConsumed
            }
            Err(e) => Receipt::Rejected(e.into()),
        }
    }
}
