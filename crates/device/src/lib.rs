//! The WireGuard data plane's protocol state machine, sans-IO in the manner of quinn-proto:
//! what the data plane *decides*, without the sockets, the TUN device, the runtime or the
//! clock around it.
//!
//! **Owns:** the composition of the protocol cores (`wg-router`'s cryptokey routing and
//! transport keys, `wg-timers`' per-peer timers, `wg-cookie`'s MAC checks): the per-peer
//! maps, the order of the timer hooks around every send and receive (one place: the
//! [`Device`] methods below), turning router outcomes and timer actions into requests for
//! the key process, keepalives, staged flushes and cookie replies, the handshake load meter
//! and per-source rate limit, the cached earliest deadline, and the data plane's side of the
//! keyd protocol (`wg-messages`: [`KeydToDatad`] in, [`DatadToKeyd`] out), including the
//! statistics answer.
//!
//! **Inputs** are `handle_*` calls that take `now` (and the wall clock where a message needs
//! one); **effects** are values: returned by the call that caused them when the caller needs
//! them at once (a packet to seal, a plaintext to deliver, why a packet was dropped), else
//! queued and drained with [`Device::poll_transmit`] (datagrams to send),
//! [`Device::poll_keyd`] (messages for keyd) and [`Device::poll_event`] (what happened, for
//! logs and tests). [`Device::poll_timeout`] says when it next wants
//! [`Device::handle_timeout`]. The RNG (timer jitter, cookie secrets) is seeded by the caller.
//!
//! The per-packet path is the caller's loop, not ours: [`Device::route_outbound`] /
//! [`Device::sent_transport`] around its own sealing, and [`Device::plan_inbound`] /
//! [`Device::handle_transport`] around its own decryption, so a driver can batch, offload
//! and spread the AEAD work over threads (datad) or do one packet at a time
//! ([`Device::encapsulate`], [`Device::handle_datagram`]: the simulation, an embedding).
//! Nothing on that path allocates.
//!
//! **Trusts:** nothing in a datagram (every one is checked before it costs anything: MAC1,
//! the load meter and rate limit before keyd sees a handshake, the router's index, replay
//! and AEAD checks for transport data); from keyd, what it says (keyd holds the keys), but
//! its messages are still checked for what they mean where a mistake could cost memory
//! (allowed-IP chunks of one peer, bounded in total).
//!
//! **May depend on:** `wg-router`, `wg-timers`, `wg-cookie`, `wg-wire`, `wg-messages`,
//! `rand` (a seeded `StdRng`), `thiserror`. No sockets, no tokio, no clock, no `unsafe`.
#![forbid(unsafe_code)]

mod deadline;
mod load;
mod ratelimit;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use wg_cookie::{CookieChecker, CookieError, Verdict};
use wg_router::{HEADROOM, InboundKind, NewSession, Outbound, PeerId, Router, StagedSend};
use wg_timers::{PeerTimers, TimerAction};
use wg_wire::{
    CookieReply, MAC_LEN, MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT, PublicKey, SessionKey, WireError, message_type,
};

pub use wg_messages::messages::{DatadToKeyd, KeydToDatad};
use wg_messages::messages::{Hello, PeerStats, PeerUpdate, Role, STATS_PER_MESSAGE, SessionKeys};
pub use wg_router::{DropReason, OpenJob, SealJob};

use crate::deadline::DeadlineCache;
use crate::load::LoadMeter;
pub use crate::load::MAX_QUEUED_HANDSHAKES;
use crate::ratelimit::RateLimiter;

/// Messages waiting in this process to be written to keyd's socket beyond which new
/// handshake messages are dropped: a flood costs bounded memory here, and the initiator
/// retries. (Those written but not yet taken by keyd are bounded by
/// [`MAX_QUEUED_HANDSHAKES`].)
pub const MAX_KEYD_BACKLOG: usize = 1024;
/// Events kept for [`Device::poll_event`] before new ones are counted as lost instead
/// (a driver drains them after every input; only a timer round over thousands of peers
/// comes near).
pub const MAX_EVENTS: usize = 4096;

/// keyd broke the protocol: the data plane must stop (it cannot know what else is wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// A message that is well-formed but means something impossible.
    #[error("the key process broke protocol ({0}); stopping the data plane")]
    Protocol(&'static str),
}

/// Why a received datagram was dropped. Verdicts, not failures: a driver logs them at trace
/// level, a test asserts on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Discard {
    /// Not a WireGuard message (wrong length for its type, unknown type).
    #[error("not a WireGuard message: {0}")]
    Malformed(#[from] WireError),
    /// A handshake message while no private key is configured.
    #[error("handshake message dropped: no private key configured")]
    NoPrivateKey,
    /// A handshake message whose MAC1 is not for our public key.
    #[error("handshake message with an invalid MAC1")]
    InvalidMac1,
    /// Under load, a valid cookie-bearing message from a source over its rate.
    #[error("handshake message rate-limited (under load)")]
    RateLimited,
    /// keyd has [`MAX_KEYD_BACKLOG`] messages waiting to be written, or
    /// [`MAX_QUEUED_HANDSHAKES`] handshake messages not yet taken: this one is dropped.
    #[error("key process busy: handshake message dropped")]
    KeydBusy,
    /// Under load, a cookie reply could not be made.
    #[error("no cookie reply: {0}")]
    Cookie(#[from] CookieError),
    /// A cookie reply that names no handshake message we sent (or not the latest one).
    #[error("cookie reply for an index we did not send")]
    UnknownIndex,
    /// The router dropped a transport message.
    #[error("transport message dropped: {0}")]
    Transport(#[from] DropReason),
}

/// A datagram to send that the device made itself (handshake, keepalive, staged data,
/// cookie reply). Data the caller sealed through [`Device::route_outbound`] is not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// The peer it is for, if any (a cookie reply answers an address, not a peer).
    pub peer: Option<PeerId>,
    /// What it is.
    pub kind: TransmitKind,
    /// The message.
    pub bytes: Vec<u8>,
}

/// What a [`Transmit`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitKind {
    /// A handshake initiation (made by keyd).
    Initiation,
    /// A handshake response (made by keyd).
    Response,
    /// A cookie reply: we are under load.
    CookieReply,
    /// A keepalive.
    Keepalive,
    /// A packet that waited for a session.
    Staged,
}

