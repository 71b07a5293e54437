//! Cryptokey routing and transport data (whitepaper sections 5.4.6 and 6), sans-IO.
//!
//! **Owns:** the allowed-IPs table, each peer's endpoint, transport keypairs (current,
//! previous, next), send counters and replay windows, the staging queue of packets waiting
//! for a session, rx/tx counters and the last handshake time, and the per-packet rules:
//! padding, Rekey-After-Messages/Time, Reject-After-Messages/Time, and that a decrypted
//! packet's source address belongs to the peer whose key decrypted it.
//!
//! **Trusts:** nothing in datagrams. It trusts its caller for `now` and for the session
//! keys it installs (they come from the key process). It holds no static key or PSK and
//! must not depend on `wg-handshake`.
//!
//! **May depend on:** `wg-wire`, `ipnet`, an AEAD backend (`chacha20poly1305`, or `ring`
//! with the `ring` feature), `zeroize`. No sockets, no clock, no threads.
//!
//! # Batches and threads
//! Work is split so the AEAD, the only expensive part, can run anywhere:
//! - outbound: [`Router::route_outbound`] picks the peer and counter in order and returns a
//!   [`SealJob`]; [`SealJob::seal`] is a pure function that any thread may run on the
//!   caller's buffer. Sending the sealed buffers in the order the jobs were made keeps each
//!   peer's packets in order.
//! - inbound: [`Router::plan_inbound`] (shared borrow) finds the keypair and returns an
//!   [`OpenJob`]; [`OpenJob::open`] decrypts in place on any thread; then
//!   [`Router::finish_inbound`], in arrival order, applies the replay window, confirms
//!   keypairs, learns the endpoint and checks the source address.
//!
//! Nothing allocates per packet except staging (the slow path while no session exists).
#![forbid(unsafe_code)]

mod aead;
pub mod allowed_ips;
mod ip;
mod keypair;
pub mod replay;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use wg_wire::constants::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME, REKEY_TIMEOUT,
};
use wg_wire::{SessionKey, TAG_LEN, TRANSPORT_HEADER_LEN, Transport};

use aead::Cipher;
pub use allowed_ips::AllowedIps;
use keypair::{Keypair, Keypairs};
use replay::ReplayWindow;

/// Bytes a caller reserves before the plaintext for the transport header.
pub const HEADROOM: usize = TRANSPORT_HEADER_LEN;
/// Bytes a caller reserves after the plaintext: up to 15 of padding and the 16-byte tag.
pub const TAILROOM: usize = 15 + TAG_LEN;
/// Padding granularity of transport plaintexts.
pub const PADDING_MULTIPLE: usize = 16;
/// Default interface MTU, as the kernel's `wg-quick` and wireguard-go use.
pub const DEFAULT_MTU: usize = 1420;
/// Packets held per peer while no session exists (the kernel's `MAX_QUEUED_PACKETS`);
/// the oldest are dropped first.
pub const MAX_STAGED_PACKETS: usize = 1024;

/// A peer's handle in the router. Never reused within one router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u64);

/// Why a packet was dropped. None of these are errors of the router; they are verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Outbound packet is not IPv4/IPv6 or is truncated.
    #[error("not a well-formed IPv4 or IPv6 packet")]
    MalformedInner,
    /// No peer's allowed IPs cover the destination.
    #[error("no peer has an allowed IP covering the destination")]
    NoRoute,
    /// The peer has no endpoint configured or learned yet.
    #[error("peer has no endpoint; configure one or wait for it to contact us")]
    NoEndpoint,
    /// Datagram is not transport data.
    #[error("malformed transport message: {0}")]
    Malformed(wg_wire::WireError),
    /// No live keypair has this receiver index.
    #[error("unknown receiver index")]
    UnknownIndex,
    /// The keypair is older than Reject-After-Time.
    #[error("keypair expired")]
    Expired,
    /// Counter seen before, too old for the window, or beyond Reject-After-Messages.
    #[error("replayed or out-of-window counter")]
    Replay,
    /// Decryption failed.
    #[error("transport packet failed authentication")]
    Unauthentic,
    /// Buffer too small for header, padding and tag.
    #[error("buffer lacks room for the transport header, padding and tag")]
    NoRoom,
    /// The decrypted packet's source address does not belong to the peer that sent it.
    #[error("inner source address is not in the sending peer's allowed IPs")]
    SourceNotAllowed,
    /// The peer was removed.
    #[error("peer no longer exists")]
    UnknownPeer,
}

