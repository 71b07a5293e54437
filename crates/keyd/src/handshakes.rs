//! The handshake oracle: answers the data plane's handshake requests with the static key
//! and PSKs, which never leave this process. Sans-IO: messages in, messages out; the
//! clocks (`now` for the protocol's timers, `wall` for the TAI64N timestamp of our
//! initiations) and the random number generator (ephemeral keys, receiver indices) are
//! arguments, so a simulation or a test drives it deterministically.
//!
//! Like OpenSSH's monitor, it answers a fixed table of requests and checks what each one
//! means, not only its form: a response must name an index we handed out for that very
//! peer, a cookie reply must answer a message we made, a handshake is only made for a
//! configured peer. Each request is answered with an [`Answer`] (what was done) or a
//! [`Refusal`] (why nothing was).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use rand::CryptoRng;
use wg_cookie::{CookieError, MacSigner};
use wg_handshake::{IndexTable, Role as HsRole, Session, Tai64N};
// The oracle's inputs and outputs name these: its callers (the service, the simulation,
// the device core's tests) use them from here, so only keyd links the handshake crate.
pub use wg_handshake::{HandshakeError, LocalIdentity, Peer};
use wg_messages::messages::{DatadToKeyd, KeydToDatad, PeerUpdate, SecretBytes, SessionKeys};
use wg_wire::constants::REKEY_TIMEOUT;
use wg_wire::{
    CookieReply, MESSAGE_INITIATION, MESSAGE_RESPONSE, PresharedKey, PublicKey, Response,
    WireError, message_type,
};

use crate::pool::EphemeralPool;

/// What the oracle did with a request of the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An initiation was made (`SendHandshake` without endpoint).
    Initiated,
    /// An initiation was answered: the responder's session keys, then the response.
    Responded,
    /// A response completed our initiation: the initiator's session keys.
    Completed,
    /// A cookie reply opened; its cookie signs MAC2 of the next messages to that peer.
    CookieConsumed,
    /// The peer's handshake state was erased and its pending index freed.
    KeysZeroed,
    /// The retired session indices were freed (those no initiation waits on).
    IndicesRetired,
    /// Nothing for the oracle (a hello, statistics).
    Ignored,
}

/// Why the oracle did nothing with a request of the data plane. Nothing is sent for a
/// refusal. No variant carries secret material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No private key is set: no handshake can be made or answered.
    #[error("no private key is set")]
    NoIdentity,
    /// The request names a peer that is not configured (or no longer is: a response or
    /// cookie reply naming the session index of a removed peer).
    #[error("the peer is not configured")]
    UnknownPeer,
    /// A response or cookie reply names a receiver index keyd did not hand out or no
    /// longer holds.
    #[error("the message names a receiver index keyd does not hold")]
    UnknownIndex,
    /// An initiation was asked for within `REKEY_TIMEOUT` of the last one for this peer.
    #[error("an initiation for this peer was made less than REKEY_TIMEOUT ago")]
    RateLimited,
    /// A handshake message that is neither an initiation nor a response.
    #[error("the message is neither a handshake initiation nor a response")]
    NotAHandshake,
    /// A response or cookie reply that does not parse.
    #[error("malformed message: {0}")]
    Malformed(WireError),
    /// The Noise handshake refused the message (or could not make one).
    #[error("handshake refused: {0}")]
    Handshake(HandshakeError),
    /// The cookie reply did not open.
    #[error("cookie reply refused: {0}")]
    Cookie(CookieError),
}

/// One peer's handshake state and MAC signer.
struct HandshakePeer {
    noise: Peer,
    macs: MacSigner,
    /// When keyd last made an initiation for this peer: at most one per `REKEY_TIMEOUT`,
    /// as the whitepaper asks, whatever the data plane requests.
    last_initiation: Option<Instant>,
}

/// The key process's protocol state.
pub struct Handshakes {
    identity: Option<LocalIdentity>,
    peers: HashMap<PublicKey, HandshakePeer>,
    /// Receiver indices handed out: pending initiations and live sessions.
    indices: IndexTable<PublicKey>,
    /// Ephemeral keys made while idle.
    pool: EphemeralPool,
}

impl std::fmt::Debug for Handshakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshakes")
            .field("identity", &self.identity)
            .field("peers", &self.peers.len())
            .field("indices", &self.indices.len())
            .field("pool", &self.pool)
            .finish()
    }
}

impl Default for Handshakes {
    fn default() -> Self {
        Self::new()
    }
}

fn session_message(public_key: PublicKey, s: Session, endpoint: Option<SocketAddr>) -> KeydToDatad {
    KeydToDatad::Session(SessionKeys {
        public_key,
        initiator: s.role == HsRole::Initiator,
        local_index: s.local_index,
        remote_index: s.remote_index,
        send: SecretBytes(*s.send.expose_secret()),
        recv: SecretBytes(*s.recv.expose_secret()),
        endpoint,
    })
}

