//! MAC1, MAC2 and cookie replies: WireGuard's defence against handshake floods
//! (whitepaper section 5.4.4 and 5.4.7).
//!
//! **Owns:** computing and checking the two MACs on handshake messages, the responder's
//! rotating cookie secret and the cookie replies made from it, and the initiator's handling of
//! a received cookie (so its next message carries a valid MAC2).
//!
//! **Trusts:** nothing it is given; every message may be forged. It needs only *public*
//! keys, which is why it is its own crate: the data-plane process does every MAC and cookie
//! check here without ever holding a static private key, and without linking the Noise code.
//!
//! **May depend on:** `wg-wire`, `blake2`, `chacha20poly1305`, `rand_core`, `zeroize`,
//! `subtle`. No I/O and no clock: `now` and an RNG are arguments.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::{AeadInOut, array::typenum::U16};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use wg_wire::{
    COOKIE_LEN, CookieReply, INITIATION_LEN, KEY_LEN, MAC_LEN, MESSAGE_INITIATION,
    MESSAGE_RESPONSE, PublicKey, RESPONSE_LEN, TAG_LEN, message_type,
};
use zeroize::{Zeroize, Zeroizing};

/// Label mixed into the MAC1 key.
pub const LABEL_MAC1: &[u8; 8] = b"mac1----";
/// Label mixed into the cookie encryption key.
pub const LABEL_COOKIE: &[u8; 8] = b"cookie--";
/// How long a responder's cookie secret, and an initiator's received cookie, stay valid
/// (the whitepaper's `Cookie-Refresh-Time` of 120 s).
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);

/// Why a MAC or cookie operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// The buffer is not a handshake initiation or response.
    #[error("MACs only protect handshake initiations (148 bytes) and responses (92 bytes)")]
    NotAHandshakeMessage,
    /// No message was sent to this peer, so a cookie reply cannot be for us.
    #[error("cookie reply received, but no handshake message was sent to this peer")]
    UnexpectedCookieReply,
    /// The cookie reply did not decrypt: forged, or for another message.
    #[error("cookie reply failed authentication (forged, or answers another message)")]
    InvalidCookieReply,
}

/// What a responder should do with a handshake message after checking its MACs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// MAC1 is wrong: drop silently (the sender does not know our public key).
    Drop,
    /// MAC1 is right but we are under load and MAC2 is not: answer with a cookie reply.
    SendCookie,
    /// Both checks passed: the message may go on to the Noise handshake.
    Accept,
}

/// `HASH(label || public key)`: the key for MAC1 or for cookie encryption.
fn labelled_key(label: &[u8; 8], public: &PublicKey) -> [u8; KEY_LEN] {
    let mut h = Blake2s256::new();
    h.update(label);
    h.update(public.as_bytes());
    h.finalize().into()
}

/// Keyed BLAKE2s with a 16-byte output, the whitepaper's `MAC(key, input)`.
fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    // Keys here are 16 or 32 bytes; BLAKE2s accepts 1..=32, so this cannot fail.
    let Ok(mut m) = <Blake2sMac<U16> as KeyInit>::new_from_slice(key) else {
        return [0; MAC_LEN];
    };
    for part in parts {
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

/// The byte offsets of MAC1 and MAC2 in a handshake message, after checking that `msg` is
/// a complete initiation or response.
fn mac_offsets(msg: &[u8]) -> Result<(usize, usize), CookieError> {
    let len = match message_type(msg) {
        Ok(MESSAGE_INITIATION) => INITIATION_LEN,
        Ok(MESSAGE_RESPONSE) => RESPONSE_LEN,
        _ => return Err(CookieError::NotAHandshakeMessage),
    };
    if msg.len() != len {
        return Err(CookieError::NotAHandshakeMessage);
    }
    Ok((len - 2 * MAC_LEN, len - MAC_LEN))
}

fn field(msg: &[u8], at: usize) -> [u8; MAC_LEN] {
    msg.get(at..at + MAC_LEN)
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; MAC_LEN])
}

/// Checks only MAC1 of a handshake message addressed to `mac1_key`'s owner. Used by the
/// key process as a second, independent check before any Curve25519 work.
pub fn verify_mac1(mac1_key: &Mac1Key, msg: &[u8]) -> bool {
    let Ok((mac1_at, _)) = mac_offsets(msg) else {
        return false;
    };
    let body = msg.get(..mac1_at).unwrap_or_default();
    let expected = mac(&mac1_key.0, &[body]);
    expected.ct_eq(&field(msg, mac1_at)).into()
}