/// Transport keys for a new session, as the key process hands them over.
pub struct NewSession {
    /// Whether we sent the initiation.
    pub initiator: bool,
    /// Index the peer puts in packets to us.
    pub local_index: u32,
    /// Index we put in packets to the peer.
    pub remote_index: u32,
    /// Key for packets we send.
    pub send: SessionKey,
    /// Key for packets we receive.
    pub recv: SessionKey,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("initiator", &self.initiator)
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

/// Everything needed to encrypt one outbound packet, detached from the router.
pub struct SealJob {
    cipher: Arc<Cipher>,
    receiver_index: u32,
    counter: u64,
    plaintext_len: usize,
    padded_len: usize,
}

impl std::fmt::Debug for SealJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealJob")
            .field("receiver_index", &self.receiver_index)
            .field("counter", &self.counter)
            .field("plaintext_len", &self.plaintext_len)
            .finish_non_exhaustive()
    }
}

impl SealJob {
    /// Length of the transport message this job produces.
    pub fn message_len(&self) -> usize {
        HEADROOM + self.padded_len + TAG_LEN
    }

    /// The counter this packet is sent with.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Encrypts in place. `buf[HEADROOM..HEADROOM + plaintext_len]` holds the plaintext and
    /// `buf` must be at least [`SealJob::message_len`] long; on return
    /// `buf[..message_len()]` is the transport message.
    pub fn seal(&self, buf: &mut [u8]) -> Result<usize, DropReason> {
        let len = self.message_len();
        let msg = buf.get_mut(..len).ok_or(DropReason::NoRoom)?;
        let (header, rest) = msg.split_at_mut(HEADROOM);
        header.copy_from_slice(&Transport::header(self.receiver_index, self.counter));
        let (body, tag_dst) = rest.split_at_mut(self.padded_len);
        if let Some(padding) = body.get_mut(self.plaintext_len..) {
            padding.fill(0);
        }
        let tag = self.cipher.seal(self.counter, body);
        tag_dst.copy_from_slice(&tag);
        Ok(len)
    }
}

/// What to do with an outbound packet.
#[derive(Debug)]
pub enum Outbound {
    /// Seal with `job`, then send to `endpoint`.
    Send {
        /// The peer it goes to.
        peer: PeerId,
        /// Where to send it.
        endpoint: SocketAddr,
        /// The encryption to run.
        job: SealJob,
        /// The keypair is due for replacement: start a handshake (rate-limited by timers).
        rekey: bool,
    },
    /// Held until a session exists; the caller should make sure a handshake is under way.
    Staged {
        /// The peer it waits for.
        peer: PeerId,
    },
    /// Not sent.
    Dropped(DropReason),
}

/// A detached decryption of one transport message.
pub struct OpenJob {
    cipher: Arc<Cipher>,
    peer: PeerId,
    local_index: u32,
    counter: u64,
}

impl std::fmt::Debug for OpenJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenJob")
            .field("peer", &self.peer)
            .field("local_index", &self.local_index)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl OpenJob {
    /// The peer whose keypair this message names.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Decrypts a transport message in place; on success the padded plaintext is
    /// `datagram[HEADROOM..HEADROOM + n]` for the returned `n`.
    pub fn open(&self, datagram: &mut [u8]) -> Result<usize, DropReason> {
        let tag_at = datagram
            .len()
            .checked_sub(TAG_LEN)
            .filter(|&at| at >= HEADROOM)
            .ok_or(DropReason::Malformed(wg_wire::WireError::TooShort(
                datagram.len(),
            )))?;
        let (body, tag) = datagram.split_at_mut(tag_at);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| DropReason::Unauthentic)?;
        let ciphertext = body.get_mut(HEADROOM..).ok_or(DropReason::Unauthentic)?;
        self.cipher
            .open(self.counter, ciphertext, tag)
            .map_err(|_| DropReason::Unauthentic)?;
        Ok(ciphertext.len())
    }
}

/// What an authenticated inbound packet was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundKind {
    /// An empty payload.
    Keepalive,
    /// An IP packet of this many bytes (padding removed), at `HEADROOM..HEADROOM + len`.
    Data {
        /// Length of the inner IP packet.
        len: usize,
    },
    /// Authenticated, but the inner packet must not be delivered: malformed, or its
    /// source address is not in the sending peer's allowed IPs. The session events
    /// (handshake completion, rekey) of the [`Inbound`] still apply.
    Refused(DropReason),
}

