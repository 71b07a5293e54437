//! WireGuard's handshake: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as the whitepaper's section
//! 5.4 builds it, sans-IO.
//!
//! **Owns:** the local static private key ([`LocalIdentity`]), each peer's pre-shared key
//! and handshake state ([`Peer`]), TAI64N replay and flood protection of initiations, random
//! receiver indices ([`IndexTable`]), and the derivation of transport keys ([`Session`]).
//!
//! **Trusts:** nothing in the messages it is given: MAC1 is checked again here (cheaply,
//! before any Curve25519 work) even though the data plane checked it, and every parse is
//! length- and type-exact. It trusts its caller for `now`, the wall clock (a [`Tai64N`]) and
//! a cryptographically secure RNG; it has no clock, socket or thread of its own.
//!
//! **May depend on:** `wg-wire`, `wg-cookie` (MACs and cookies), RustCrypto and dalek
//! primitives, `zeroize`, `subtle`. Only the key process's crates may depend on this crate
//! (enforced in `deny.toml`): the data plane must never link code that holds static keys.
//!
//! Message flow, as in the whitepaper:
//! ```text
//! initiator                                   responder
//! Peer::create_initiation   ── initiation ──▶ LocalIdentity::open_initiation
//!                                             Peer::consume_initiation
//! Peer::consume_response    ◀── response ──── Peer::create_response
//! → Session (initiator)                       → Session (responder)
//! ```
#![forbid(unsafe_code)]

mod crypto;
mod index;
mod tai64n;
mod x25519;

use std::fmt;
use std::time::{Duration, Instant};

use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use wg_cookie::{Mac1Key, MacSigner};
use wg_wire::{Initiation, KEY_LEN, PresharedKey, PublicKey, Response, SessionKey, TAG_LEN};
use zeroize::Zeroizing;

use crypto::{Secret, hash, kdf};
pub use index::IndexTable;
pub use tai64n::Tai64N;
use x25519::StaticKey;
pub use x25519::{BACKEND as X25519_BACKEND, Ephemeral};

/// At most this many initiations per second are processed from one peer (the kernel's and
/// wireguard-go's `INITIATIONS_PER_SECOND`).
pub const INITIATIONS_PER_SECOND: u32 = 50;
/// The minimum spacing of two processed initiations from one peer.
pub const INITIATION_MIN_INTERVAL: Duration =
    Duration::from_nanos(1_000_000_000 / INITIATIONS_PER_SECOND as u64);

/// Why a handshake step failed. No variant carries secret material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes are not the expected message.
    #[error("malformed handshake message: {0}")]
    Malformed(#[from] wg_wire::WireError),
    /// MAC1 does not match our public key: the sender does not know who we are.
    #[error("handshake message has an invalid MAC1 (sender does not know our public key)")]
    InvalidMac1,
    /// An AEAD field did not open: wrong static key, wrong PSK, or tampering.
    #[error("handshake message failed authentication (wrong keys or pre-shared key, or tampered)")]
    DecryptionFailed,
    /// A Diffie-Hellman result was all zeros: a small-order public key.
    #[error("peer public key is invalid (small-order point); check the configured key")]
    InvalidPublicKey,
    /// The initiation was made by a different peer than the one it was given to.
    #[error("initiation belongs to a different peer")]
    WrongPeer,
    /// The initiation's timestamp is not newer than the newest seen from this peer.
    #[error("initiation replayed (timestamp not newer than the last one from this peer)")]
    Replay,
    /// The peer sent initiations faster than [`INITIATIONS_PER_SECOND`].
    #[error("initiation flood: more than {INITIATIONS_PER_SECOND} per second from this peer")]
    Flood,
    /// A response or response creation arrived with no matching handshake in progress.
    #[error("no handshake in progress that this message could answer")]
    UnexpectedMessage,
    /// MAC stamping failed (not reachable with well-formed messages).
    #[error("could not stamp MACs: {0}")]
    Mac(#[from] wg_cookie::CookieError),
}

/// Which side of the handshake a session was made on. The router needs it: a responder's
/// session may only send once the initiator has sent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We sent the initiation.
    Initiator,
    /// We answered an initiation.
    Responder,
}