/// `HASH(LABEL_MAC1 || public key)`; public, derived from a public key.
#[derive(Clone, PartialEq, Eq)]
pub struct Mac1Key([u8; KEY_LEN]);

impl Mac1Key {
    /// The MAC1 key for messages sent to the owner of `public`.
    pub fn new(public: &PublicKey) -> Self {
        Self(labelled_key(LABEL_MAC1, public))
    }
}

impl core::fmt::Debug for Mac1Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Mac1Key")
    }
}

/// A cookie the initiator received, with the time it arrived.
struct ReceivedCookie {
    cookie: Zeroizing<[u8; COOKIE_LEN]>,
    received: Instant,
}

/// The sender's side, one per remote peer: stamps MAC1 and MAC2 on outgoing handshake
/// messages and consumes cookie replies from that peer.
pub struct MacSigner {
    mac1_key: Mac1Key,
    cookie_key: Zeroizing<[u8; KEY_LEN]>,
    cookie: Option<ReceivedCookie>,
    /// MAC1 of the last message sent: the associated data of a genuine cookie reply.
    last_mac1: Option<[u8; MAC_LEN]>,
}

impl core::fmt::Debug for MacSigner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MacSigner")
            .field("has_cookie", &self.cookie.is_some())
            .finish_non_exhaustive()
    }
}

impl MacSigner {
    /// A signer for messages sent to the peer whose static public key is `remote`.
    pub fn new(remote: &PublicKey) -> Self {
        Self {
            mac1_key: Mac1Key::new(remote),
            cookie_key: Zeroizing::new(labelled_key(LABEL_COOKIE, remote)),
            cookie: None,
            last_mac1: None,
        }
    }

    /// Writes MAC1, and MAC2 if a cookie younger than [`COOKIE_REFRESH_TIME`] is held (else
    /// zeros), into a complete initiation or response.
    pub fn sign(&mut self, msg: &mut [u8], now: Instant) -> Result<(), CookieError> {
        let (mac1_at, mac2_at) = mac_offsets(msg)?;
        let mac1 = mac(&self.mac1_key.0, &[msg.get(..mac1_at).unwrap_or_default()]);
        if let Some(dst) = msg.get_mut(mac1_at..mac2_at) {
            dst.copy_from_slice(&mac1);
        }
        self.last_mac1 = Some(mac1);

        let fresh = self
            .cookie
            .as_ref()
            .filter(|c| now.saturating_duration_since(c.received) < COOKIE_REFRESH_TIME);
        let mac2 = match fresh {
            Some(c) => mac(&c.cookie[..], &[msg.get(..mac2_at).unwrap_or_default()]),
            None => [0; MAC_LEN],
        };
        if let Some(dst) = msg.get_mut(mac2_at..) {
            dst.copy_from_slice(&mac2);
        }
        Ok(())
    }

    /// Consumes a cookie reply from this peer. Only a reply to the last message we signed
    /// decrypts; the cookie is then used for MAC2 for [`COOKIE_REFRESH_TIME`].
    pub fn consume_cookie_reply(
        &mut self,
        reply: &CookieReply,
        now: Instant,
    ) -> Result<(), CookieError> {
        let last_mac1 = self.last_mac1.ok_or(CookieError::UnexpectedCookieReply)?;
        let cipher = XChaCha20Poly1305::new(<&Key>::from(&*self.cookie_key));
        let (ct, tag) = reply.encrypted_cookie.split_at(COOKIE_LEN);
        let mut cookie = Zeroizing::new([0u8; COOKIE_LEN]);
        cookie.copy_from_slice(ct);
        let tag = Tag::try_from(tag).map_err(|_| CookieError::InvalidCookieReply)?;
        cipher
            .decrypt_inout_detached(
                <&XNonce>::from(&reply.nonce),
                &last_mac1,
                (&mut cookie[..]).into(),
                &tag,
            )
            .map_err(|_| CookieError::InvalidCookieReply)?;
        self.cookie = Some(ReceivedCookie {
            cookie,
            received: now,
        });
        Ok(())
    }
}

/// The receiver's side, one per local interface: checks MAC1 and MAC2 of incoming
/// handshake messages and makes cookie replies bound to the sender's IP address and port.
pub struct CookieChecker {
    mac1_key: Mac1Key,
    cookie_key: Zeroizing<[u8; KEY_LEN]>,
    secret: Zeroizing<[u8; KEY_LEN]>,
    /// When `secret` was drawn; `None` until the first cookie reply is made.
    secret_born: Option<Instant>,
}