impl Handshakes {
    /// No identity, no peers.
    pub fn new() -> Self {
        Self {
            identity: None,
            peers: HashMap::new(),
            indices: IndexTable::new(),
            pool: EphemeralPool::new(),
        }
    }

    /// Makes every ephemeral key on demand, never ahead of time (the pool stays empty).
    pub fn without_key_pool(mut self) -> Self {
        self.pool = EphemeralPool::disabled();
        self
    }

    /// Whether keyd should spend an idle moment on [`Handshakes::refill_one`].
    pub fn wants_refill(&self) -> bool {
        self.identity.is_some() && self.pool.wants_refill()
    }

    /// Makes one ephemeral key ahead of time (call only while no message waits).
    pub fn refill_one<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        if self.identity.is_some() {
            self.pool.refill_one(now, rng);
        }
    }

    /// When a ready ephemeral key goes stale and must be wiped, if one is ready.
    pub fn next_key_expiry(&self) -> Option<Instant> {
        self.pool.next_expiry()
    }

    /// Wipes the ready ephemeral keys that went stale.
    pub fn expire_keys(&mut self, now: Instant) {
        self.pool.expire(now);
    }

    /// The public halves of the ephemeral keys ready, oldest first (for tests and the
    /// simulation: which key a message used).
    pub fn ready_key_publics(&self) -> Vec<[u8; 32]> {
        self.pool.publics()
    }

    /// Our public key, if a private key is set.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.identity.as_ref().map(|i| *i.public_key())
    }

    /// The current identity.
    pub fn identity(&self) -> Option<&LocalIdentity> {
        self.identity.as_ref()
    }

    /// A configured peer's handshake state (for inspection: its pending index).
    pub fn peer(&self, public_key: &PublicKey) -> Option<&Peer> {
        self.peers.get(public_key).map(|p| &p.noise)
    }

    /// Receiver indices held: those of pending initiations and of the sessions the data
    /// plane has not retired yet.
    pub fn live_indices(&self) -> usize {
        self.indices.len()
    }

    /// Replaces the identity. Every handshake in progress is abandoned (it was made with
    /// the old key) and the peers' static-static secrets are recomputed lazily.
    pub fn set_identity(&mut self, identity: Option<LocalIdentity>) {
        self.identity = identity;
        // No key made under the old identity is used under the new one.
        self.pool.clear();
        for p in self.peers.values_mut() {
            p.noise.clear();
            p.last_initiation = None;
        }
        self.indices = IndexTable::new();
    }

    /// Adds a peer, or updates its PSK if it exists. Needs an identity (without one no
    /// handshake can be made; peers are added when it is set).
    pub fn upsert_peer(&mut self, public_key: PublicKey, psk: PresharedKey) {
        if let Some(existing) = self.peers.get_mut(&public_key) {
            existing.noise.set_preshared_key(psk);
            return;
        }
        let Some(identity) = &self.identity else {
            return;
        };
        self.peers.insert(
            public_key,
            HandshakePeer {
                noise: Peer::new(identity, public_key, psk),
                macs: MacSigner::new(&public_key),
                last_initiation: None,
            },
        );
    }

    /// Removes a peer and erases its handshake state.
    pub fn remove_peer(&mut self, public_key: &PublicKey) {
        if let Some(p) = self.peers.remove(public_key)
            && let Some(index) = p.noise.pending_local_index()
        {
            self.indices.remove(index);
        }
    }

    /// Forgets every session index (the data plane restarted and lost its keypairs).
    pub fn reset_sessions(&mut self) {
        self.indices = IndexTable::new();
        for p in self.peers.values_mut() {
            p.noise.clear();
            p.last_initiation = None;
        }
    }

    /// Handles one request from the data plane, appending the answers to `out`. `now`
    /// drives the protocol's timers, `wall` is the wall clock whose TAI64N timestamp an
    /// initiation carries, and `rng` draws ephemeral keys and receiver indices. Nothing
    /// is appended on a refusal.
    pub fn on_datad<R: CryptoRng + ?Sized>(
        &mut self,
        msg: DatadToKeyd,
        now: Instant,
        wall: SystemTime,
        rng: &mut R,
        out: &mut Vec<KeydToDatad>,
    ) -> Result<Answer, Refusal> {
        match msg {
            DatadToKeyd::Hello(_) | DatadToKeyd::Stats { .. } => Ok(Answer::Ignored),
            DatadToKeyd::Handshake { message, source } => match message_type(&message) {
                Ok(MESSAGE_INITIATION) => self.respond(&message, source, now, rng, out),
                Ok(MESSAGE_RESPONSE) => self.complete(&message, source, out),
                _ => {
                    tracing::debug!("data plane forwarded a non-handshake message");
                    Err(Refusal::NotAHandshake)
                }
            },
            DatadToKeyd::CookieReply { message } => self.consume_cookie(&message, now),
            DatadToKeyd::WantHandshake { public_key, .. } => {
                self.initiate(public_key, now, wall, rng, out)
            }
            DatadToKeyd::ZeroKeys { public_key } => {
                let p = self
                    .peers
                    .get_mut(&public_key)
                    .ok_or(Refusal::UnknownPeer)?;
                if let Some(index) = p.noise.pending_local_index() {
                    self.indices.remove(index);
                }
                p.noise.clear();
                Ok(Answer::KeysZeroed)
            }
            DatadToKeyd::RetiredIndices { indices } => {
                for index in indices {
                    // Only free an index that no handshake of ours is still waiting on.
                    let pending = self
                        .indices
                        .get(index)
                        .and_then(|pk| self.peers.get(pk))
                        .is_some_and(|p| p.noise.pending_local_index() == Some(index));
                    if !pending {
                        self.indices.remove(index);
                    }
                }
                Ok(Answer::IndicesRetired)
            }
        }
    }

    fn initiate<R: CryptoRng + ?Sized>(
        &mut self,
        public_key: PublicKey,
        now: Instant,
        wall: SystemTime,
        rng: &mut R,
        out: &mut Vec<KeydToDatad>,
    ) -> Result<Answer, Refusal> {
        let identity = self.identity.as_ref().ok_or(Refusal::NoIdentity)?;
        let p = self
            .peers
            .get_mut(&public_key)
            .ok_or(Refusal::UnknownPeer)?;
        if p.last_initiation
            .is_some_and(|t| now.saturating_duration_since(t) < REKEY_TIMEOUT)
        {
            tracing::debug!(
                "initiation for {public_key:?} refused: one was made less than REKEY_TIMEOUT ago"
            );
            return Err(Refusal::RateLimited);
        }
        if let Some(old) = p.noise.pending_local_index() {
            self.indices.remove(old);
        }
        let index = self.indices.insert(rng, public_key);
        let timestamp = Tai64N::from_system_time(wall);
        let ephemeral = self.pool.take(now, rng);
        match p.noise.create_initiation_with(
            identity,
            index,
            timestamp,
            &mut p.macs,
            now,
            ephemeral,
        ) {
            Ok(message) => {
                p.last_initiation = Some(now);
                out.push(KeydToDatad::SendHandshake {
                    public_key,
                    message: message.to_vec(),
                    endpoint: None,
                });
                Ok(Answer::Initiated)
            }
            Err(e) => {
                self.indices.remove(index);
                tracing::warn!("cannot initiate a handshake with {public_key:?}: {e}");
                Err(Refusal::Handshake(e))
            }
        }
    }

    fn respond<R: CryptoRng + ?Sized>(
        &mut self,
        message: &[u8],
        source: SocketAddr,
        now: Instant,
        rng: &mut R,
        out: &mut Vec<KeydToDatad>,
    ) -> Result<Answer, Refusal> {
        let identity = self.identity.as_ref().ok_or(Refusal::NoIdentity)?;
        let incoming = identity.open_initiation(message).map_err(|e| {
            tracing::debug!("initiation from {source} rejected: {e}");
            Refusal::Handshake(e)
        })?;
        let public_key = *incoming.remote_static();
        let Some(p) = self.peers.get_mut(&public_key) else {
            tracing::debug!("initiation from {source} by unknown peer {public_key:?}");
            return Err(Refusal::UnknownPeer);
        };
        // Accepting an initiation replaces one we may have sent ourselves (crossing
        // initiations): its index is no longer waited on and must be freed.
        let superseded = p.noise.pending_local_index();
        if let Err(e) = p.noise.consume_initiation(identity, incoming, now) {
            tracing::debug!("initiation from {source} ({public_key:?}) rejected: {e}");
            return Err(Refusal::Handshake(e));
        }
        if let Some(index) = superseded {
            self.indices.remove(index);
        }
        let index = self.indices.insert(rng, public_key);
        let ephemeral = self.pool.take(now, rng);
        match p
            .noise
            .create_response_with(index, &mut p.macs, now, ephemeral)
        {
            Ok((response, session)) => {
                // Keys first: the initiator's first packet may follow the response closely.
                out.push(session_message(public_key, session, Some(source)));
                out.push(KeydToDatad::SendHandshake {
                    public_key,
                    message: response.to_vec(),
                    endpoint: Some(source),
                });
                Ok(Answer::Responded)
            }
            Err(e) => {
                self.indices.remove(index);
                tracing::debug!("cannot answer {public_key:?}: {e}");
                Err(Refusal::Handshake(e))
            }
        }
    }

    fn complete(
        &mut self,
        message: &[u8],
        source: SocketAddr,
        out: &mut Vec<KeydToDatad>,
    ) -> Result<Answer, Refusal> {
        let identity = self.identity.as_ref().ok_or(Refusal::NoIdentity)?;
        let response = Response::parse(message).map_err(Refusal::Malformed)?;
        let Some(&public_key) = self.indices.get(response.receiver_index) else {
            tracing::debug!("response from {source} names an unknown index");
            return Err(Refusal::UnknownIndex);
        };
        // A session index outlives its peer until the data plane retires it.
        let p = self
            .peers
            .get_mut(&public_key)
            .ok_or(Refusal::UnknownPeer)?;
        match p.noise.consume_response(identity, message) {
            Ok(session) => {
                out.push(session_message(public_key, session, Some(source)));
                Ok(Answer::Completed)
            }
            Err(e) => {
                tracing::debug!("response from {source} ({public_key:?}) rejected: {e}");
                Err(Refusal::Handshake(e))
            }
        }
    }

    fn consume_cookie(&mut self, message: &[u8], now: Instant) -> Result<Answer, Refusal> {
        let reply = CookieReply::parse(message).map_err(Refusal::Malformed)?;
        let Some(&public_key) = self.indices.get(reply.receiver_index) else {
            return Err(Refusal::UnknownIndex);
        };
        let p = self
            .peers
            .get_mut(&public_key)
            .ok_or(Refusal::UnknownPeer)?;
        match p.macs.consume_cookie_reply(&reply, now) {
            Ok(()) => Ok(Answer::CookieConsumed),
            Err(e) => {
                tracing::debug!("cookie reply for {public_key:?} rejected: {e}");
                Err(Refusal::Cookie(e))
            }
        }
    }
}

