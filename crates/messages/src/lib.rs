//! The messages the wireguard-rs parts exchange (monitor, keyd, datad, spawner), and their
//! encoding. Pure data: no sockets, no descriptors, no runtime.
//!
//! **Owns:** one enum per direction ([`messages`]), the protocol version both ends check
//! first, and the postcard encoding with a strict size limit and no trailing bytes
//! ([`encode`], [`decode`]). The same bytes travel between processes (`wg-ipc`'s
//! socket channel) and between tasks of one process (the in-process mode), and a
//! simulation or an embedding can use the types without either.
//!
//! **Trusts:** nothing it decodes. A peer process may be compromised: every message is
//! size-checked and fully decoded or rejected. What a message *means* is checked by its
//! receiver (keyd's link, datad's device core, the monitor's request table).
//!
//! **May depend on:** `wg-wire`, `serde`, `postcard`, `ipnet`, `zeroize`, `thiserror`.
#![forbid(unsafe_code)]

pub mod messages;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version of the message set; both ends send it first and refuse a mismatch.
pub const PROTOCOL_VERSION: u32 = 4;
/// Largest encoded message. Bulk data (stats for many peers) is sent in chunks below it.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// Why a message could not be encoded, decoded or accepted as a greeting.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// A message failed to decode: the peer is buggy or compromised.
    #[error("undecodable IPC message ({0}); closing the channel")]
    Decode(postcard::Error),
    /// A message decoded with bytes left over.
    #[error("IPC message has {0} trailing bytes; closing the channel")]
    Trailing(usize),
    /// A message is larger than [`MAX_MESSAGE_LEN`].
    #[error("IPC message of {0} bytes exceeds the limit of {MAX_MESSAGE_LEN}")]
    TooLarge(usize),
    /// Encoding failed (a bug: every message type is encodable).
    #[error("could not encode IPC message: {0}")]
    Encode(postcard::Error),
    /// The peer speaks another protocol version.
    #[error(
        "IPC protocol version mismatch: ours {ours}, theirs {theirs}; install matching binaries"
    )]
    Version {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The greeting came from another part than the one this channel leads to.
    #[error("IPC peer introduced itself as {got:?}, expected {expected:?}")]
    UnexpectedRole {
        /// Who should be speaking.
        expected: messages::Role,
        /// Who said it was.
        got: messages::Role,
    },
}

/// Encodes a message, refusing anything over [`MAX_MESSAGE_LEN`]. The buffer is sized
/// exactly before the message is written (a growing vector would leave copies of session
/// keys in the memory it frees); callers zeroize it after sending.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, MessageError> {
    let len = postcard::serialize_with_flavor(msg, postcard::ser_flavors::Size::default())
        .map_err(MessageError::Encode)?;
    if len > MAX_MESSAGE_LEN {
        return Err(MessageError::TooLarge(len));
    }
    let mut bytes = vec![0u8; len];
    let written = postcard::to_slice(msg, &mut bytes)
        .map_err(MessageError::Encode)?
        .len();
    bytes.truncate(written);
    Ok(bytes)
}

/// Decodes exactly one message: over-long input and trailing bytes are errors
/// (`postcard::from_bytes` alone would ignore a remainder).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MessageError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(MessageError::TooLarge(bytes.len()));
    }
    let (msg, rest) = postcard::take_from_bytes(bytes).map_err(MessageError::Decode)?;
    if !rest.is_empty() {
        return Err(MessageError::Trailing(rest.len()));
    }
    Ok(msg)
}
