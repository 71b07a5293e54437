//! The handshake oracle: answers the data plane's handshake requests with the static key
//! and PSKs, which never leave this process. Sans-IO: messages in, messages out.
//!
//! Like OpenSSH's monitor, it answers a fixed table of requests and checks what each one
//! means, not only its form: a response must name an index we handed out for that very
//! peer, a cookie reply must answer a message we made, a handshake is only made for a
//! configured peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use wg_cookie::MacSigner;
use wg_handshake::{IndexTable, LocalIdentity, Peer, Role as HsRole, Session, Tai64N};
use wg_ipc::messages::{DatadToKeyd, KeydToDatad, PeerUpdate, SecretBytes, SessionKeys};
use wg_wire::constants::REKEY_TIMEOUT;
use wg_wire::{
    CookieReply, MESSAGE_INITIATION, MESSAGE_RESPONSE, PresharedKey, PublicKey, Response,
    message_type,
};

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
    rng: rand::rngs::StdRng,
}

impl std::fmt::Debug for Handshakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshakes")
            .field("identity", &self.identity)
            .field("peers", &self.peers.len())
            .field("indices", &self.indices.len())
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
            rng: rand::make_rng(),
        }
    }

    /// Our public key, if a private key is set.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.identity.as_ref().map(|i| *i.public_key())
    }

    /// The current identity.
    pub fn identity(&self) -> Option<&LocalIdentity> {
        self.identity.as_ref()
    }

    /// Replaces the identity. Every handshake in progress is abandoned (it was made with
    /// the old key) and the peers' static-static secrets are recomputed lazily.
    pub fn set_identity(&mut self, identity: Option<LocalIdentity>) {
        self.identity = identity;
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

    /// Handles one request from the data plane, appending the answers to `out`.
    pub fn on_datad(&mut self, msg: DatadToKeyd, now: Instant, out: &mut Vec<KeydToDatad>) {
        match msg {
            DatadToKeyd::Hello(_) | DatadToKeyd::Stats { .. } => {}
            DatadToKeyd::Handshake { message, source } => match message_type(&message) {
                Ok(MESSAGE_INITIATION) => self.respond(&message, source, now, out),
                Ok(MESSAGE_RESPONSE) => self.complete(&message, source, out),
                _ => tracing::debug!("data plane forwarded a non-handshake message"),
            },
            DatadToKeyd::CookieReply { message } => self.consume_cookie(&message, now),
            DatadToKeyd::WantHandshake { public_key, .. } => self.initiate(public_key, now, out),
            DatadToKeyd::ZeroKeys { public_key } => {
                if let Some(p) = self.peers.get_mut(&public_key) {
                    if let Some(index) = p.noise.pending_local_index() {
                        self.indices.remove(index);
                    }
                    p.noise.clear();
                }
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
            }
        }
    }

    fn initiate(&mut self, public_key: PublicKey, now: Instant, out: &mut Vec<KeydToDatad>) {
        let (Some(identity), Some(p)) = (&self.identity, self.peers.get_mut(&public_key)) else {
            return;
        };
        if p.last_initiation
            .is_some_and(|t| now.saturating_duration_since(t) < REKEY_TIMEOUT)
        {
            tracing::debug!(
                "initiation for {public_key:?} refused: one was made less than REKEY_TIMEOUT ago"
            );
            return;
        }
        if let Some(old) = p.noise.pending_local_index() {
            self.indices.remove(old);
        }
        let index = self.indices.insert(&mut self.rng, public_key);
        let timestamp = Tai64N::from_system_time(SystemTime::now());
        match p
            .noise
            .create_initiation(identity, index, timestamp, &mut p.macs, now, &mut self.rng)
        {
            Ok(message) => {
                p.last_initiation = Some(now);
                out.push(KeydToDatad::SendHandshake {
                    public_key,
                    message: message.to_vec(),
                    endpoint: None,
                });
            }
            Err(e) => {
                self.indices.remove(index);
                tracing::warn!("cannot initiate a handshake with {public_key:?}: {e}");
            }
        }
    }

    fn respond(
        &mut self,
        message: &[u8],
        source: SocketAddr,
        now: Instant,
        out: &mut Vec<KeydToDatad>,
    ) {
        let Some(identity) = &self.identity else {
            return;
        };
        let incoming = match identity.open_initiation(message) {
            Ok(incoming) => incoming,
            Err(e) => {
                tracing::debug!("initiation from {source} rejected: {e}");
                return;
            }
        };
        let public_key = *incoming.remote_static();
        let Some(p) = self.peers.get_mut(&public_key) else {
            tracing::debug!("initiation from {source} by unknown peer {public_key:?}");
            return;
        };
        // Accepting an initiation replaces one we may have sent ourselves (crossing
        // initiations): its index is no longer waited on and must be freed.
        let superseded = p.noise.pending_local_index();
        if let Err(e) = p.noise.consume_initiation(identity, incoming, now) {
            tracing::debug!("initiation from {source} ({public_key:?}) rejected: {e}");
            return;
        }
        if let Some(index) = superseded {
            self.indices.remove(index);
        }
        let index = self.indices.insert(&mut self.rng, public_key);
        match p
            .noise
            .create_response(index, &mut p.macs, now, &mut self.rng)
        {
            Ok((response, session)) => {
                // Keys first: the initiator's first packet may follow the response closely.
                out.push(session_message(public_key, session, Some(source)));
                out.push(KeydToDatad::SendHandshake {
                    public_key,
                    message: response.to_vec(),
                    endpoint: Some(source),
                });
            }
            Err(e) => {
                self.indices.remove(index);
                tracing::debug!("cannot answer {public_key:?}: {e}");
            }
        }
    }

    fn complete(&mut self, message: &[u8], source: SocketAddr, out: &mut Vec<KeydToDatad>) {
        let Some(identity) = &self.identity else {
            return;
        };
        let Ok(response) = Response::parse(message) else {
            return;
        };
        let Some(&public_key) = self.indices.get(response.receiver_index) else {
            tracing::debug!("response from {source} names an unknown index");
            return;
        };
        let Some(p) = self.peers.get_mut(&public_key) else {
            return;
        };
        match p.noise.consume_response(identity, message) {
            Ok(session) => out.push(session_message(public_key, session, Some(source))),
            Err(e) => tracing::debug!("response from {source} ({public_key:?}) rejected: {e}"),
        }
    }

    fn consume_cookie(&mut self, message: &[u8], now: Instant) {
        let Ok(reply) = CookieReply::parse(message) else {
            return;
        };
        let Some(&public_key) = self.indices.get(reply.receiver_index) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&public_key)
            && let Err(e) = p.macs.consume_cookie_reply(&reply, now)
        {
            tracing::debug!("cookie reply for {public_key:?} rejected: {e}");
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
    use std::time::Duration;
    use zeroize::Zeroizing;

    fn identity(seed: u8) -> LocalIdentity {
        LocalIdentity::from_private_bytes(Zeroizing::new([seed; 32]))
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
        hs.on_datad(msg, now, &mut out);
        initiations(&out)
    }

    /// An oracle with an identity and one configured peer.
    fn with_one_peer() -> (Handshakes, PublicKey) {
        let mut hs = Handshakes::new();
        hs.set_identity(Some(identity(1)));
        let peer = *identity(2).public_key();
        hs.upsert_peer(peer, PresharedKey::zero());
        (hs, peer)
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
}