impl core::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieChecker").finish_non_exhaustive()
    }
}

/// The source address as the cookie binds it: IP bytes (4 or 16) then the port, big-endian.
fn address_bytes(src: SocketAddr) -> ([u8; 18], usize) {
    let mut out = [0u8; 18];
    let ip_len = match src.ip() {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            out[..16].copy_from_slice(&v6.octets());
            16
        }
    };
    out[ip_len..ip_len + 2].copy_from_slice(&src.port().to_be_bytes());
    (out, ip_len + 2)
}

impl CookieChecker {
    /// A checker for messages addressed to the local interface whose public key is `local`.
    pub fn new(local: &PublicKey) -> Self {
        Self {
            mac1_key: Mac1Key::new(local),
            cookie_key: Zeroizing::new(labelled_key(LABEL_COOKIE, local)),
            secret: Zeroizing::new([0; KEY_LEN]),
            secret_born: None,
        }
    }

    /// The cookie for `src` under the current secret, if that secret is younger than
    /// [`COOKIE_REFRESH_TIME`].
    fn current_cookie(&self, src: SocketAddr, now: Instant) -> Option<Zeroizing<[u8; COOKIE_LEN]>> {
        let born = self.secret_born?;
        if now.saturating_duration_since(born) >= COOKIE_REFRESH_TIME {
            return None;
        }
        let (addr, len) = address_bytes(src);
        Some(Zeroizing::new(mac(
            &self.secret[..],
            &[addr.get(..len).unwrap_or_default()],
        )))
    }

    /// Checks the MACs of a handshake message received from `src`. Outside of load only MAC1
    /// matters; under load MAC2 must carry a cookie for `src` made in the last 120 s.
    pub fn check(&self, msg: &[u8], src: SocketAddr, now: Instant, under_load: bool) -> Verdict {
        if !verify_mac1(&self.mac1_key, msg) {
            return Verdict::Drop;
        }
        if !under_load {
            return Verdict::Accept;
        }
        let Ok((_, mac2_at)) = mac_offsets(msg) else {
            return Verdict::Drop;
        };
        let Some(cookie) = self.current_cookie(src, now) else {
            return Verdict::SendCookie;
        };
        let expected = mac(&cookie[..], &[msg.get(..mac2_at).unwrap_or_default()]);
        if bool::from(expected.ct_eq(&field(msg, mac2_at))) {
            Verdict::Accept
        } else {
            Verdict::SendCookie
        }
    }

    /// Makes a cookie reply to `msg` (a handshake message with a valid MAC1) from `src`.
    /// Draws a new secret first if the current one is older than [`COOKIE_REFRESH_TIME`].
    pub fn create_reply<R: CryptoRng + ?Sized>(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        now: Instant,
        rng: &mut R,
    ) -> Result<CookieReply, CookieError> {
        let (mac1_at, _) = mac_offsets(msg)?;
        let receiver_index = msg
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or(CookieError::NotAHandshakeMessage)?;
        let cookie = match self.current_cookie(src, now) {
            Some(cookie) => cookie,
            None => {
                self.secret.zeroize();
                rng.fill_bytes(&mut self.secret[..]);
                self.secret_born = Some(now);
                self.current_cookie(src, now)
                    .ok_or(CookieError::NotAHandshakeMessage)?
            }
        };
        let mut nonce = [0u8; wg_wire::COOKIE_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut encrypted_cookie = [0u8; COOKIE_LEN + TAG_LEN];
        let (ct, tag_dst) = encrypted_cookie.split_at_mut(COOKIE_LEN);
        ct.copy_from_slice(&cookie[..]);
        let cipher = XChaCha20Poly1305::new(<&Key>::from(&*self.cookie_key));
        let tag = cipher
            .encrypt_inout_detached(<&XNonce>::from(&nonce), &field(msg, mac1_at), ct.into())
            .map_err(|_| CookieError::NotAHandshakeMessage)?;
        tag_dst.copy_from_slice(&tag);
        Ok(CookieReply {
            receiver_index,
            nonce,
            encrypted_cookie,
        })
    }

    /// Replaces the cookie secret with `secret` made at `now`. For known-answer tests.
    #[doc(hidden)]
    pub fn set_secret_for_test(&mut self, secret: [u8; KEY_LEN], now: Instant) {
        *self.secret = secret;
        self.secret_born = Some(now);
    }
}
