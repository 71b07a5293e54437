//! The four message layouts. Each fixed-size message has a typed representation with
//! `parse` (exact length, exact type word) and `to_bytes`; transport data borrows its payload.
//!
//! Layouts (all integers little-endian; the type is a 4-byte word: 1 type byte, 3 zero bytes):
//! ```text
//! initiation  148: type | sender 4 | ephemeral 32 | static 32+16 | timestamp 12+16 | mac1 16 | mac2 16
//! response     92: type | sender 4 | receiver 4 | ephemeral 32 | empty 0+16 | mac1 16 | mac2 16
//! cookie reply 64: type | receiver 4 | nonce 24 | cookie 16+16
//! transport  >=32: type | receiver 4 | counter 8 | ciphertext (padded plaintext + 16)
//! ```

use crate::{COOKIE_NONCE_LEN, KEY_LEN, MAC_LEN, TAG_LEN, TIMESTAMP_LEN, WireError};

/// Type word of a handshake initiation.
pub const MESSAGE_INITIATION: u32 = 1;
/// Type word of a handshake response.
pub const MESSAGE_RESPONSE: u32 = 2;
/// Type word of a cookie reply.
pub const MESSAGE_COOKIE_REPLY: u32 = 3;
/// Type word of a transport data message.
pub const MESSAGE_TRANSPORT: u32 = 4;

/// Length of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Length of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Length of the transport header: type, receiver index, counter.
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Shortest transport message: a header and the tag of an empty (keepalive) payload.
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + TAG_LEN;

/// Reads fixed-size fields front to back from a slice whose length was already checked.
/// Running out of bytes yields zeros instead of panicking; callers check lengths first, so
/// that path is unreachable, and the property tests prove parse never panics.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        match self.0.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.0 = rest;
                *head
            }
            None => [0; N],
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Writes fields front to back into a fixed-size array.
struct Writer<const N: usize> {
    buf: [u8; N],
    at: usize,
}

impl<const N: usize> Writer<N> {
    fn new(message_type: u32) -> Self {
        let mut w = Self { buf: [0; N], at: 0 };
        w.put(&message_type.to_le_bytes());
        w
    }

    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.at += bytes.len();
    }

    fn finish(self) -> [u8; N] {
        debug_assert_eq!(self.at, N, "layout does not fill the message");
        self.buf
    }
}

/// Reads the 4-byte type word of a datagram.
pub fn message_type(datagram: &[u8]) -> Result<u32, WireError> {
    match datagram.first_chunk::<4>() {
        Some(word) => Ok(u32::from_le_bytes(*word)),
        None => Err(WireError::TooShort(datagram.len())),
    }
}

fn expect_len(kind: &'static str, expected: usize, got: usize) -> Result<(), WireError> {
    if expected == got {
        Ok(())
    } else {
        Err(WireError::WrongLength {
            kind,
            expected,
            got,
        })
    }
}

fn expect_type(datagram: &[u8], wanted: u32) -> Result<(), WireError> {
    match message_type(datagram)? {
        t if t == wanted => Ok(()),
        other => Err(WireError::UnknownType(other)),
    }
}

/// Handshake initiation (message type 1), 148 bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Initiation {
    /// The initiator's receiver index for this session.
    pub sender_index: u32,
    /// The initiator's ephemeral public key.
    pub ephemeral: [u8; KEY_LEN],
    /// The initiator's static public key, AEAD-encrypted.
    pub encrypted_static: [u8; KEY_LEN + TAG_LEN],
    /// The TAI64N timestamp, AEAD-encrypted.
    pub encrypted_timestamp: [u8; TIMESTAMP_LEN + TAG_LEN],
    /// MAC over everything before it, keyed by the responder's public key.
    pub mac1: [u8; MAC_LEN],
    /// MAC over everything before it, keyed by a cookie, or zeros.
    pub mac2: [u8; MAC_LEN],
}

impl Initiation {
    /// Parses exactly one initiation.
    pub fn parse(datagram: &[u8]) -> Result<Self, WireError> {
        expect_type(datagram, MESSAGE_INITIATION)?;
        expect_len("handshake initiation", INITIATION_LEN, datagram.len())?;
        let mut r = Reader(datagram);
        let _type = r.u32();
        Ok(Self {
            sender_index: r.u32(),
            ephemeral: r.array(),
            encrypted_static: r.array(),
            encrypted_timestamp: r.array(),
            mac1: r.array(),
            mac2: r.array(),
        })
    }

    /// Serializes the message.
    pub fn to_bytes(&self) -> [u8; INITIATION_LEN] {
        let mut w = Writer::new(MESSAGE_INITIATION);
        w.put(&self.sender_index.to_le_bytes());
        w.put(&self.ephemeral);
        w.put(&self.encrypted_static);
        w.put(&self.encrypted_timestamp);
        w.put(&self.mac1);
        w.put(&self.mac2);
        w.finish()
    }
}