/// An authenticated inbound transport packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inbound {
    /// Who sent it.
    pub peer: PeerId,
    /// Keepalive or data.
    pub kind: InboundKind,
    /// This packet confirmed a responder keypair: the handshake is now complete.
    pub handshake_complete: bool,
    /// We initiated the current keypair and it is older than `REJECT_AFTER_TIME -
    /// KEEPALIVE_TIMEOUT - REKEY_TIMEOUT`: the peer, its responder, will not rekey it, so we
    /// should before it expires. A fact, true for every packet past that age; asking for the
    /// handshake once per session is the timers' rule
    /// (`wg_timers::PeerTimers::want_last_minute_handshake`).
    pub rekey: bool,
    /// The packet came from another address than the peer's endpoint, which is now this
    /// one (the peer roamed, or its first packet told us where it is).
    pub endpoint_changed: bool,
}

/// A staged packet sealed and ready to go.
#[derive(Debug)]
pub struct StagedSend {
    /// The transport message.
    pub message: Vec<u8>,
    /// Where to send it.
    pub endpoint: SocketAddr,
}

struct PeerEntry {
    endpoint: Option<SocketAddr>,
    /// The endpoint was configured ([`Router::set_endpoint`]), not learned: with endpoint
    /// learning off it is kept.
    endpoint_configured: bool,
    keypairs: Keypairs,
    staged: VecDeque<Vec<u8>>,
    rx_bytes: u64,
    tx_bytes: u64,
    last_handshake: Option<Instant>,
}

/// Traffic counters and handshake time of one peer, for `wg show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerStats {
    /// Bytes received from the peer (whole transport messages, and handshake bytes the
    /// caller counted).
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// When the last handshake completed.
    pub last_handshake: Option<Instant>,
    /// The current endpoint.
    pub endpoint: Option<SocketAddr>,
}

/// The data plane's protocol state for all peers of one interface.
pub struct Router {
    peers: HashMap<PeerId, PeerEntry>,
    allowed_ips: AllowedIps<PeerId>,
    by_index: HashMap<u32, PeerId>,
    next_peer: u64,
    mtu: usize,
    /// Local indices of keypairs dropped since the caller last drained them.
    retired: Vec<u32>,
    /// Whether a packet's source replaces a configured endpoint (roaming).
    learn_endpoints: bool,
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("peers", &self.peers.len())
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

/// Padded plaintext length: a multiple of 16, but never beyond the MTU (wireguard-go's and
/// the kernel's rule; packets larger than the MTU are not padded further).
fn padded_len(len: usize, mtu: usize) -> usize {
    let rounded = len.div_ceil(PADDING_MULTIPLE) * PADDING_MULTIPLE;
    if len > mtu { len } else { rounded.min(mtu) }
}

impl Router {
    /// An empty router with the default MTU.
    pub fn new() -> Self {
        Self {
            peers: HashMap::new(),
            allowed_ips: AllowedIps::new(),
            by_index: HashMap::new(),
            next_peer: 0,
            mtu: DEFAULT_MTU,
            retired: Vec::new(),
            learn_endpoints: true,
        }
    }

    /// Sets the interface MTU, which caps padding.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
    }

    /// Adds a peer with no allowed IPs, endpoint or keys.
    pub fn add_peer(&mut self) -> PeerId {
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        self.peers.insert(
            id,
            PeerEntry {
                endpoint: None,
                endpoint_configured: false,
                keypairs: Keypairs::default(),
                staged: VecDeque::new(),
                rx_bytes: 0,
                tx_bytes: 0,
                last_handshake: None,
            },
        );
        id
    }

    /// Removes a peer, its allowed IPs, keys and staged packets.
    pub fn remove_peer(&mut self, peer: PeerId) {
        self.allowed_ips.remove_value(peer);
        if let Some(mut entry) = self.peers.remove(&peer) {
            self.clear_keypairs_of(&mut entry);
        }
    }

    /// The allowed-IPs table (for `wg show` and inspection).
    pub fn allowed_ips(&self) -> &AllowedIps<PeerId> {
        &self.allowed_ips
    }

    /// Routes `net` to `peer`, taking it from any other peer (a prefix has one owner).
    pub fn insert_allowed_ip(&mut self, peer: PeerId, net: IpNet) -> Result<(), DropReason> {
        if !self.peers.contains_key(&peer) {
            return Err(DropReason::UnknownPeer);
        }
        self.allowed_ips.insert(net, peer);
        Ok(())
    }