/// What the device did, for logs and tests. Per-packet outcomes are return values instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The timers or outbound data asked keyd for an initiation.
    HandshakeWanted {
        /// The peer.
        peer: PublicKey,
        /// A retransmission of an unanswered initiation.
        retry: bool,
    },
    /// keyd's initiation for `peer` was queued to send.
    InitiationSent {
        /// The peer.
        peer: PublicKey,
        /// It answers a timer's retransmission request.
        retry: bool,
        /// It carries MAC2 (we hold a fresh cookie from the peer).
        with_mac2: bool,
    },
    /// keyd's response to `peer`'s initiation was queued to send.
    ResponseSent {
        /// The peer.
        peer: PublicKey,
    },
    /// keyd's handshake message could not go out: the peer has no endpoint.
    HandshakeNotSent {
        /// The peer.
        peer: PublicKey,
    },
    /// Transport keys were installed.
    SessionInstalled {
        /// The peer.
        peer: PublicKey,
        /// We sent the initiation.
        initiator: bool,
    },
    /// The first packet on a responder keypair confirmed it: the handshake is complete.
    HandshakeConfirmed {
        /// The peer.
        peer: PublicKey,
    },
    /// Packets that waited for the session were sealed and queued.
    StagedSent {
        /// The peer.
        peer: PublicKey,
        /// How many.
        count: usize,
    },
    /// An authenticated packet came from a new address: the peer's endpoint is now that.
    EndpointChanged {
        /// The peer.
        peer: PublicKey,
        /// Its new endpoint.
        endpoint: SocketAddr,
    },
    /// A keepalive was queued.
    KeepaliveSent {
        /// The peer.
        peer: PublicKey,
    },
    /// A keepalive was due but the router had no keypair to seal it with.
    KeepaliveSkipped {
        /// The peer.
        peer: PublicKey,
        /// What the router said.
        reason: DropReason,
    },
    /// The timers gave up on the handshake (`REKEY_ATTEMPT_TIME`); staged packets dropped.
    GaveUp {
        /// The peer.
        peer: PublicKey,
        /// How many staged packets were dropped.
        staged_dropped: usize,
    },
    /// All of the peer's key material was erased (3 × `REJECT_AFTER_TIME` without a
    /// handshake).
    KeysZeroed {
        /// The peer.
        peer: PublicKey,
    },
}

/// How much an operator cares about an [`Event`]: what a driver maps to its log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Importance {
    /// Routine, per-peer chatter (keepalives, staged flushes): debug.
    Routine,
    /// The handshake story an operator reads (sent, retried, completed, endpoint changes,
    /// keys erased): wireguard-go logs these at its verbose level, info here.
    Story,
    /// Something is wrong that the configuration may fix (a handshake given up, a peer
    /// without an endpoint): a warning.
    Problem,
}

impl Event {
    /// How much an operator cares about this event.
    pub fn importance(&self) -> Importance {
        match self {
            Self::HandshakeWanted { .. }
            | Self::StagedSent { .. }
            | Self::KeepaliveSent { .. }
            | Self::KeepaliveSkipped { .. } => Importance::Routine,
            Self::InitiationSent { .. }
            | Self::ResponseSent { .. }
            | Self::SessionInstalled { .. }
            | Self::HandshakeConfirmed { .. }
            | Self::EndpointChanged { .. }
            | Self::KeysZeroed { .. } => Importance::Story,
            Self::HandshakeNotSent { .. } | Self::GaveUp { .. } => Importance::Problem,
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HandshakeWanted { peer, retry } => {
                let again = if *retry { " again" } else { "" };
                write!(
                    f,
                    "{peer:?}: asking the key process for an initiation{again}"
                )
            }
            Self::InitiationSent {
                peer,
                retry,
                with_mac2,
            } => write!(
                f,
                "{peer:?}: sending handshake initiation{}{}",
                if *retry { " (retry)" } else { "" },
                if *with_mac2 { " with a cookie" } else { "" }
            ),
            Self::ResponseSent { peer } => write!(f, "{peer:?}: sending handshake response"),
            Self::HandshakeNotSent { peer } => write!(
                f,
                "{peer:?}: handshake message not sent: the peer has no endpoint yet"
            ),
            Self::SessionInstalled { peer, initiator } => write!(
                f,
                "{peer:?}: new session keys ({})",
                if *initiator { "initiator" } else { "responder" }
            ),
            Self::HandshakeConfirmed { peer } => write!(f, "{peer:?}: handshake confirmed"),
            Self::StagedSent { peer, count } => {
                write!(
                    f,
                    "{peer:?}: sent {count} packets that waited for the session"
                )
            }
            Self::EndpointChanged { peer, endpoint } => {
                write!(f, "{peer:?}: endpoint is now {endpoint}")
            }
            Self::KeepaliveSent { peer } => write!(f, "{peer:?}: sending keepalive"),
            Self::KeepaliveSkipped { peer, reason } => {
                write!(f, "{peer:?}: keepalive not sent: {reason}")
            }
            Self::GaveUp {
                peer,
                staged_dropped,
            } => write!(
                f,
                "{peer:?}: handshake did not complete after {} s; giving up, \
                 {staged_dropped} waiting packets dropped",
                wg_wire::constants::REKEY_ATTEMPT_TIME.as_secs()
            ),
            Self::KeysZeroed { peer } => write!(f, "{peer:?}: session keys erased"),
        }
    }
}