/// Transport keys and indices from a completed handshake.
#[derive(Debug)]
pub struct Session {
    /// Our side of the handshake.
    pub role: Role,
    /// The index the peer puts in packets it sends us.
    pub local_index: u32,
    /// The index we put in packets we send the peer.
    pub remote_index: u32,
    /// Key for packets we send.
    pub send: SessionKey,
    /// Key for packets we receive.
    pub recv: SessionKey,
}

/// The local static key pair. The private key never leaves this value.
pub struct LocalIdentity {
    secret: StaticKey,
    public: PublicKey,
    mac1_key: Mac1Key,
    /// `HASH(HASH(ck0 || IDENTIFIER) || S_pub)`: the responder's starting hash.
    responder_hash: [u8; KEY_LEN],
}

impl fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIdentity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl LocalIdentity {
    /// The identity for a 32-byte Curve25519 private key (clamped on use, as `wg` does).
    pub fn from_private_bytes(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let secret = StaticKey::from_bytes(bytes);
        let public = PublicKey(secret.public());
        let (_, h0) = crypto::initial_chain_and_hash();
        Self {
            mac1_key: Mac1Key::new(&public),
            responder_hash: hash(&[&h0, public.as_bytes()]),
            secret,
            public,
        }
    }

    /// A fresh random identity.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut bytes[..]);
        Self::from_private_bytes(bytes)
    }

    /// Our public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The private key bytes, for `get=1` (which `wg showconf` needs). Handle with care.
    pub fn private_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.secret.bytes()
    }

    /// First half of responding: checks MAC1 and decrypts the initiator's static key, which
    /// names the peer the caller must look up and hand to [`Peer::consume_initiation`].
    pub fn open_initiation(&self, msg: &[u8]) -> Result<IncomingInitiation, HandshakeError> {
        let init = Initiation::parse(msg)?;
        if !wg_cookie::verify_mac1(&self.mac1_key, msg) {
            return Err(HandshakeError::InvalidMac1);
        }
        let (c0, _) = crypto::initial_chain_and_hash();
        let [chaining] = kdf::<1>(&c0, &init.ephemeral);
        let h = hash(&[&self.responder_hash, &init.ephemeral]);
        let es = self.secret.dh(&init.ephemeral)?;
        let [chaining, key] = kdf::<2>(&chaining, &es[..]);
        let mut static_buf = init.encrypted_static;
        crypto::open(&key, &mut static_buf, &h)?;
        let h = hash(&[&h, &init.encrypted_static]);
        let mut remote = [0u8; KEY_LEN];
        remote.copy_from_slice(static_buf.get(..KEY_LEN).unwrap_or(&[0; KEY_LEN]));
        Ok(IncomingInitiation {
            local_public: self.public,
            remote_static: PublicKey(remote),
            sender_index: init.sender_index,
            remote_ephemeral: init.ephemeral,
            encrypted_timestamp: init.encrypted_timestamp,
            chaining,
            hash: h,
        })
    }
}

/// An initiation whose MAC1 and static-key field checked out; its timestamp is still
/// unverified. Only [`LocalIdentity::open_initiation`] makes one.
pub struct IncomingInitiation {
    local_public: PublicKey,
    remote_static: PublicKey,
    sender_index: u32,
    remote_ephemeral: [u8; KEY_LEN],
    encrypted_timestamp: [u8; wg_wire::TIMESTAMP_LEN + TAG_LEN],
    chaining: Secret,
    hash: [u8; KEY_LEN],
}

impl fmt::Debug for IncomingInitiation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingInitiation")
            .field("remote_static", &self.remote_static)
            .field("sender_index", &self.sender_index)
            .finish_non_exhaustive()
    }
}

impl IncomingInitiation {
    /// The initiator's static public key: which peer to hand this to.
    pub fn remote_static(&self) -> &PublicKey {
        &self.remote_static
    }