/// The data plane's view of a peer: everything but its PSK, in as many messages as its
/// allowed IPs need.
pub fn peer_update(
    public_key: PublicKey,
    endpoint: Option<SocketAddr>,
    allowed_ips: Vec<ipnet::IpNet>,
    persistent_keepalive: u16,
) -> Vec<KeydToDatad> {
    PeerUpdate {
        public_key,
        endpoint,
        allowed_ips,
        persistent_keepalive,
        more_allowed_ips: false,
    }
    .into_messages()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::time::{Duration, UNIX_EPOCH};
    use wg_cookie::CookieChecker;
    use wg_messages::messages::SessionKeys;
    use zeroize::Zeroizing;

    fn identity(seed: u8) -> LocalIdentity {
        LocalIdentity::from_private_bytes(Zeroizing::new([seed; 32]))
    }

    /// The wall clock `secs` seconds after a fixed date (November 2023).
    fn wall(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn source() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 51820))
    }

    fn initiations(out: &[KeydToDatad]) -> usize {
        out.iter()
            .filter(|m| matches!(m, KeydToDatad::SendHandshake { .. }))
            .count()
    }

    fn want(hs: &mut Handshakes, peer: PublicKey, now: Instant) -> usize {
        let mut out = Vec::new();
        let msg = DatadToKeyd::WantHandshake {
            public_key: peer,
            retry: false,
        };
        let mut rng = StdRng::seed_from_u64(0);
        let _ = hs.on_datad(msg, now, wall(0), &mut rng, &mut out);
        initiations(&out)
    }

    #[test]
    fn a_new_private_key_wipes_the_ephemeral_keys_made_ahead() {
        let (mut hs, peer) = with_one_peer();
        let mut rng = StdRng::seed_from_u64(3);
        let now = Instant::now();
        while hs.wants_refill() {
            hs.refill_one(now, &mut rng);
        }
        let old = hs.ready_key_publics();
        assert_eq!(old.len(), crate::pool::CAPACITY);
        hs.set_identity(Some(identity(9)));
        assert!(
            hs.ready_key_publics().is_empty(),
            "old keys survived a key change"
        );
        // The next initiation carries a key made after the change.
        let mut out = Vec::new();
        let msg = DatadToKeyd::WantHandshake {
            public_key: peer,
            retry: false,
        };
        hs.upsert_peer(peer, PresharedKey::zero());
        assert_eq!(
            hs.on_datad(msg, now, wall(0), &mut rng, &mut out),
            Ok(Answer::Initiated)
        );
        let Some(KeydToDatad::SendHandshake { message, .. }) = out.first() else {
            panic!("no initiation: {out:?}");
        };
        let ephemeral: [u8; 32] = message[8..40].try_into().unwrap_or_default();
        assert!(!old.contains(&ephemeral));
        // Without an identity nothing is made ahead.
        hs.set_identity(None);
        assert!(!hs.wants_refill());
        hs.refill_one(now, &mut rng);
        assert!(hs.ready_key_publics().is_empty());
    }

    /// An oracle with an identity and one configured peer.
    fn with_one_peer() -> (Handshakes, PublicKey) {
        let mut hs = Handshakes::new();
        hs.set_identity(Some(identity(1)));
        let peer = *identity(2).public_key();
        hs.upsert_peer(peer, PresharedKey::zero());
        (hs, peer)
    }

    /// One side of a pair: an oracle that knows the other side, and its own RNG.
    struct Side {
        hs: Handshakes,
        /// Our public key.
        key: PublicKey,
        /// The other side's public key.
        peer: PublicKey,
        rng: StdRng,
    }

    impl Side {
        fn ask(
            &mut self,
            msg: DatadToKeyd,
            now: Instant,
            wall: SystemTime,
        ) -> (Result<Answer, Refusal>, Vec<KeydToDatad>) {
            let mut out = Vec::new();
            let result = self.hs.on_datad(msg, now, wall, &mut self.rng, &mut out);
            if result.is_err() {
                assert!(out.is_empty(), "a refusal sends nothing: {out:?}");
            }
            (result, out)
        }

        /// Asks for an initiation to the other side; returns it.
        fn initiate(&mut self, now: Instant, wall: SystemTime) -> Vec<u8> {
            let msg = DatadToKeyd::WantHandshake {
                public_key: self.peer,
                retry: false,
            };
            let (result, out) = self.ask(msg, now, wall);
            assert_eq!(result, Ok(Answer::Initiated));
            let [
                KeydToDatad::SendHandshake {
                    public_key,
                    message,
                    endpoint: None,
                },
            ] = &out[..]
            else {
                panic!("expected one initiation, got {out:?}");
            };
            assert_eq!(*public_key, self.peer);
            message.clone()
        }

        /// A handshake message as the data plane forwards it.
        fn receive(
            &mut self,
            message: &[u8],
            now: Instant,
        ) -> (Result<Answer, Refusal>, Vec<KeydToDatad>) {
            let msg = DatadToKeyd::Handshake {
                message: message.to_vec(),
                source: source(),
            };
            self.ask(msg, now, wall(0))
        }

        /// Answers an initiation; returns the session keys and the response.
        fn answer(&mut self, initiation: &[u8], now: Instant) -> (SessionKeys, Vec<u8>) {
            let (result, out) = self.receive(initiation, now);
            assert_eq!(result, Ok(Answer::Responded));
            let [
                KeydToDatad::Session(keys),
                KeydToDatad::SendHandshake {
                    message,
                    endpoint: Some(_),
                    ..
                },
            ] = &out[..]
            else {
                panic!("expected keys then a response, got {out:?}");
            };
            assert!(!keys.initiator);
            (keys.clone(), message.clone())
        }

        /// Completes our initiation with a response; returns the session keys.
        fn complete(&mut self, response: &[u8], now: Instant) -> SessionKeys {
            let (result, out) = self.receive(response, now);
            assert_eq!(result, Ok(Answer::Completed));
            let [KeydToDatad::Session(keys)] = &out[..] else {
                panic!("expected session keys, got {out:?}");
            };
            assert!(keys.initiator);
            keys.clone()
        }

        fn retire(&mut self, indices: Vec<u32>, now: Instant) {
            let (result, out) = self.ask(DatadToKeyd::RetiredIndices { indices }, now, wall(0));
            assert_eq!(result, Ok(Answer::IndicesRetired));
            assert!(out.is_empty());
        }

        fn pending(&self) -> Option<u32> {
            self.hs.peer(&self.peer).and_then(Peer::pending_local_index)
        }
    }

    /// Two oracles that know each other (identities 1 and 2), with seeded RNGs.
    fn pair() -> (Side, Side) {
        let side = |me: u8, other: u8| {
            let mut hs = Handshakes::new();
            hs.set_identity(Some(identity(me)));
            let peer = *identity(other).public_key();
            hs.upsert_peer(peer, PresharedKey::zero());
            Side {
                hs,
                key: *identity(me).public_key(),
                peer,
                rng: StdRng::seed_from_u64(u64::from(me)),
            }
        };
        (side(1, 2), side(2, 1))
    }

    /// A full handshake initiated by `a` at `now`; returns (a's keys, b's keys).
    fn handshake(
        a: &mut Side,
        b: &mut Side,
        now: Instant,
        wall: SystemTime,
    ) -> (SessionKeys, SessionKeys) {
        let init = a.initiate(now, wall);
        let (b_keys, response) = b.answer(&init, now);
        let a_keys = a.complete(&response, now);
        (a_keys, b_keys)
    }

    #[test]
    fn one_initiation_per_rekey_timeout_whatever_the_data_plane_asks() {
        let (mut hs, peer) = with_one_peer();
        let t0 = Instant::now();
        assert_eq!(want(&mut hs, peer, t0), 1);
        let flood: usize = (0..1000)
            .map(|i| want(&mut hs, peer, t0 + Duration::from_millis(i)))
            .sum();
        assert_eq!(flood, 0, "a data plane cannot make keyd initiate in a loop");
        assert_eq!(want(&mut hs, peer, t0 + REKEY_TIMEOUT), 1);
        // Unknown peers get nothing at all.
        assert_eq!(want(&mut hs, *identity(3).public_key(), t0), 0);
    }

    #[test]
    fn a_new_identity_or_data_plane_may_initiate_at_once() {
        let (mut hs, peer) = with_one_peer();
        let t0 = Instant::now();
        assert_eq!(want(&mut hs, peer, t0), 1);
        hs.set_identity(Some(identity(4)));
        hs.upsert_peer(peer, PresharedKey::zero());
        assert_eq!(want(&mut hs, peer, t0 + Duration::from_millis(1)), 1);
        hs.reset_sessions();
        assert_eq!(want(&mut hs, peer, t0 + Duration::from_millis(2)), 1);
    }

    #[test]
    fn refusals_say_why() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(7);
        let mut out = Vec::new();
        let mut hs = Handshakes::new();
        let peer = *identity(2).public_key();
        let want = DatadToKeyd::WantHandshake {
            public_key: peer,
            retry: false,
        };
        assert_eq!(
            hs.on_datad(want.clone(), t0, wall(0), &mut rng, &mut out),
            Err(Refusal::NoIdentity)
        );
        let (mut hs, _) = with_one_peer();
        let stranger = DatadToKeyd::WantHandshake {
            public_key: *identity(3).public_key(),
            retry: false,
        };
        assert_eq!(
            hs.on_datad(stranger, t0, wall(0), &mut rng, &mut out),
            Err(Refusal::UnknownPeer)
        );
        assert_eq!(
            hs.on_datad(want.clone(), t0, wall(0), &mut rng, &mut out),
            Ok(Answer::Initiated)
        );
        assert_eq!(
            hs.on_datad(want, t0, wall(0), &mut rng, &mut out),
            Err(Refusal::RateLimited)
        );
        out.clear();
        // A cookie reply (type 3) and a runt are not handshake messages.
        for message in [vec![3, 0, 0, 0], vec![1]] {
            let msg = DatadToKeyd::Handshake {
                message,
                source: source(),
            };
            assert_eq!(
                hs.on_datad(msg, t0, wall(0), &mut rng, &mut out),
                Err(Refusal::NotAHandshake)
            );
        }
        // A response of the wrong length.
        let msg = DatadToKeyd::Handshake {
            message: vec![2, 0, 0, 0, 1],
            source: source(),
        };
        assert!(matches!(
            hs.on_datad(msg, t0, wall(0), &mut rng, &mut out),
            Err(Refusal::Malformed(_))
        ));
        // An initiation that does not open.
        let msg = DatadToKeyd::Handshake {
            message: [&[1u8, 0, 0, 0][..], &[0; 144]].concat(),
            source: source(),
        };
        assert!(matches!(
            hs.on_datad(msg, t0, wall(0), &mut rng, &mut out),
            Err(Refusal::Handshake(_))
        ));
        let zero = DatadToKeyd::ZeroKeys {
            public_key: *identity(3).public_key(),
        };
        assert_eq!(
            hs.on_datad(zero, t0, wall(0), &mut rng, &mut out),
            Err(Refusal::UnknownPeer)
        );
        let stats = DatadToKeyd::Stats {
            request: 0,
            peers: Vec::new(),
            done: true,
        };
        assert_eq!(
            hs.on_datad(stats, t0, wall(0), &mut rng, &mut out),
            Ok(Answer::Ignored)
        );
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            Refusal::UnknownIndex.to_string(),
            "the message names a receiver index keyd does not hold"
        );
    }

    /// Whitepaper §5.4: each side names its end of a session by a receiver index it chose;
    /// a finished handshake leaves exactly that one index per side, and the keys match.
    #[test]
    fn a_full_handshake_leaves_one_session_index_on_each_side() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        let init = a.initiate(t0, wall(0));
        assert_eq!(a.hs.live_indices(), 1);
        let a_index = a.pending().unwrap();
        assert_eq!(
            init[4..8],
            a_index.to_le_bytes(),
            "the sender index is the pending one"
        );

        let (b_keys, response) = b.answer(&init, t0);
        assert_eq!(b.hs.live_indices(), 1);
        assert_eq!(b.pending(), None, "a responder waits on nothing");
        assert_eq!(b_keys.remote_index, a_index);
        assert_eq!(b_keys.public_key, a.key);

        let a_keys = a.complete(&response, t0);
        assert_eq!(
            a.hs.live_indices(),
            1,
            "the pending index became the session's"
        );
        assert_eq!(a.pending(), None);
        assert_eq!(a_keys.local_index, a_index);
        assert_eq!(a_keys.remote_index, b_keys.local_index);
        assert_eq!(a_keys.public_key, b.key);
        assert_eq!(a_keys.send.0, b_keys.recv.0);
        assert_eq!(a_keys.recv.0, b_keys.send.0);

        // The response again: the handshake is over, nothing waits on that index.
        let (result, _) = a.receive(&response, t0);
        assert_eq!(
            result,
            Err(Refusal::Handshake(HandshakeError::UnexpectedMessage))
        );
        assert_eq!(a.hs.live_indices(), 1);
    }

    #[test]
    fn retired_indices_free_sessions_but_never_a_pending_initiation() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        let (a_keys, b_keys) = handshake(&mut a, &mut b, t0, wall(0));
        let t1 = t0 + REKEY_TIMEOUT;
        let init = a.initiate(t1, wall(1));
        let pending = a.pending().unwrap();
        assert_eq!(a.hs.live_indices(), 2);

        // A hostile data plane retires the pending index with the session's (and one
        // never handed out): only the session's goes.
        a.retire(vec![pending, a_keys.local_index, pending ^ 1], t1);
        assert_eq!(a.hs.live_indices(), 1);
        assert_eq!(a.pending(), Some(pending));
        // The initiation can still be answered.
        let (_, response) = b.answer(&init, t1);
        assert_eq!(b.hs.live_indices(), 2);
        a.complete(&response, t1);
        assert_eq!(a.hs.live_indices(), 1);

        // Retired, the index is gone: once is enough, twice changes nothing.
        b.retire(vec![b_keys.local_index, b_keys.local_index], t1);
        assert_eq!(b.hs.live_indices(), 1);
        a.retire(vec![pending], t1);
        assert_eq!(a.hs.live_indices(), 0);
    }

    #[test]
    fn a_new_initiation_frees_the_previous_pending_index() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        let first = a.initiate(t0, wall(0));
        let first_index = a.pending().unwrap();
        let t1 = t0 + REKEY_TIMEOUT;
        let second = a.initiate(t1, wall(1));
        let second_index = a.pending().unwrap();
        assert_ne!(first_index, second_index);
        assert_eq!(
            a.hs.live_indices(),
            1,
            "the first initiation's index was freed"
        );

        // The answer to the first initiation names an index A no longer holds.
        let (_, late) = b.answer(&first, t0);
        let (result, _) = a.receive(&late, t1);
        assert_eq!(result, Err(Refusal::UnknownIndex));
        // The second completes.
        let (_, response) = b.answer(&second, t1);
        a.complete(&response, t1);
        assert_eq!(a.hs.live_indices(), 1);
    }

    #[test]
    fn removing_a_peer_frees_its_pending_index() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        a.initiate(t0, wall(0));
        assert_eq!(a.hs.live_indices(), 1);
        a.hs.remove_peer(&b.key);
        assert_eq!(a.hs.live_indices(), 0);
        assert!(a.hs.peer(&b.key).is_none());

        // A session index outlives its peer until the data plane retires it (the data
        // plane drops the peer's keypairs with the peer and says so).
        let (mut a, _) = pair();
        let (a_keys, _) = handshake(&mut a, &mut b, t0 + REKEY_TIMEOUT, wall(1));
        a.initiate(t0 + REKEY_TIMEOUT * 2, wall(2));
        assert_eq!(a.hs.live_indices(), 2);
        a.hs.remove_peer(&b.key);
        assert_eq!(a.hs.live_indices(), 1);
        a.retire(vec![a_keys.local_index], t0 + REKEY_TIMEOUT * 2);
        assert_eq!(a.hs.live_indices(), 0);
    }

    #[test]
    fn a_data_plane_reset_and_a_new_identity_free_every_index() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        handshake(&mut a, &mut b, t0, wall(0));
        a.initiate(t0 + REKEY_TIMEOUT, wall(1));
        assert_eq!(a.hs.live_indices(), 2);
        a.hs.reset_sessions();
        assert_eq!(a.hs.live_indices(), 0);
        assert_eq!(a.pending(), None);
        assert!(a.hs.peer(&b.key).is_some(), "the peers stay");

        handshake(&mut a, &mut b, t0 + REKEY_TIMEOUT * 2, wall(2));
        a.initiate(t0 + REKEY_TIMEOUT * 3, wall(3));
        assert_eq!(a.hs.live_indices(), 2);
        a.hs.set_identity(Some(identity(1)));
        assert_eq!(a.hs.live_indices(), 0);
        assert_eq!(a.pending(), None);
    }

    /// Whitepaper §6.1/wireguard-go: both sides initiate at once; each answers the other's
    /// initiation, which replaces its own; the responses then answer nothing.
    #[test]
    fn crossing_initiations_supersede_the_own_and_leak_no_index() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        let init_a = a.initiate(t0, wall(0));
        let init_b = b.initiate(t0, wall(0));
        let (a_pending, b_pending) = (a.pending().unwrap(), b.pending().unwrap());
        assert_eq!((a.hs.live_indices(), b.hs.live_indices()), (1, 1));

        let (b_keys, response_b) = b.answer(&init_a, t0);
        assert_eq!(b.pending(), None, "B's own initiation is superseded");
        assert_eq!(b.hs.live_indices(), 1, "and its index freed");
        assert_ne!(b_keys.local_index, b_pending);
        let (a_keys, response_a) = a.answer(&init_b, t0);
        assert_eq!(a.pending(), None);
        assert_eq!(a.hs.live_indices(), 1);
        assert_ne!(a_keys.local_index, a_pending);

        // Each response names the initiation the other side gave up.
        for (side, response) in [(&mut a, &response_b), (&mut b, &response_a)] {
            let (result, _) = side.receive(response, t0);
            assert!(
                matches!(
                    result,
                    Err(Refusal::UnknownIndex
                        | Refusal::Handshake(HandshakeError::UnexpectedMessage))
                ),
                "{result:?}"
            );
            assert_eq!(side.hs.live_indices(), 1);
        }
        a.retire(vec![a_keys.local_index], t0);
        b.retire(vec![b_keys.local_index], t0);
        assert_eq!((a.hs.live_indices(), b.hs.live_indices()), (0, 0));
    }

    /// Whitepaper §5.4.7: a cookie reply is only taken for a message we sent, found by
    /// the receiver index it names.
    #[test]
    fn cookie_replies_are_taken_only_for_own_indices() {
        let (mut a, b) = pair();
        let t0 = Instant::now();
        let init = a.initiate(t0, wall(0));
        let mut checker = CookieChecker::new(&b.key);
        let mut rng = StdRng::seed_from_u64(99);
        let reply = checker.create_reply(&init, source(), t0, &mut rng).unwrap();
        let cookie = |reply: &CookieReply| DatadToKeyd::CookieReply {
            message: reply.to_bytes().to_vec(),
        };
        let (result, out) = a.ask(cookie(&reply), t0, wall(0));
        assert_eq!(result, Ok(Answer::CookieConsumed));
        assert!(out.is_empty());

        // The cookie now signs MAC2 of the next initiation.
        let t1 = t0 + REKEY_TIMEOUT;
        let next = a.initiate(t1, wall(1));
        assert_ne!(next[next.len() - 16..], [0; 16]);

        // An index A never handed out.
        let mut stranger = reply.clone();
        stranger.receiver_index = reply.receiver_index ^ 0x8000_0000;
        let (result, _) = a.ask(cookie(&stranger), t1, wall(1));
        assert_eq!(result, Err(Refusal::UnknownIndex));
        // The first initiation's index, freed by the second initiation.
        let (result, _) = a.ask(cookie(&reply), t1, wall(1));
        assert_eq!(result, Err(Refusal::UnknownIndex));
        // The right index, but not a reply to what A sent.
        let mut forged = checker.create_reply(&next, source(), t1, &mut rng).unwrap();
        forged.encrypted_cookie[0] ^= 1;
        let (result, _) = a.ask(cookie(&forged), t1, wall(1));
        assert_eq!(
            result,
            Err(Refusal::Cookie(CookieError::InvalidCookieReply))
        );
        // Garbage.
        for message in [
            vec![0; 10],
            vec![3, 0, 0, 0],
            [&[3u8, 0, 0, 0][..], &[0; 70]].concat(),
        ] {
            let (result, _) = a.ask(DatadToKeyd::CookieReply { message }, t1, wall(1));
            assert!(matches!(result, Err(Refusal::Malformed(_))), "{result:?}");
        }
    }

    /// Whitepaper §6.2: after 3 x Reject-After-Time the handshake state is erased.
    #[test]
    fn zero_keys_erases_the_handshake_and_frees_its_index() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        let init = a.initiate(t0, wall(0));
        let (_, response) = b.answer(&init, t0);
        let (result, out) = a.ask(DatadToKeyd::ZeroKeys { public_key: b.key }, t0, wall(0));
        assert_eq!(result, Ok(Answer::KeysZeroed));
        assert!(out.is_empty());
        assert_eq!(a.pending(), None);
        assert_eq!(a.hs.live_indices(), 0);
        let (result, out) = a.receive(&response, t0);
        assert_eq!(result, Err(Refusal::UnknownIndex));
        assert!(out.is_empty(), "no session from erased state");
    }

    /// Whitepaper §5.1: the initiation carries a TAI64N timestamp; the responder takes only
    /// newer ones. Here it comes from the `wall` argument, not from the system clock.
    #[test]
    fn the_initiation_timestamp_is_the_wall_clock_argument() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        let init = a.initiate(t0, wall(10));
        b.answer(&init, t0);
        for (step, secs) in [(1, 5), (2, 10)] {
            let old = a.initiate(t0 + REKEY_TIMEOUT * step, wall(secs));
            let (result, out) = b.receive(&old, t0 + REKEY_TIMEOUT * step);
            assert_eq!(result, Err(Refusal::Handshake(HandshakeError::Replay)));
            assert!(out.is_empty());
        }
        let newer = a.initiate(t0 + REKEY_TIMEOUT * 3, wall(11));
        b.answer(&newer, t0 + REKEY_TIMEOUT * 3);
        // Made in 1970 by a wall clock that says so, refused as a replay.
        let (mut a, mut b) = pair();
        b.answer(&a.initiate(t0, wall(0)), t0);
        let ancient = a.initiate(t0 + REKEY_TIMEOUT, UNIX_EPOCH);
        let (result, _) = b.receive(&ancient, t0 + REKEY_TIMEOUT);
        assert_eq!(result, Err(Refusal::Handshake(HandshakeError::Replay)));
    }

    #[test]
    fn the_same_seed_makes_the_same_initiation() {
        let t0 = Instant::now();
        let made = |seed: u64| {
            let (mut a, _) = pair();
            a.rng = StdRng::seed_from_u64(seed);
            a.initiate(t0, wall(0))
        };
        assert_eq!(made(5), made(5));
        assert_ne!(made(5), made(6));
    }
}