/// What became of a datagram given to [`Device::handle_datagram`] or
/// [`Device::handle_transport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// An authenticated data packet for the TUN device: the plaintext is
    /// `datagram[HEADROOM..HEADROOM + len]`.
    Data {
        /// The sender.
        peer: PeerId,
        /// Length of the inner IP packet.
        len: usize,
    },
    /// An authenticated keepalive.
    Keepalive {
        /// The sender.
        peer: PeerId,
    },
    /// Authenticated, but the inner packet is not delivered (malformed, or its source is
    /// not in the sender's allowed IPs). Its session events still happened.
    Refused {
        /// The sender.
        peer: PeerId,
        /// Why.
        reason: DropReason,
    },
    /// A handshake message passed the MAC checks and was queued for keyd.
    HandshakeToKeyd {
        /// Whether we were under load (so MAC2 was checked too).
        under_load: bool,
    },
    /// Under load, a handshake message without a valid MAC2 was answered with a cookie
    /// reply (queued as a [`Transmit`]).
    CookieReplySent,
    /// A cookie reply for our latest handshake message was queued for keyd.
    CookieReplyToKeyd,
}

/// What became of a packet given to [`Device::encapsulate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encapsulated {
    /// Sealed into the caller's buffer (`len` bytes): send it to `endpoint`.
    Send {
        /// The peer.
        peer: PeerId,
        /// Where to.
        endpoint: SocketAddr,
        /// The transport message's length.
        len: usize,
    },
    /// Held until a session exists; a handshake was asked for.
    Staged {
        /// The peer.
        peer: PeerId,
    },
    /// Not sent.
    Dropped(DropReason),
}

/// What the device keeps per peer besides the router's state.
#[derive(Debug)]
struct PeerSlot {
    public_key: PublicKey,
    timers: PeerTimers,
    /// Sender index of the last handshake message we sent: a cookie reply must name it.
    last_handshake_index: Option<u32>,
    /// The last initiation asked of keyd was a timer's retransmission.
    initiation_retry: bool,
}

/// The data plane's protocol state: peers, keypairs, timers, cookie checks, and what is
/// waiting to go out. See the crate documentation for how a driver uses it.
pub struct Device {
    router: Router,
    by_key: HashMap<PublicKey, PeerId>,
    slots: HashMap<PeerId, PeerSlot>,
    by_handshake_index: HashMap<u32, PeerId>,
    checker: Option<CookieChecker>,
    limiter: RateLimiter,
    load: LoadMeter,
    always_under_load: bool,
    /// Handshake messages queued for keyd that keyd has not reported taken: the
    /// kernel's handshake queue length.
    handshakes_queued: usize,
    to_keyd: VecDeque<DatadToKeyd>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    events_lost: u64,
    /// A peer update whose allowed IPs are still arriving in chunks: applied whole once
    /// the last chunk is in, so routing never sees half of it.
    partial_peer: Option<PeerUpdate>,
    staged: Vec<StagedSend>,
    rng: StdRng,
    deadlines: DeadlineCache,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("peers", &self.slots.len())
            .field("private_key_set", &self.checker.is_some())
            .field("to_keyd", &self.to_keyd.len())
            .field("handshakes_queued", &self.handshakes_queued)
            .field("transmits", &self.transmits.len())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

/// Wall-clock time of an `Instant` in the past, as Unix seconds and nanoseconds.
fn unix_time(at: Instant, now: Instant, wall: SystemTime) -> Option<(u64, u32)> {
    let then = wall.checked_sub(now.saturating_duration_since(at))?;
    let since = then.duration_since(UNIX_EPOCH).ok()?;
    Some((since.as_secs(), since.subsec_nanos()))
}

/// Whether the MAC2 field of a handshake message is non-zero.
fn has_mac2(message: &[u8]) -> bool {
    message
        .len()
        .checked_sub(MAC_LEN)
        .and_then(|at| message.get(at..))
        .is_some_and(|mac2| mac2.iter().any(|&b| b != 0))
}

impl Device {
    /// A device with no private key and no peers. `rng` draws timer jitter and cookie
    /// secrets: seed it from the OS in a daemon, from a fixed seed in a simulation.
    pub fn new(rng: StdRng) -> Self {
        Self {
            router: Router::new(),
            by_key: HashMap::new(),
            slots: HashMap::new(),
            by_handshake_index: HashMap::new(),
            checker: None,
            limiter: RateLimiter::default(),
            load: LoadMeter::default(),
            always_under_load: false,
            handshakes_queued: 0,
            to_keyd: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            events_lost: 0,
            partial_peer: None,
            staged: Vec::new(),
            rng,
            deadlines: DeadlineCache::default(),
        }
    }

    // ----- configuration and inspection -----