/// Handshake response (message type 2), 92 bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Response {
    /// The responder's receiver index for this session.
    pub sender_index: u32,
    /// The initiator's index, copied from the initiation.
    pub receiver_index: u32,
    /// The responder's ephemeral public key.
    pub ephemeral: [u8; KEY_LEN],
    /// The AEAD tag over the empty plaintext.
    pub encrypted_nothing: [u8; TAG_LEN],
    /// MAC over everything before it, keyed by the initiator's public key.
    pub mac1: [u8; MAC_LEN],
    /// MAC over everything before it, keyed by a cookie, or zeros.
    pub mac2: [u8; MAC_LEN],
}

impl Response {
    /// Parses exactly one response.
    pub fn parse(datagram: &[u8]) -> Result<Self, WireError> {
        expect_type(datagram, MESSAGE_RESPONSE)?;
        expect_len("handshake response", RESPONSE_LEN, datagram.len())?;
        let mut r = Reader(datagram);
        let _type = r.u32();
        Ok(Self {
            sender_index: r.u32(),
            receiver_index: r.u32(),
            ephemeral: r.array(),
            encrypted_nothing: r.array(),
            mac1: r.array(),
            mac2: r.array(),
        })
    }

    /// Serializes the message.
    pub fn to_bytes(&self) -> [u8; RESPONSE_LEN] {
        let mut w = Writer::new(MESSAGE_RESPONSE);
        w.put(&self.sender_index.to_le_bytes());
        w.put(&self.receiver_index.to_le_bytes());
        w.put(&self.ephemeral);
        w.put(&self.encrypted_nothing);
        w.put(&self.mac1);
        w.put(&self.mac2);
        w.finish()
    }
}

/// Cookie reply (message type 3), 64 bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CookieReply {
    /// The sender index of the handshake message this answers.
    pub receiver_index: u32,
    /// Random XChaCha20-Poly1305 nonce.
    pub nonce: [u8; COOKIE_NONCE_LEN],
    /// The cookie, encrypted with the MAC1 of the answered message as associated data.
    pub encrypted_cookie: [u8; crate::COOKIE_LEN + TAG_LEN],
}

impl CookieReply {
    /// Parses exactly one cookie reply.
    pub fn parse(datagram: &[u8]) -> Result<Self, WireError> {
        expect_type(datagram, MESSAGE_COOKIE_REPLY)?;
        expect_len("cookie reply", COOKIE_REPLY_LEN, datagram.len())?;
        let mut r = Reader(datagram);
        let _type = r.u32();
        Ok(Self {
            receiver_index: r.u32(),
            nonce: r.array(),
            encrypted_cookie: r.array(),
        })
    }

    /// Serializes the message.
    pub fn to_bytes(&self) -> [u8; COOKIE_REPLY_LEN] {
        let mut w = Writer::new(MESSAGE_COOKIE_REPLY);
        w.put(&self.receiver_index.to_le_bytes());
        w.put(&self.nonce);
        w.put(&self.encrypted_cookie);
        w.finish()
    }
}

/// Transport data (message type 4): a header and a borrowed ciphertext.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Transport<'a> {
    /// The receiver's index for the session that encrypted this packet.
    pub receiver_index: u32,
    /// The 64-bit nonce counter.
    pub counter: u64,
    /// Encrypted, padded plaintext followed by the 16-byte tag.
    pub ciphertext: &'a [u8],
}

impl<'a> Transport<'a> {
    /// Parses a transport message of at least [`TRANSPORT_MIN_LEN`] bytes.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, WireError> {
        expect_type(datagram, MESSAGE_TRANSPORT)?;
        if datagram.len() < TRANSPORT_MIN_LEN {
            return Err(WireError::WrongLength {
                kind: "transport data",
                expected: TRANSPORT_MIN_LEN,
                got: datagram.len(),
            });
        }
        let mut r = Reader(datagram);
        let _type = r.u32();
        Ok(Self {
            receiver_index: r.u32(),
            counter: r.u64(),
            ciphertext: r.rest(),
        })
    }

    /// The 16-byte header that precedes a ciphertext.
    pub fn header(receiver_index: u32, counter: u64) -> [u8; TRANSPORT_HEADER_LEN] {
        let mut w = Writer::new(MESSAGE_TRANSPORT);
        w.put(&receiver_index.to_le_bytes());
        w.put(&counter.to_le_bytes());
        w.finish()
    }
}

/// Any WireGuard message, classified by type word and length.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message<'a> {
    /// Type 1.
    Initiation(Initiation),
    /// Type 2.
    Response(Response),
    /// Type 3.
    CookieReply(CookieReply),
    /// Type 4.
    Transport(Transport<'a>),
}

