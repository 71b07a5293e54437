//! What a simulated node did: receipts for its inputs, a timestamped log of events, and
//! tallies of them. Records only; the node (`node.rs`) writes them.

use std::time::Duration;

use wg_cookie::CookieError;
use wg_device::{Discard, Event as DeviceEvent};
use wg_handshake::HandshakeError;
use wg_keyd::handshakes::Refusal;
use wg_router::DropReason;
use wg_wire::WireError;

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
    /// The device core dropped it for a reason the variants above do not name (no private
    /// key, rate-limited, key process busy).
    #[error("dropped by the data plane: {0}")]
    Device(Discard),
    /// The key process refused it for a reason the variants above do not name.
    #[error("refused by the key process: {0}")]
    Oracle(Refusal),
}

impl From<Discard> for Rejection {
    fn from(d: Discard) -> Self {
        match d {
            Discard::Malformed(e) => Self::Malformed(e),
            Discard::InvalidMac1 => Self::InvalidMac1,
            Discard::Cookie(e) => Self::Cookie(e),
            Discard::UnknownIndex => Self::UnknownIndex,
            Discard::Transport(r) => Self::Transport(r),
            other => Self::Device(other),
        }
    }
}

impl From<Refusal> for Rejection {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Malformed(e) => Self::Malformed(e),
            Refusal::Handshake(e) => Self::Handshake(e),
            Refusal::UnknownPeer => Self::UnknownPeer,
            Refusal::UnknownIndex => Self::UnknownIndex,
            Refusal::Cookie(e) => Self::Cookie(e),
            other => Self::Oracle(other),
        }
    }
}

/// What a node did with a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// An authenticated data packet, written to the (simulated) TUN device; its payload id
    /// if it is a packet of [`inner_packet`](crate::inner_packet)'s format.
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
        /// Its payload id, if it is an [`inner_packet`](crate::inner_packet).
        payload_id: Option<u64>,
    },
    /// An application packet was staged, waiting for a session.
    DataStaged {
        /// Its payload id, if it is an [`inner_packet`](crate::inner_packet).
        payload_id: Option<u64>,
    },
    /// An application packet was dropped by the router.
    DataDropped {
        /// Its payload id, if it is an [`inner_packet`](crate::inner_packet).
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
        /// Its payload id, if it is an [`inner_packet`](crate::inner_packet).
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

impl Counters {
    /// Tallies of `events`.
    pub fn tally(events: &[Event]) -> Self {
        let mut c = Self::default();
        for event in events {
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
}

impl EventKind {
    /// The simulation's record of something the device core did, if it keeps one.
    pub(crate) fn from_device(event: DeviceEvent) -> Option<Self> {
        Some(match event {
            DeviceEvent::InitiationSent {
                retry, with_mac2, ..
            } => Self::InitiationSent { retry, with_mac2 },
            DeviceEvent::ResponseSent { .. } => Self::ResponseSent,
            DeviceEvent::SessionInstalled { initiator, .. } => Self::SessionInstalled { initiator },
            DeviceEvent::HandshakeConfirmed { .. } => Self::HandshakeConfirmed,
            DeviceEvent::StagedSent { count, .. } => Self::StagedSent { count },
            DeviceEvent::KeepaliveSent { .. } => Self::KeepaliveSent,
            DeviceEvent::KeepaliveSkipped { reason, .. } => Self::KeepaliveSkipped { reason },
            DeviceEvent::GaveUp { staged_dropped, .. } => Self::GaveUp { staged_dropped },
            DeviceEvent::KeysZeroed { .. } => Self::KeysZeroed,
            DeviceEvent::HandshakeWanted { .. }
            | DeviceEvent::HandshakeNotSent { .. }
            | DeviceEvent::EndpointChanged { .. } => {
                return None;
            }
        })
    }
}