    /// The TUN device's MTU: transport padding rounds up to 16 bytes but never past it.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.router.set_mtu(mtu);
    }

    /// Demands cookies (MAC2) on every handshake message, whatever the measured load: for
    /// simulations, and for operators who want every handshake to prove its address first.
    pub fn set_always_under_load(&mut self, always: bool) {
        self.always_under_load = always;
    }

    /// Turns roaming on (the default) or off. Off is wireguard-go's
    /// `DisableSomeRoamingForBrokenMobileSemantics`, for mobile platforms whose network
    /// changes make packets appear from stale addresses: a peer with a configured endpoint
    /// keeps it, whatever source its authenticated packets (handshakes included) come
    /// from; a peer without one still learns it.
    pub fn set_roaming(&mut self, enabled: bool) {
        self.router.set_learn_endpoints(enabled);
    }

    /// Whether handshake messages must carry a valid MAC2 at `now`: keyd has at least
    /// an eighth of [`MAX_QUEUED_HANDSHAKES`] waiting, or had within the last second.
    pub fn under_load(&mut self, now: Instant) -> bool {
        let queue_says = self.load.under_load(self.handshakes_queued, now);
        self.always_under_load || queue_says
    }

    /// Handshake messages queued for keyd that keyd has not yet reported taken.
    pub fn handshakes_queued(&self) -> usize {
        self.handshakes_queued
    }

    /// An in-process key oracle handled `count` handshake messages taken from
    /// [`Device::poll_keyd`] (a separate keyd says so with
    /// [`KeydToDatad::HandshakesTaken`]). A driver that runs the oracle in its own thread
    /// calls this after each one, or the queue looks ever longer.
    pub fn handshakes_taken(&mut self, count: usize) -> Result<(), DeviceError> {
        self.handshakes_queued =
            self.handshakes_queued
                .checked_sub(count)
                .ok_or(DeviceError::Protocol(
                    "keyd reported more handshake messages taken than were sent",
                ))?;
        Ok(())
    }

    /// The router (keypairs, staging, counters), read-only.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The router itself, bypassing the device's bookkeeping: for tests and simulations
    /// that need to reach a state (say, a used-up send counter) without the traffic.
    pub fn router_mut(&mut self) -> &mut Router {
        &mut self.router
    }

    /// The router's handle for a configured peer.
    pub fn peer_id(&self, public_key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(public_key).copied()
    }

    /// A peer's public key.
    pub fn public_key(&self, peer: PeerId) -> Option<&PublicKey> {
        self.slots.get(&peer).map(|s| &s.public_key)
    }

    /// A peer's timers.
    pub fn timers(&self, peer: PeerId) -> Option<&PeerTimers> {
        self.slots.get(&peer).map(|s| &s.timers)
    }

    /// Number of configured peers.
    pub fn peer_count(&self) -> usize {
        self.slots.len()
    }

    /// Events dropped because [`MAX_EVENTS`] were waiting.
    pub fn events_lost(&self) -> u64 {
        self.events_lost
    }

    // ----- outbound data: the caller seals -----

    /// Routes one plaintext IP packet read from the TUN device. On [`Outbound::Send`] the
    /// caller seals it with the job, sends it and reports [`Device::sent_transport`]; a
    /// packet staged for want of a session, or a keypair due for rekeying, has already asked
    /// keyd for a handshake (rate-limited by the timers).
    pub fn route_outbound(&mut self, packet: &[u8], now: Instant) -> Outbound {
        let outbound = self.router.route_outbound(packet, now);
        match &outbound {
            Outbound::Send {
                peer, rekey: true, ..
            }
            | Outbound::Staged { peer } => self.want_handshake(*peer, now),
            Outbound::Send { .. } | Outbound::Dropped(_) => {}
        }
        outbound
    }

    /// A data transport message of `len` bytes went out to `peer`: counters, then the timer
    /// hooks in wireguard-go's order (data sent, any authenticated packet sent, traversal).
    pub fn sent_transport(&mut self, peer: PeerId, len: usize, now: Instant) {
        self.deadlines.touch();
        self.router.count_tx(peer, len);
        if let Some(slot) = self.slots.get_mut(&peer) {
            slot.timers.data_sent(now, &mut self.rng);
            slot.timers.authenticated_packet_sent(now);
            slot.timers.authenticated_packet_traversal(now);
        }
    }

    /// One packet at a time: routes `packet`, seals it into `out` (which must hold
    /// `HEADROOM + packet.len() + TAILROOM` bytes plus padding: [`wg_router::SealJob::message_len`])
    /// and counts it as sent. For drivers without batching (a simulation, an embedding).
    pub fn encapsulate(&mut self, packet: &[u8], out: &mut [u8], now: Instant) -> Encapsulated {
        match self.route_outbound(packet, now) {
            Outbound::Send {
                peer,
                endpoint,
                job,
                ..
            } => {
                let Some(buf) = out.get_mut(..job.message_len()) else {
                    return Encapsulated::Dropped(DropReason::NoRoom);
                };
                let Some(body) = buf.get_mut(HEADROOM..HEADROOM + packet.len()) else {
                    return Encapsulated::Dropped(DropReason::NoRoom);
                };
                body.copy_from_slice(packet);
                match job.seal(buf) {
                    Ok(len) => {
                        self.sent_transport(peer, len, now);
                        Encapsulated::Send {
                            peer,
                            endpoint,
                            len,
                        }
                    }
                    Err(reason) => Encapsulated::Dropped(reason),
                }
            }
            Outbound::Staged { peer } => Encapsulated::Staged { peer },
            Outbound::Dropped(reason) => Encapsulated::Dropped(reason),
        }
    }