impl<'a> Message<'a> {
    /// Classifies and parses a datagram. Never panics; wrong lengths and types are errors.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, WireError> {
        match message_type(datagram)? {
            MESSAGE_INITIATION => Initiation::parse(datagram).map(Self::Initiation),
            MESSAGE_RESPONSE => Response::parse(datagram).map(Self::Response),
            MESSAGE_COOKIE_REPLY => CookieReply::parse(datagram).map(Self::CookieReply),
            MESSAGE_TRANSPORT => Transport::parse(datagram).map(Self::Transport),
            other => Err(WireError::UnknownType(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn initiation() -> impl Strategy<Value = Initiation> {
        (
            any::<u32>(),
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<u8>(), 48),
            proptest::collection::vec(any::<u8>(), 28),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
        )
            .prop_map(|(sender_index, ephemeral, s, t, mac1, mac2)| Initiation {
                sender_index,
                ephemeral,
                encrypted_static: s.try_into().unwrap(),
                encrypted_timestamp: t.try_into().unwrap(),
                mac1,
                mac2,
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::parse(&bytes);
            let _ = Initiation::parse(&bytes);
            let _ = Response::parse(&bytes);
            let _ = CookieReply::parse(&bytes);
            let _ = Transport::parse(&bytes);
        }

        #[test]
        fn initiation_round_trips(m in initiation()) {
            let bytes = m.to_bytes();
            prop_assert_eq!(Message::parse(&bytes), Ok(Message::Initiation(m)));
        }

        #[test]
        fn response_round_trips(sender_index: u32, receiver_index: u32, ephemeral: [u8; 32],
                                encrypted_nothing: [u8; 16], mac1: [u8; 16], mac2: [u8; 16]) {
            let m = Response { sender_index, receiver_index, ephemeral, encrypted_nothing, mac1, mac2 };
            let bytes = m.to_bytes();
            prop_assert_eq!(Message::parse(&bytes), Ok(Message::Response(m)));
        }

        #[test]
        fn cookie_reply_round_trips(receiver_index: u32, nonce: [u8; 24], cookie: [u8; 32]) {
            let m = CookieReply { receiver_index, nonce, encrypted_cookie: cookie };
            let bytes = m.to_bytes();
            prop_assert_eq!(Message::parse(&bytes), Ok(Message::CookieReply(m)));
        }

        #[test]
        fn transport_round_trips(receiver_index: u32, counter: u64,
                                 ct in proptest::collection::vec(any::<u8>(), 16..200)) {
            let mut bytes = Transport::header(receiver_index, counter).to_vec();
            bytes.extend_from_slice(&ct);
            let parsed = Transport::parse(&bytes).unwrap();
            prop_assert_eq!(parsed, Transport { receiver_index, counter, ciphertext: &ct });
        }

        #[test]
        fn any_other_length_is_rejected(len in 0usize..300, t in 1u32..=3) {
            let fixed = [INITIATION_LEN, RESPONSE_LEN, COOKIE_REPLY_LEN][t as usize - 1];
            prop_assume!(len != fixed);
            let mut bytes = vec![0u8; len];
            if let Some(head) = bytes.first_chunk_mut::<4>() {
                *head = t.to_le_bytes();
            }
            prop_assert!(Message::parse(&bytes).is_err());
        }
    }

    #[test]
    fn nonzero_reserved_byte_is_an_unknown_type() {
        let mut bytes = [0u8; INITIATION_LEN];
        bytes[0] = 1;
        bytes[2] = 1;
        assert_eq!(
            Message::parse(&bytes),
            Err(WireError::UnknownType(0x0001_0001))
        );
    }

    #[test]
    fn short_transport_is_rejected() {
        let mut bytes = Transport::header(1, 2).to_vec();
        bytes.extend_from_slice(&[0; TAG_LEN - 1]);
        assert!(matches!(
            Message::parse(&bytes),
            Err(WireError::WrongLength { .. })
        ));
        bytes.push(0);
        assert!(matches!(Message::parse(&bytes), Ok(Message::Transport(_))));
    }

    #[test]
    fn field_offsets_match_the_whitepaper() {
        let m = Initiation {
            sender_index: 0x0403_0201,
            ephemeral: [0xe0; 32],
            encrypted_static: [0x5a; 48],
            encrypted_timestamp: [0x7a; 28],
            mac1: [0x11; 16],
            mac2: [0x22; 16],
        };
        let b = m.to_bytes();
        assert_eq!(&b[..8], &[1, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(b[8], 0xe0);
        assert_eq!(b[40], 0x5a);
        assert_eq!(b[88], 0x7a);
        assert_eq!(b[116], 0x11);
        assert_eq!(b[132], 0x22);
    }
}