    /// The initiator's receiver index.
    pub fn sender_index(&self) -> u32 {
        self.sender_index
    }
}

/// Where a peer's handshake stands.
enum State {
    /// No handshake in progress (or its secrets were erased).
    Idle,
    /// We sent an initiation and wait for the response.
    InitiationSent {
        local_index: u32,
        chaining: Secret,
        hash: [u8; KEY_LEN],
        ephemeral: Ephemeral,
    },
    /// We accepted an initiation and may answer it.
    InitiationConsumed {
        remote_index: u32,
        remote_ephemeral: [u8; KEY_LEN],
        chaining: Secret,
        hash: [u8; KEY_LEN],
    },
}

/// One remote peer's handshake state, PSK and replay protection.
pub struct Peer {
    remote: PublicKey,
    psk: PresharedKey,
    /// `DH(S_priv_local, S_pub_remote)`, and the local key it was computed with.
    static_static: Result<Secret, HandshakeError>,
    static_static_for: PublicKey,
    latest_timestamp: Option<Tai64N>,
    last_initiation_consumed: Option<Instant>,
    state: State,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Idle => "idle",
            State::InitiationSent { .. } => "initiation sent",
            State::InitiationConsumed { .. } => "initiation consumed",
        };
        f.debug_struct("Peer")
            .field("remote", &self.remote)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// A peer with static public key `remote` and pre-shared key `psk` (use
    /// [`PresharedKey::zero`] when none is configured).
    pub fn new(local: &LocalIdentity, remote: PublicKey, psk: PresharedKey) -> Self {
        Self {
            static_static: local.secret.dh(remote.as_bytes()),
            static_static_for: local.public,
            remote,
            psk,
            latest_timestamp: None,
            last_initiation_consumed: None,
            state: State::Idle,
        }
    }

    /// The peer's static public key.
    pub fn remote_public(&self) -> &PublicKey {
        &self.remote
    }

    /// Replaces the pre-shared key; takes effect with the next handshake message.
    pub fn set_preshared_key(&mut self, psk: PresharedKey) {
        self.psk = psk;
    }

    /// The pre-shared key, for `get=1`.
    pub fn preshared_key(&self) -> &PresharedKey {
        &self.psk
    }

    /// The local index of an initiation we are waiting to have answered.
    pub fn pending_local_index(&self) -> Option<u32> {
        match self.state {
            State::InitiationSent { local_index, .. } => Some(local_index),
            _ => None,
        }
    }

    /// Erases every handshake secret (ephemeral key, chaining key) of this peer, as the
    /// timers require after 3 x Reject-After-Time. Replay protection is kept.
    pub fn clear(&mut self) {
        self.state = State::Idle;
    }

    /// The precomputed static-static DH, recomputed if the local key changed since.
    fn static_static(&mut self, local: &LocalIdentity) -> Result<Secret, HandshakeError> {
        if self.static_static_for != local.public {
            self.static_static = local.secret.dh(self.remote.as_bytes());
            self.static_static_for = local.public;
            self.state = State::Idle;
        }
        self.static_static.clone()
    }

    /// Makes a handshake initiation with a fresh ephemeral key, signed by `macs` (the
    /// signer for this peer). Replaces any initiation in progress.
    pub fn create_initiation<R: CryptoRng + ?Sized>(
        &mut self,
        local: &LocalIdentity,
        local_index: u32,
        timestamp: Tai64N,
        macs: &mut MacSigner,
        now: Instant,
        rng: &mut R,
    ) -> Result<[u8; wg_wire::INITIATION_LEN], HandshakeError> {
        let ephemeral = Ephemeral::generate(rng);
        self.create_initiation_with(local, local_index, timestamp, macs, now, ephemeral)
    }

    /// [`Peer::create_initiation`] with an ephemeral key the caller generated (earlier,
    /// when it was idle). It must be fresh and never used before: the caller hands it over
    /// by value, and it is wiped when the handshake ends or is replaced.
    pub fn create_initiation_with(
        &mut self,
        local: &LocalIdentity,
        local_index: u32,
        timestamp: Tai64N,
        macs: &mut MacSigner,
        now: Instant,
        ephemeral: Ephemeral,
    ) -> Result<[u8; wg_wire::INITIATION_LEN], HandshakeError> {
        self.state = State::Idle;
        let ss = self.static_static(local)?;
        let (c0, h0) = crypto::initial_chain_and_hash();
        let h = hash(&[&h0, self.remote.as_bytes()]);

        let e_pub = *ephemeral.public();
        let [chaining] = kdf::<1>(&c0, &e_pub);
        let h = hash(&[&h, &e_pub]);

        let es = ephemeral.dh(self.remote.as_bytes())?;
        let [chaining, key] = kdf::<2>(&chaining, &es[..]);
        let mut encrypted_static = [0u8; KEY_LEN + TAG_LEN];
        encrypted_static[..KEY_LEN].copy_from_slice(local.public.as_bytes());
        crypto::seal(&key, &mut encrypted_static, &h);
        let h = hash(&[&h, &encrypted_static]);

        let [chaining, key] = kdf::<2>(&chaining, &ss[..]);
        let mut encrypted_timestamp = [0u8; wg_wire::TIMESTAMP_LEN + TAG_LEN];
        encrypted_timestamp[..wg_wire::TIMESTAMP_LEN].copy_from_slice(&timestamp.to_bytes());
        crypto::seal(&key, &mut encrypted_timestamp, &h);
        let h = hash(&[&h, &encrypted_timestamp]);

        let mut msg = Initiation {
            sender_index: local_index,
            ephemeral: e_pub,
            encrypted_static,
            encrypted_timestamp,
            mac1: [0; 16],
            mac2: [0; 16],
        }
        .to_bytes();
        macs.sign(&mut msg, now)?;
        self.state = State::InitiationSent {
            local_index,
            chaining,
            hash: h,
            ephemeral,
        };
        Ok(msg)
    }

    /// Second half of responding: verifies the timestamp against replay and flooding and
    /// remembers the initiation so [`Peer::create_response`] can answer it.
    pub fn consume_initiation(
        &mut self,
        local: &LocalIdentity,
        init: IncomingInitiation,
        now: Instant,
    ) -> Result<(), HandshakeError> {
        if init.local_public != local.public || init.remote_static != self.remote {
            return Err(HandshakeError::WrongPeer);
        }
        let ss = self.static_static(local)?;
        let [chaining, key] = kdf::<2>(&init.chaining, &ss[..]);
        let mut ts_buf = init.encrypted_timestamp;
        crypto::open(&key, &mut ts_buf, &init.hash)?;
        let h = hash(&[&init.hash, &init.encrypted_timestamp]);
        let mut ts = [0u8; wg_wire::TIMESTAMP_LEN];
        ts.copy_from_slice(ts_buf.get(..wg_wire::TIMESTAMP_LEN).unwrap_or(&[0; 12]));
        let timestamp = Tai64N::from_bytes(ts);

        if self
            .latest_timestamp
            .is_some_and(|latest| timestamp <= latest)
        {
            return Err(HandshakeError::Replay);
        }
        if self
            .last_initiation_consumed
            .is_some_and(|last| now.saturating_duration_since(last) <= INITIATION_MIN_INTERVAL)
        {
            return Err(HandshakeError::Flood);
        }
        self.latest_timestamp = Some(timestamp);
        self.last_initiation_consumed = Some(now);
        self.state = State::InitiationConsumed {
            remote_index: init.sender_index,
            remote_ephemeral: init.remote_ephemeral,
            chaining,
            hash: h,
        };
        Ok(())
    }

    /// Answers the consumed initiation and derives the responder's session.
    pub fn create_response<R: CryptoRng + ?Sized>(
        &mut self,
        local_index: u32,
        macs: &mut MacSigner,
        now: Instant,
        rng: &mut R,
    ) -> Result<([u8; wg_wire::RESPONSE_LEN], Session), HandshakeError> {
        let ephemeral = Ephemeral::generate(rng);
        self.create_response_with(local_index, macs, now, ephemeral)
    }

    /// [`Peer::create_response`] with an ephemeral key the caller generated earlier (fresh,
    /// never used; dropped, and so wiped, before this returns).
    pub fn create_response_with(
        &mut self,
        local_index: u32,
        macs: &mut MacSigner,
        now: Instant,
        ephemeral: Ephemeral,
    ) -> Result<([u8; wg_wire::RESPONSE_LEN], Session), HandshakeError> {
        let State::InitiationConsumed {
            remote_index,
            remote_ephemeral,
            chaining,
            hash: h,
        } = std::mem::replace(&mut self.state, State::Idle)
        else {
            return Err(HandshakeError::UnexpectedMessage);
        };
        let e_pub = *ephemeral.public();
        let [chaining] = kdf::<1>(&chaining, &e_pub);
        let h = hash(&[&h, &e_pub]);
        let ee = ephemeral.dh(&remote_ephemeral)?;
        let [chaining] = kdf::<1>(&chaining, &ee[..]);
        let se = ephemeral.dh(self.remote.as_bytes())?;
        let [chaining] = kdf::<1>(&chaining, &se[..]);
        let [chaining, tau, key] = kdf::<3>(&chaining, self.psk.expose_secret());
        let h = hash(&[&h, &tau[..]]);
        let mut encrypted_nothing = [0u8; TAG_LEN];
        crypto::seal(&key, &mut encrypted_nothing, &h);

        let mut msg = Response {
            sender_index: local_index,
            receiver_index: remote_index,
            ephemeral: e_pub,
            encrypted_nothing,
            mac1: [0; 16],
            mac2: [0; 16],
        }
        .to_bytes();
        macs.sign(&mut msg, now)?;
        let [recv, send] = kdf::<2>(&chaining, &[]);
        Ok((
            msg,
            Session {
                role: Role::Responder,
                local_index,
                remote_index,
                send: SessionKey::from_bytes(*send),
                recv: SessionKey::from_bytes(*recv),
            },
        ))
    }

    /// Consumes the response to our initiation and derives the initiator's session. The
    /// caller found this peer by the response's receiver index; it is checked again here.
    pub fn consume_response(
        &mut self,
        local: &LocalIdentity,
        msg: &[u8],
    ) -> Result<Session, HandshakeError> {
        let resp = Response::parse(msg)?;
        if !wg_cookie::verify_mac1(&local.mac1_key, msg) {
            return Err(HandshakeError::InvalidMac1);
        }
        let State::InitiationSent {
            local_index,
            chaining,
            hash: h,
            ephemeral,
        } = &self.state
        else {
            return Err(HandshakeError::UnexpectedMessage);
        };
        if !bool::from(local_index.ct_eq(&resp.receiver_index)) {
            return Err(HandshakeError::UnexpectedMessage);
        }
        let [c] = kdf::<1>(chaining, &resp.ephemeral);
        let h = hash(&[h, &resp.ephemeral]);
        let ee = ephemeral.dh(&resp.ephemeral)?;
        let [c] = kdf::<1>(&c, &ee[..]);
        let se = local.secret.dh(&resp.ephemeral)?;
        let [c] = kdf::<1>(&c, &se[..]);
        let [c, tau, key] = kdf::<3>(&c, self.psk.expose_secret());
        let h = hash(&[&h, &tau[..]]);
        let mut empty = resp.encrypted_nothing;
        crypto::open(&key, &mut empty, &h)?;
        let [send, recv] = kdf::<2>(&c, &[]);
        let session = Session {
            role: Role::Initiator,
            local_index: *local_index,
            remote_index: resp.sender_index,
            send: SessionKey::from_bytes(*send),
            recv: SessionKey::from_bytes(*recv),
        };
        self.state = State::Idle;
        Ok(session)
    }
}