    // ----- inbound datagrams -----

    /// Plans the decryption of a transport message (index, keypair, replay pre-check):
    /// the caller runs the job (possibly on another thread) and then calls
    /// [`Device::handle_transport`].
    pub fn plan_inbound(&self, datagram: &[u8], now: Instant) -> Result<OpenJob, DropReason> {
        self.router.plan_inbound(datagram, now)
    }

    /// Completes a transport message that `job` decrypted in place (`opened` plaintext
    /// bytes at `datagram[HEADROOM..]`): replay window, endpoint learning, counters, then
    /// the receive-side timer hooks, handshake confirmation (which flushes staged packets)
    /// and the last-minute rekey of an old keypair we initiated.
    pub fn handle_transport(
        &mut self,
        job: &OpenJob,
        datagram: &[u8],
        opened: usize,
        source: SocketAddr,
        now: Instant,
    ) -> Result<Received, Discard> {
        self.deadlines.touch();
        let plaintext = datagram
            .get(HEADROOM..HEADROOM + opened)
            .unwrap_or_default();
        let inbound = self
            .router
            .finish_inbound(job, plaintext, datagram.len(), source, now)?;
        let peer = inbound.peer;
        let Some(slot) = self.slots.get_mut(&peer) else {
            return Err(Discard::Transport(DropReason::UnknownPeer));
        };
        slot.timers.authenticated_packet_received(now);
        slot.timers.authenticated_packet_traversal(now);
        if inbound.handshake_complete {
            slot.timers.handshake_complete(now);
        }
        let received = match inbound.kind {
            InboundKind::Data { len } => {
                slot.timers.data_received(now);
                Received::Data { peer, len }
            }
            InboundKind::Refused(reason) => {
                // wireguard-go counts it as data received before refusing it.
                slot.timers.data_received(now);
                Received::Refused { peer, reason }
            }
            InboundKind::Keepalive => Received::Keepalive { peer },
        };
        let last_minute = inbound.rekey && slot.timers.want_last_minute_handshake(now);
        let public_key = slot.public_key;
        if inbound.endpoint_changed {
            self.record(Event::EndpointChanged {
                peer: public_key,
                endpoint: source,
            });
        }
        if inbound.handshake_complete {
            self.record(Event::HandshakeConfirmed { peer: public_key });
            self.send_staged(peer, now);
        }
        if last_minute {
            self.ask_keyd_for_initiation(peer, false);
        }
        Ok(received)
    }

    /// One datagram from `source`, of any type. Transport data is decrypted in place here
    /// (a batching driver uses [`Device::plan_inbound`] and [`Device::handle_transport`]
    /// instead); handshake messages pass the MAC1 check, the load meter, MAC2 or a cookie
    /// reply, and the per-source rate limit before they are queued for keyd; a cookie reply
    /// must name the latest handshake message we sent.
    pub fn handle_datagram(
        &mut self,
        datagram: &mut [u8],
        source: SocketAddr,
        now: Instant,
    ) -> Result<Received, Discard> {
        self.deadlines.touch();
        match message_type(datagram)? {
            kind @ (MESSAGE_INITIATION | MESSAGE_RESPONSE) => {
                // Length first: the MAC check cannot find MAC1 in a message of another
                // length and would blame the key.
                let (name, expected) = if kind == MESSAGE_INITIATION {
                    ("handshake initiation", wg_wire::INITIATION_LEN)
                } else {
                    ("handshake response", wg_wire::RESPONSE_LEN)
                };
                if datagram.len() != expected {
                    return Err(Discard::Malformed(WireError::WrongLength {
                        kind: name,
                        expected,
                        got: datagram.len(),
                    }));
                }
                self.handle_handshake(datagram, source, now)
            }
            MESSAGE_COOKIE_REPLY => {
                let reply = CookieReply::parse(datagram)?;
                if !self.by_handshake_index.contains_key(&reply.receiver_index) {
                    return Err(Discard::UnknownIndex);
                }
                self.handshake_to_keyd(DatadToKeyd::CookieReply {
                    message: datagram.to_vec(),
                })?;
                Ok(Received::CookieReplyToKeyd)
            }
            MESSAGE_TRANSPORT => {
                let job = self.plan_inbound(datagram, now)?;
                let opened = job.open(datagram)?;
                self.handle_transport(&job, datagram, opened, source, now)
            }
            other => Err(Discard::Malformed(WireError::UnknownType(other))),
        }
    }

    fn handle_handshake(
        &mut self,
        datagram: &[u8],
        source: SocketAddr,
        now: Instant,
    ) -> Result<Received, Discard> {
        let under_load = self.under_load(now);
        let checker = self.checker.as_mut().ok_or(Discard::NoPrivateKey)?;
        match checker.check(datagram, source, now, under_load) {
            Verdict::Drop => Err(Discard::InvalidMac1),
            Verdict::SendCookie => {
                let reply = checker.create_reply(datagram, source, now, &mut self.rng)?;
                self.transmits.push_back(Transmit {
                    destination: source,
                    peer: None,
                    kind: TransmitKind::CookieReply,
                    bytes: reply.to_bytes().to_vec(),
                });
                Ok(Received::CookieReplySent)
            }
            Verdict::Accept => {
                if under_load && !self.limiter.allow(source.ip(), now) {
                    return Err(Discard::RateLimited);
                }
                self.handshake_to_keyd(DatadToKeyd::Handshake {
                    message: datagram.to_vec(),
                    source,
                })?;
                Ok(Received::HandshakeToKeyd { under_load })
            }
        }
    }