    /// Removes `net` if `peer` owns it.
    pub fn remove_allowed_ip(&mut self, peer: PeerId, net: &IpNet) {
        if self.allowed_ips.get(net) == Some(peer) {
            self.allowed_ips.remove(net);
        }
    }

    /// Removes every allowed IP of `peer` (`replace_allowed_ips`).
    pub fn clear_allowed_ips(&mut self, peer: PeerId) {
        self.allowed_ips.remove_value(peer);
    }

    /// Sets the endpoint from configuration: it stays even with endpoint learning off.
    pub fn set_endpoint(&mut self, peer: PeerId, endpoint: SocketAddr) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.endpoint = Some(endpoint);
            p.endpoint_configured = true;
        }
    }

    /// Learns the endpoint from an authenticated packet's source (a handshake message,
    /// transport data): the peer roams there, unless learning is off
    /// ([`Router::set_learn_endpoints`]) and the peer has a configured endpoint. Returns
    /// whether the endpoint changed.
    pub fn learn_endpoint(&mut self, peer: PeerId, source: SocketAddr) -> bool {
        let learn = self.learn_endpoints;
        self.peers
            .get_mut(&peer)
            .is_some_and(|p| Self::learn(p, learn, source))
    }

    fn learn(p: &mut PeerEntry, learn_endpoints: bool, source: SocketAddr) -> bool {
        if !learn_endpoints && p.endpoint_configured && p.endpoint.is_some() {
            return false;
        }
        let changed = p.endpoint != Some(source);
        p.endpoint = Some(source);
        changed
    }

    /// Turns roaming on (the default) or off. Off is wireguard-go's
    /// `DisableSomeRoamingForBrokenMobileSemantics`: a peer whose endpoint was configured
    /// keeps it, whatever source its packets come from; a peer without one still learns
    /// it from its packets.
    pub fn set_learn_endpoints(&mut self, learn: bool) {
        self.learn_endpoints = learn;
    }

    /// Whether packets' sources replace configured endpoints.
    pub fn learns_endpoints(&self) -> bool {
        self.learn_endpoints
    }

    /// Counters and handshake time of `peer`.
    pub fn stats(&self, peer: PeerId) -> Option<PeerStats> {
        self.peers.get(&peer).map(|p| PeerStats {
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
            last_handshake: p.last_handshake,
            endpoint: p.endpoint,
        })
    }

    /// Counts bytes the caller sent to `peer` (transport and handshake messages).
    pub fn count_tx(&mut self, peer: PeerId, bytes: usize) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.tx_bytes = p.tx_bytes.saturating_add(bytes as u64);
        }
    }

    /// Counts handshake bytes received from `peer` (transport bytes are counted here).
    pub fn count_rx(&mut self, peer: PeerId, bytes: usize) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.rx_bytes = p.rx_bytes.saturating_add(bytes as u64);
        }
    }

    /// Local indices of keypairs dropped since the last call, for the owner of the index
    /// table to free.
    pub fn drain_retired_indices(&mut self) -> std::vec::Drain<'_, u32> {
        self.retired.drain(..)
    }

    /// Installs the keys of a completed handshake. An initiator's keypair is usable at
    /// once and completes the handshake; a responder's waits for the first packet.
    pub fn add_session(
        &mut self,
        peer: PeerId,
        session: NewSession,
        now: Instant,
    ) -> Result<(), DropReason> {
        let p = self.peers.get_mut(&peer).ok_or(DropReason::UnknownPeer)?;
        let keypair = Keypair {
            send: Arc::new(Cipher::new(&session.send)),
            recv: Arc::new(Cipher::new(&session.recv)),
            local_index: session.local_index,
            remote_index: session.remote_index,
            created: now,
            initiator: session.initiator,
            send_counter: 0,
            replay: ReplayWindow::new(),
        };
        if session.initiator {
            p.last_handshake = Some(now);
        }
        let before = self.retired.len();
        p.keypairs.install(keypair, &mut self.retired);
        self.by_index.insert(session.local_index, peer);
        for index in self.retired.get(before..).unwrap_or_default() {
            self.by_index.remove(index);
        }
        Ok(())
    }

    /// Erases every keypair of `peer` (3 x Reject-After-Time without a new session).
    pub fn clear_keypairs(&mut self, peer: PeerId) {
        if let Some(mut entry) = self.peers.remove(&peer) {
            self.clear_keypairs_of(&mut entry);
            self.peers.insert(peer, entry);
        }
    }

    fn clear_keypairs_of(&mut self, entry: &mut PeerEntry) {
        let before = self.retired.len();
        entry.keypairs.clear(&mut self.retired);
        for index in self.retired.get(before..).unwrap_or_default() {
            self.by_index.remove(index);
        }
    }

    /// Stops the current and next keypairs of every peer from sending (the interface's
    /// private key changed): the next packet to each peer stages and asks for a handshake
    /// with the new identity, as the kernel and wireguard-go's `ExpireCurrentKeypairs` do.
    /// Packets under those keypairs are still received until they expire.
    pub fn expire_current_keypairs(&mut self) {
        for p in self.peers.values_mut() {
            for k in [p.keypairs.current.as_mut(), p.keypairs.next.as_mut()]
                .into_iter()
                .flatten()
            {
                k.send_counter = REJECT_AFTER_MESSAGES;
            }
        }
    }

    /// Drops the packets staged for `peer` (the handshake was abandoned).
    pub fn clear_staged(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.staged.clear();
        }
    }

    /// Number of packets staged for `peer`.
    pub fn staged_len(&self, peer: PeerId) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.staged.len())
    }

    /// Whether `peer` has a keypair it can send with right now.
    pub fn can_send(&self, peer: PeerId, now: Instant) -> bool {
        self.peers
            .get(&peer)
            .and_then(|p| p.keypairs.current.as_ref())
            .is_some_and(|k| k.can_send(now))
    }

    /// Plans the encryption of `plaintext` for `peer` with its current keypair.
    fn plan_send(&mut self, peer: PeerId, plaintext_len: usize, now: Instant) -> Outbound {
        let mtu = self.mtu;
        let Some(p) = self.peers.get_mut(&peer) else {
            return Outbound::Dropped(DropReason::UnknownPeer);
        };
        let Some(endpoint) = p.endpoint else {
            return Outbound::Dropped(DropReason::NoEndpoint);
        };
        let Some(k) = p.keypairs.current.as_mut().filter(|k| k.can_send(now)) else {
            return Outbound::Staged { peer };
        };
        let counter = k.send_counter;
        k.send_counter += 1;
        let rekey = k.initiator
            && (counter >= REKEY_AFTER_MESSAGES
                || now.saturating_duration_since(k.created) >= REKEY_AFTER_TIME);
        Outbound::Send {
            peer,
            endpoint,
            rekey,
            job: SealJob {
                cipher: Arc::clone(&k.send),
                receiver_index: k.remote_index,
                counter,
                plaintext_len,
                padded_len: padded_len(plaintext_len, mtu),
            },
        }
    }

    fn stage(&mut self, peer: PeerId, plaintext: &[u8]) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.staged.len() >= MAX_STAGED_PACKETS {
                p.staged.pop_front();
            }
            p.staged.push_back(plaintext.to_vec());
        }
    }

    /// Routes an IP packet read from the TUN device by its destination address.
    pub fn route_outbound(&mut self, plaintext: &[u8], now: Instant) -> Outbound {
        let Some(header) = ip::parse(plaintext) else {
            return Outbound::Dropped(DropReason::MalformedInner);
        };
        let Some(peer) = self.allowed_ips.lookup(header.destination) else {
            return Outbound::Dropped(DropReason::NoRoute);
        };
        let plan = self.plan_send(peer, plaintext.len(), now);
        if let Outbound::Staged { .. } = plan {
            self.stage(peer, plaintext);
        }
        plan
    }

    /// Routes a batch: one [`Outbound`] per packet, appended to `out` in order.
    pub fn route_outbound_batch<'a>(
        &mut self,
        packets: impl IntoIterator<Item = &'a [u8]>,
        now: Instant,
        out: &mut Vec<Outbound>,
    ) {
        out.extend(packets.into_iter().map(|p| self.route_outbound(p, now)));
    }

    /// A keepalive (empty payload) for `peer`. Keepalives are never staged: without a
    /// session there is nothing to keep alive.
    pub fn keepalive(&mut self, peer: PeerId, now: Instant) -> Outbound {
        match self.plan_send(peer, 0, now) {
            Outbound::Staged { .. } => Outbound::Dropped(DropReason::Expired),
            other => other,
        }
    }

    /// Seals the packets staged for `peer` if it now has a usable keypair, oldest first.
    pub fn flush_staged(&mut self, peer: PeerId, now: Instant, out: &mut Vec<StagedSend>) {
        while let Some(plaintext) = self.peers.get_mut(&peer).and_then(|p| p.staged.pop_front()) {
            match self.plan_send(peer, plaintext.len(), now) {
                Outbound::Send { endpoint, job, .. } => {
                    let mut message = vec![0u8; job.message_len()];
                    if let Some(dst) = message.get_mut(HEADROOM..HEADROOM + plaintext.len()) {
                        dst.copy_from_slice(&plaintext);
                    }
                    if job.seal(&mut message).is_ok() {
                        out.push(StagedSend { message, endpoint });
                    }
                }
                Outbound::Staged { .. } => {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.staged.push_front(plaintext);
                    }
                    return;
                }
                Outbound::Dropped(_) => return,
            }
        }
    }

    /// Finds the keypair a transport message names. Shared borrow: may run concurrently.
    pub fn plan_inbound(&self, datagram: &[u8], now: Instant) -> Result<OpenJob, DropReason> {
        let msg = Transport::parse(datagram).map_err(DropReason::Malformed)?;
        let peer = *self
            .by_index
            .get(&msg.receiver_index)
            .ok_or(DropReason::UnknownIndex)?;
        let k = self
            .peers
            .get(&peer)
            .and_then(|p| p.keypairs.find(msg.receiver_index))
            .ok_or(DropReason::UnknownIndex)?;
        if !k.is_fresh(now) {
            return Err(DropReason::Expired);
        }
        if !k.replay.would_accept(msg.counter) {
            return Err(DropReason::Replay);
        }
        Ok(OpenJob {
            cipher: Arc::clone(&k.recv),
            peer,
            local_index: msg.receiver_index,
            counter: msg.counter,
        })
    }

    /// Completes an inbound packet that `job` decrypted into `plaintext` (the padded
    /// plaintext, `datagram[HEADROOM..HEADROOM + n]`): replay window, keypair confirmation,
    /// endpoint learning, counters, and the source-address check.
    pub fn finish_inbound(
        &mut self,
        job: &OpenJob,
        plaintext: &[u8],
        datagram_len: usize,
        source: SocketAddr,
        now: Instant,
    ) -> Result<Inbound, DropReason> {
        let p = self
            .peers
            .get_mut(&job.peer)
            .ok_or(DropReason::UnknownPeer)?;
        let k = p
            .keypairs
            .find_mut(job.local_index)
            .ok_or(DropReason::UnknownIndex)?;
        if !k.is_fresh(now) {
            return Err(DropReason::Expired);
        }
        if !k.replay.check_and_update(job.counter) {
            return Err(DropReason::Replay);
        }
        // Authenticated and fresh: from here on the packet is genuine.
        let handshake_complete = p.keypairs.is_next(job.local_index);
        if handshake_complete {
            let before = self.retired.len();
            p.keypairs.confirm_next(&mut self.retired);
            for index in self.retired.get(before..).unwrap_or_default() {
                self.by_index.remove(index);
            }
            p.last_handshake = Some(now);
        }
        let endpoint_changed = Self::learn(p, self.learn_endpoints, source);
        p.rx_bytes = p.rx_bytes.saturating_add(datagram_len as u64);
        // A fact about the keypair only: whether to act on it, once per handshake, is the
        // timers' rule (`PeerTimers::want_last_minute_handshake`), which owns it alone.
        let rekey = p.keypairs.current.as_ref().is_some_and(|k| {
            k.initiator
                && now.saturating_duration_since(k.created)
                    >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
        });

        // Cryptokey routing's inbound rule, checked last: the packet authenticated, so
        // the session events above stand even if its content is refused.
        let kind = if plaintext.is_empty() {
            InboundKind::Keepalive
        } else {
            match ip::parse(plaintext) {
                None => InboundKind::Refused(DropReason::MalformedInner),
                Some(header) if self.allowed_ips.lookup(header.source) != Some(job.peer) => {
                    InboundKind::Refused(DropReason::SourceNotAllowed)
                }
                Some(header) => InboundKind::Data {
                    len: header.total_len,
                },
            }
        };
        Ok(Inbound {
            peer: job.peer,
            kind,
            handshake_complete,
            rekey,
            endpoint_changed,
        })
    }

    /// Time left before `peer`'s current keypair can no longer send, if it has one.
    pub fn current_keypair_age(&self, peer: PeerId, now: Instant) -> Option<Duration> {
        self.peers
            .get(&peer)
            .and_then(|p| p.keypairs.current.as_ref())
            .map(|k| now.saturating_duration_since(k.created))
    }
}

#[cfg(test)]
mod tests;
