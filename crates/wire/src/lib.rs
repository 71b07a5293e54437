//! WireGuard's wire formats: the four message layouts, key newtypes and protocol constants.
//!
//! **Owns:** byte layouts of handshake initiation (type 1), handshake response (type 2),
//! cookie reply (type 3) and transport data (type 4), and their panic-free parsing: a
//! message is classified by its exact type field and length before any field is read, the
//! way the Linux kernel and wireguard-go do it (the 4-byte little-endian type word, so a
//! non-zero reserved byte is an unknown type).
//!
//! **Trusts:** nothing. Every byte handed to [`Message::parse`] may come from an attacker.
//!
//! **May depend on:** `zeroize`, `subtle`, `thiserror`. No crypto, no I/O: the data plane
//! and the key process both link it, so it must stay small enough to read in one sitting.
#![forbid(unsafe_code)]

pub mod constants;
mod keys;
mod message;

pub use keys::{KEY_LEN, PresharedKey, PublicKey, SessionKey, ShortKey};
pub use message::{
    COOKIE_REPLY_LEN, CookieReply, INITIATION_LEN, Initiation, MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_TRANSPORT, Message, RESPONSE_LEN, Response,
    TRANSPORT_HEADER_LEN, TRANSPORT_MIN_LEN, Transport, message_type,
};

/// Length of a Poly1305 authentication tag, appended to every AEAD ciphertext.
pub const TAG_LEN: usize = 16;
/// Length of a MAC1 or MAC2 field (keyed BLAKE2s-128).
pub const MAC_LEN: usize = 16;
/// Length of a cookie (keyed BLAKE2s-128 of the sender's address).
pub const COOKIE_LEN: usize = 16;
/// Length of the XChaCha20-Poly1305 nonce in a cookie reply.
pub const COOKIE_NONCE_LEN: usize = 24;
/// Length of a TAI64N timestamp.
pub const TIMESTAMP_LEN: usize = 12;

/// Why a datagram is not a well-formed WireGuard message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the 4-byte type field.
    #[error("datagram of {0} bytes is too short to carry a WireGuard message type")]
    TooShort(usize),
    /// The 4-byte little-endian type word is not 1, 2, 3 or 4.
    #[error("unknown WireGuard message type word {0:#010x}")]
    UnknownType(u32),
    /// The type is known but the length does not fit it.
    #[error("{kind} must be {expected} bytes, got {got}")]
    WrongLength {
        /// Which message the type field announced.
        kind: &'static str,
        /// The length that message must have (the minimum for transport data).
        expected: usize,
        /// The length received.
        got: usize,
    },
}