    /// Queues a handshake message for keyd, unless [`MAX_KEYD_BACKLOG`] wait here or
    /// [`MAX_QUEUED_HANDSHAKES`] wait for keyd.
    fn handshake_to_keyd(&mut self, msg: DatadToKeyd) -> Result<(), Discard> {
        debug_assert!(msg.is_handshake(), "counted as taken by keyd");
        if self.to_keyd.len() >= MAX_KEYD_BACKLOG || self.handshakes_queued >= MAX_QUEUED_HANDSHAKES
        {
            return Err(Discard::KeydBusy);
        }
        self.to_keyd.push_back(msg);
        self.handshakes_queued += 1;
        Ok(())
    }

    // ----- timers -----

    /// When the device next wants [`Device::handle_timeout`]. With up to 64 peers the
    /// earliest deadline is exact; with more, the scan over all peers happens at most every
    /// 50 ms while inputs keep arriving (so a timer an input armed fires at most that late),
    /// and never on the per-packet path.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let slots = &self.slots;
        self.deadlines.earliest(now, slots.len(), || {
            slots
                .values()
                .filter_map(|s| s.timers.next_deadline())
                .min()
        })
    }

    /// Runs every timer due at `now`: initiations asked of keyd, keepalives queued,
    /// handshakes given up on, key material erased.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.deadlines.fired();
        let mut due: Vec<PeerId> = self
            .slots
            .iter()
            .filter(|(_, s)| s.timers.next_deadline().is_some_and(|d| d <= now))
            .map(|(&p, _)| p)
            .collect();
        // In peer order, not the map's: the same inputs make the same outputs (a
        // simulation replays a run from its seed).
        due.sort_unstable();
        for peer in due {
            while let Some((public_key, action)) = self
                .slots
                .get_mut(&peer)
                .and_then(|slot| Some((slot.public_key, slot.timers.poll(now)?)))
            {
                match action {
                    TimerAction::SendInitiation { retry } => {
                        self.ask_keyd_for_initiation(peer, retry);
                    }
                    TimerAction::SendKeepalive => self.send_keepalive(peer, now),
                    TimerAction::GiveUp => {
                        let staged_dropped = self.router.staged_len(peer);
                        self.router.clear_staged(peer);
                        self.record(Event::GaveUp {
                            peer: public_key,
                            staged_dropped,
                        });
                    }
                    TimerAction::ZeroKeyMaterial => {
                        self.router.clear_keypairs(peer);
                        self.to_keyd.push_back(DatadToKeyd::ZeroKeys { public_key });
                        self.record(Event::KeysZeroed { peer: public_key });
                    }
                }
            }
        }
    }

    // ----- the key process -----

    /// One message from keyd. `wall` dates the last handshakes in a statistics answer.
    /// An error means keyd broke the protocol; the data plane must stop.
    pub fn handle_keyd(
        &mut self,
        msg: KeydToDatad,
        now: Instant,
        wall: SystemTime,
    ) -> Result<(), DeviceError> {
        self.deadlines.touch();
        match msg {
            KeydToDatad::Hello(hello) => Self::check_hello(hello)?,
            KeydToDatad::Interface { public_key } => {
                self.checker = public_key.as_ref().map(CookieChecker::new);
            }
            KeydToDatad::Peer(update) if update.more_allowed_ips => {
                self.partial_peer = Some(update);
            }
            KeydToDatad::Peer(update) => self.upsert_peer(update, now),
            KeydToDatad::AllowedIps {
                public_key,
                allowed_ips,
                more,
            } => {
                let Some(partial) = self
                    .partial_peer
                    .as_mut()
                    .filter(|p| p.public_key == public_key)
                else {
                    return Err(DeviceError::Protocol("allowed IPs of no peer update"));
                };
                if partial.allowed_ips.len() + allowed_ips.len()
                    > wg_wire::constants::MAX_ALLOWED_IPS
                {
                    return Err(DeviceError::Protocol("too many allowed IPs"));
                }
                partial.allowed_ips.extend(allowed_ips);
                if !more && let Some(update) = self.partial_peer.take() {
                    self.upsert_peer(update, now);
                }
            }
            KeydToDatad::ExpireSessions => {
                self.router.expire_current_keypairs();
                for slot in self.slots.values_mut() {
                    slot.timers.forget_handshake_rate_limit();
                }
            }
            KeydToDatad::RemovePeer { public_key } => self.remove_peer(&public_key),
            KeydToDatad::ClearPeers => {
                let keys: Vec<PublicKey> = self.by_key.keys().copied().collect();
                for key in keys {
                    self.remove_peer(&key);
                }
            }
            KeydToDatad::Session(keys) => self.install_session(keys, now),
            KeydToDatad::SendHandshake {
                public_key,
                message,
                endpoint,
            } => self.send_handshake(public_key, message, endpoint, now),
            KeydToDatad::StatsRequest { request } => self.answer_stats(request, now, wall),
            KeydToDatad::HandshakesTaken { count } => {
                self.handshakes_taken(usize::try_from(count).unwrap_or(usize::MAX))?;
            }
        }
        Ok(())
    }

    fn check_hello(hello: Hello) -> Result<(), DeviceError> {
        hello
            .check(Role::Keyd)
            .map_err(|_| DeviceError::Protocol("bad hello"))
    }

    fn upsert_peer(&mut self, update: PeerUpdate, now: Instant) {
        let interval = NonZeroU16::new(update.persistent_keepalive);
        let existing = self.by_key.get(&update.public_key).copied();
        let peer = match existing {
            Some(peer) => peer,
            None => {
                let peer = self.router.add_peer();
                self.by_key.insert(update.public_key, peer);
                let mut timers = PeerTimers::new(None);
                timers.start(now);
                self.slots.insert(
                    peer,
                    PeerSlot {
                        public_key: update.public_key,
                        timers,
                        last_handshake_index: None,
                        initiation_retry: false,
                    },
                );
                peer
            }
        };
        if let Some(endpoint) = update.endpoint {
            self.router.set_endpoint(peer, endpoint);
        }
        // A new peer has no prefixes; clearing scans the whole table, which adding
        // thousands of peers at once must not pay for each of them.
        if existing.is_some() {
            self.router.clear_allowed_ips(peer);
        }
        for net in update.allowed_ips {
            let _ = self.router.insert_allowed_ip(peer, net);
        }
        if let Some(slot) = self.slots.get_mut(&peer)
            && slot.timers.persistent_keepalive() != interval
        {
            slot.timers.set_persistent_keepalive(interval, now);
        }
    }

    fn remove_peer(&mut self, public_key: &PublicKey) {
        if let Some(peer) = self.by_key.remove(public_key) {
            self.router.remove_peer(peer);
            if let Some(slot) = self.slots.remove(&peer)
                && let Some(index) = slot.last_handshake_index
            {
                self.by_handshake_index.remove(&index);
            }
        }
    }

    fn install_session(&mut self, keys: SessionKeys, now: Instant) {
        let Some(&peer) = self.by_key.get(&keys.public_key) else {
            return;
        };
        // The handshake's source: learned, as from any authenticated packet.
        if let Some(endpoint) = keys.endpoint {
            self.router.learn_endpoint(peer, endpoint);
        }
        let session = NewSession {
            initiator: keys.initiator,
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            send: SessionKey::from_bytes(keys.send.0),
            recv: SessionKey::from_bytes(keys.recv.0),
        };
        if self.router.add_session(peer, session, now).is_err() {
            return;
        }
        // The handshake message that made this session authenticated as this peer's:
        // count it as received, as wireguard-go does (a response for an initiator, an
        // initiation for a responder).
        let received = if keys.initiator {
            wg_wire::RESPONSE_LEN
        } else {
            wg_wire::INITIATION_LEN
        };
        self.router.count_rx(peer, received);
        if let Some(slot) = self.slots.get_mut(&peer) {
            slot.timers.session_derived(now);
            slot.timers.authenticated_packet_received(now);
            slot.timers.authenticated_packet_traversal(now);
            if keys.initiator {
                slot.timers.handshake_complete(now);
            }
        }
        self.record(Event::SessionInstalled {
            peer: keys.public_key,
            initiator: keys.initiator,
        });
        if keys.initiator {
            // The initiator speaks first so the responder can confirm the keypair: staged
            // data if there is any, else a keepalive (as wireguard-go and the kernel do).
            if self.router.staged_len(peer) == 0 {
                self.send_keepalive(peer, now);
            } else {
                self.send_staged(peer, now);
            }
        }
    }

    fn send_handshake(
        &mut self,
        public_key: PublicKey,
        message: Vec<u8>,
        endpoint: Option<SocketAddr>,
        now: Instant,
    ) {
        let Some(&peer) = self.by_key.get(&public_key) else {
            return;
        };
        // The source of the initiation answered: learned, as from any authenticated packet.
        if let Some(endpoint) = endpoint {
            self.router.learn_endpoint(peer, endpoint);
        }
        let Some(destination) = self.router.stats(peer).and_then(|s| s.endpoint) else {
            self.record(Event::HandshakeNotSent { peer: public_key });
            return;
        };
        let initiation = message_type(&message) == Ok(MESSAGE_INITIATION);
        let sender_index = message
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes);
        let Some(slot) = self.slots.get_mut(&peer) else {
            return;
        };
        let event = if initiation {
            slot.timers.handshake_initiated(now, &mut self.rng);
            Event::InitiationSent {
                peer: public_key,
                retry: slot.initiation_retry,
                with_mac2: has_mac2(&message),
            }
        } else {
            slot.timers.handshake_response_sent(now);
            Event::ResponseSent { peer: public_key }
        };
        slot.timers.authenticated_packet_sent(now);
        slot.timers.authenticated_packet_traversal(now);
        if let Some(old) = slot.last_handshake_index.take() {
            self.by_handshake_index.remove(&old);
        }
        if let Some(index) = sender_index {
            slot.last_handshake_index = Some(index);
            self.by_handshake_index.insert(index, peer);
        }
        self.transmits.push_back(Transmit {
            destination,
            peer: Some(peer),
            kind: if initiation {
                TransmitKind::Initiation
            } else {
                TransmitKind::Response
            },
            bytes: message,
        });
        self.record(event);
    }

    fn answer_stats(&mut self, request: u32, now: Instant, wall: SystemTime) {
        let peers: Vec<PeerStats> = self
            .slots
            .iter()
            .filter_map(|(&peer, slot)| {
                let s = self.router.stats(peer)?;
                Some(PeerStats {
                    public_key: slot.public_key,
                    endpoint: s.endpoint,
                    last_handshake: s.last_handshake.and_then(|at| unix_time(at, now, wall)),
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                })
            })
            .collect();
        let mut chunks = peers.chunks(STATS_PER_MESSAGE).peekable();
        if chunks.peek().is_none() {
            self.to_keyd.push_back(DatadToKeyd::Stats {
                request,
                peers: Vec::new(),
                done: true,
            });
        }
        while let Some(chunk) = chunks.next() {
            self.to_keyd.push_back(DatadToKeyd::Stats {
                request,
                peers: chunk.to_vec(),
                done: chunks.peek().is_none(),
            });
        }
    }

    // ----- what goes out -----

    /// The next datagram the device made itself, to send to its destination. Report a
    /// successful send with [`Device::transmitted`] (the peer's byte counter); the timer
    /// hooks already ran when it was queued, as in wireguard-go, whether the send
    /// succeeds or not.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// A [`Transmit`] of `len` bytes for `peer` went out.
    pub fn transmitted(&mut self, peer: Option<PeerId>, len: usize) {
        if let Some(peer) = peer {
            self.router.count_tx(peer, len);
        }
    }

    /// The next message for keyd, without taking it (a driver whose socket is full sends
    /// it later). Session indices the router retired since the last call are queued first.
    pub fn keyd_front(&mut self) -> Option<&DatadToKeyd> {
        let retired: Vec<u32> = self.router.drain_retired_indices().collect();
        if !retired.is_empty() {
            self.to_keyd
                .push_back(DatadToKeyd::RetiredIndices { indices: retired });
        }
        self.to_keyd.front()
    }

    /// The message [`Device::keyd_front`] returned was sent.
    pub fn keyd_sent(&mut self) {
        self.to_keyd.pop_front();
    }

    /// Takes the next message for keyd (retired indices included, as in
    /// [`Device::keyd_front`]).
    pub fn poll_keyd(&mut self) -> Option<DatadToKeyd> {
        self.keyd_front()?;
        self.to_keyd.pop_front()
    }

    /// Messages waiting for keyd.
    pub fn keyd_backlog(&self) -> usize {
        self.to_keyd.len()
    }

    /// The next thing that happened, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- the one place for the composed rules -----

    fn record(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events_lost += 1;
        } else {
            self.events.push_back(event);
        }
    }

    /// Data wants a session (none usable, or the current one due for rekeying): asks keyd
    /// for an initiation if the timers allow one now.
    fn want_handshake(&mut self, peer: PeerId, now: Instant) {
        if self
            .slots
            .get_mut(&peer)
            .is_some_and(|slot| slot.timers.want_handshake(now))
        {
            self.ask_keyd_for_initiation(peer, false);
        }
    }

    fn ask_keyd_for_initiation(&mut self, peer: PeerId, retry: bool) {
        let Some(slot) = self.slots.get_mut(&peer) else {
            return;
        };
        slot.initiation_retry = retry;
        let public_key = slot.public_key;
        self.to_keyd
            .push_back(DatadToKeyd::WantHandshake { public_key, retry });
        self.record(Event::HandshakeWanted {
            peer: public_key,
            retry,
        });
    }

    /// Seals and queues the packets that waited for a session.
    fn send_staged(&mut self, peer: PeerId, now: Instant) {
        let mut staged = std::mem::take(&mut self.staged);
        self.router.flush_staged(peer, now, &mut staged);
        let count = staged.len();
        for message in staged.drain(..) {
            self.queue_transport(peer, message.endpoint, message.message, true, now);
        }
        self.staged = staged;
        if count > 0
            && let Some(slot) = self.slots.get(&peer)
        {
            let public_key = slot.public_key;
            self.record(Event::StagedSent {
                peer: public_key,
                count,
            });
        }
    }

    /// Queues a keepalive. Like every send it keeps the session fresh: a keypair due for
    /// rekeying, or none at all, asks for a handshake (wireguard-go's keepKeyFreshSending).
    fn send_keepalive(&mut self, peer: PeerId, now: Instant) {
        let Some(public_key) = self.slots.get(&peer).map(|s| s.public_key) else {
            return;
        };
        match self.router.keepalive(peer, now) {
            Outbound::Send {
                endpoint,
                job,
                rekey,
                ..
            } => {
                let mut buf = vec![0u8; job.message_len()];
                if let Ok(len) = job.seal(&mut buf) {
                    buf.truncate(len);
                    self.queue_transport(peer, endpoint, buf, false, now);
                    self.record(Event::KeepaliveSent { peer: public_key });
                }
                if rekey {
                    self.want_handshake(peer, now);
                }
            }
            Outbound::Staged { .. } => self.want_handshake(peer, now),
            Outbound::Dropped(reason) => {
                self.record(Event::KeepaliveSkipped {
                    peer: public_key,
                    reason,
                });
                if reason == DropReason::Expired {
                    self.want_handshake(peer, now);
                }
            }
        }
    }

    /// Queues a transport message the device sealed, with the send-side timer hooks.
    fn queue_transport(
        &mut self,
        peer: PeerId,
        destination: SocketAddr,
        bytes: Vec<u8>,
        data: bool,
        now: Instant,
    ) {
        if let Some(slot) = self.slots.get_mut(&peer) {
            if data {
                slot.timers.data_sent(now, &mut self.rng);
            }
            slot.timers.authenticated_packet_sent(now);
            slot.timers.authenticated_packet_traversal(now);
        }
        self.transmits.push_back(Transmit {
            destination,
            peer: Some(peer),
            kind: if data {
                TransmitKind::Staged
            } else {
                TransmitKind::Keepalive
            },
            bytes,
        });
    }
}
