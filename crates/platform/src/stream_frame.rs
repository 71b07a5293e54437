//! Message framing for stream IPC transports: a `u32` little-endian length, then that many
//! bytes of payload. macOS has no `SOCK_SEQPACKET` and Windows pipes run in byte mode, so
//! there the message boundaries the Linux transport gets from the kernel are written into
//! the stream.
//!
//! The peer process is hostile: the [`Decoder`] checks a length against the caller's
//! maximum (wg-messages' `MAX_MESSAGE_LEN`) as soon as the 4 length bytes are in, before
//! buffering any of the payload, so it never holds more than the prefix plus `max` bytes.
//! It takes bytes in any chunking (one byte at a time or many messages at once) and hands
//! back whole messages. After an error the stream has lost its boundaries: the decoder keeps
//! returning that error and the caller must close the channel.
#![forbid(unsafe_code)]

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Why a message could not be framed or a stream could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamFrameError {
    /// A length above the maximum: from a peer, a broken or hostile process (close the
    /// channel); from our own encoder, a message that must be made smaller.
    #[error(
        "IPC message of {len} bytes is longer than the limit of {max}: the peer process is broken or hostile, close the channel"
    )]
    TooLong {
        /// The length announced (or asked for).
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a message.
    #[error(
        "IPC stream ended inside a message ({have} of {need} bytes): the peer process died or closed its end mid-message"
    )]
    Truncated {
        /// Bytes of the prefix and payload received.
        have: usize,
        /// Bytes of the prefix and payload the message needed (`LEN_PREFIX` while the
        /// prefix itself is incomplete).
        need: usize,
    },
}

/// `max` as the largest length a `u32` prefix can say.
fn clamp_max(max: usize) -> usize {
    max.min(u32::MAX as usize)
}

/// The length prefix for a payload of `len` bytes, refused above `max`. For vectored
/// writes: the prefix, then the payload.
pub fn prefix(len: usize, max: usize) -> Result<[u8; LEN_PREFIX], StreamFrameError> {
    let max = clamp_max(max);
    match u32::try_from(len) {
        Ok(len32) if len <= max => Ok(len32.to_le_bytes()),
        _ => Err(StreamFrameError::TooLong {
            len: len as u64,
            max,
        }),
    }
}

/// Appends `payload`, framed, to `out`. Refused (and `out` untouched) above `max`.
pub fn encode_into(payload: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), StreamFrameError> {
    let prefix = prefix(payload.len(), max)?;
    out.reserve(LEN_PREFIX + payload.len());
    out.extend_from_slice(&prefix);
    out.extend_from_slice(payload);
    Ok(())
}

/// `payload`, framed. Refused above `max`.
pub fn encode(payload: &[u8], max: usize) -> Result<Vec<u8>, StreamFrameError> {
    let mut out = Vec::new();
    encode_into(payload, max, &mut out)?;
    Ok(out)
}

/// An incremental decoder of one stream: feed it whatever each read returned.
#[derive(Debug)]
pub struct Decoder {
    max: usize,
    prefix: [u8; LEN_PREFIX],
    prefix_have: usize,
    /// The payload so far, once the prefix is complete and checked.
    payload: Option<(usize, Vec<u8>)>,
    failed: Option<StreamFrameError>,
}

impl Decoder {
    /// A decoder refusing messages longer than `max` bytes (the payload, not counting the
    /// prefix).
    pub fn new(max: usize) -> Self {
        Decoder {
            max: clamp_max(max),
            prefix: [0; LEN_PREFIX],
            prefix_have: 0,
            payload: None,
            failed: None,
        }
    }

    /// Takes bytes from the front of `input` until one message is complete and returns it;
    /// `Ok(None)` once `input` is used up without completing one (read more, then call
    /// again). Call it in a loop until `Ok(None)`: a chunk may hold several messages.
    ///
    /// An over-long length is refused as soon as its 4 bytes are in, before any payload is
    /// buffered; from then on every call returns that error.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, StreamFrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.payload.is_none() {
            let take = (LEN_PREFIX - self.prefix_have).min(input.len());
            let (head, rest) = input.split_at(take);
            self.prefix[self.prefix_have..self.prefix_have + take].copy_from_slice(head);
            self.prefix_have += take;
            *input = rest;
            if self.prefix_have < LEN_PREFIX {
                return Ok(None);
            }
            let len = u32::from_le_bytes(self.prefix);
            let len = match usize::try_from(len) {
                Ok(len) if len <= self.max => len,
                _ => {
                    let e = StreamFrameError::TooLong {
                        len: u64::from(len),
                        max: self.max,
                    };
                    self.failed = Some(e);
                    return Err(e);
                }
            };
            self.payload = Some((len, Vec::with_capacity(len)));
        }
        let Some((len, payload)) = self.payload.as_mut() else {
            return Ok(None);
        };
        let take = (*len - payload.len()).min(input.len());
        let (head, rest) = input.split_at(take);
        payload.extend_from_slice(head);
        *input = rest;
        if payload.len() < *len {
            return Ok(None);
        }
        self.prefix_have = 0;
        Ok(self.payload.take().map(|(_, message)| message))
    }

    /// Every message `chunk` completes, in order.
    pub fn decode_all(&mut self, mut chunk: &[u8]) -> Result<Vec<Vec<u8>>, StreamFrameError> {
        let mut messages = Vec::new();
        while let Some(message) = self.decode(&mut chunk)? {
            messages.push(message);
        }
        Ok(messages)
    }

    /// At the end of the stream: an error if it ended inside a message.
    pub fn finish(&self) -> Result<(), StreamFrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match &self.payload {
            Some((len, payload)) => Err(StreamFrameError::Truncated {
                have: LEN_PREFIX + payload.len(),
                need: LEN_PREFIX + len,
            }),
            None if self.prefix_have > 0 => Err(StreamFrameError::Truncated {
                have: self.prefix_have,
                need: LEN_PREFIX,
            }),
            None => Ok(()),
        }
    }

    /// Bytes held for the message in progress (prefix and payload): at most
    /// `LEN_PREFIX + max`.
    pub fn buffered(&self) -> usize {
        match &self.payload {
            Some((_, payload)) => LEN_PREFIX + payload.len(),
            None => self.prefix_have,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 64;

    #[test]
    fn the_prefix_is_little_endian_u32() {
        assert_eq!(encode(b"abc", MAX), Ok(vec![3, 0, 0, 0, b'a', b'b', b'c']));
        assert_eq!(prefix(0x0102, 0x10000), Ok([0x02, 0x01, 0, 0]));
        assert_eq!(encode(b"", MAX), Ok(vec![0, 0, 0, 0]));
    }

    #[test]
    fn over_long_messages_are_not_encoded() {
        let mut out = vec![9];
        assert_eq!(
            encode_into(&[0; MAX + 1], MAX, &mut out),
            Err(StreamFrameError::TooLong {
                len: MAX as u64 + 1,
                max: MAX
            })
        );
        assert_eq!(out, [9]);
        assert!(encode(&[0; MAX], MAX).is_ok());
    }

    #[test]
    fn an_over_long_length_is_refused_before_its_payload_is_buffered() {
        let mut d = Decoder::new(MAX);
        let mut input: &[u8] = &[65, 0, 0, 0, 1, 2, 3];
        assert_eq!(
            d.decode(&mut input),
            Err(StreamFrameError::TooLong { len: 65, max: MAX })
        );
        // Nothing of the payload taken or held; the error sticks.
        assert_eq!(input, [1, 2, 3]);
        assert!(d.buffered() <= LEN_PREFIX);
        assert_eq!(
            d.decode(&mut &[0u8, 0, 0, 0][..]),
            Err(StreamFrameError::TooLong { len: 65, max: MAX })
        );
        assert!(d.finish().is_err());
        // The largest u32 against the largest limit.
        let mut d = Decoder::new(usize::MAX);
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert_eq!(d.decode(&mut input), Ok(None));
        assert_eq!(d.buffered(), LEN_PREFIX);
    }

    #[test]
    fn truncated_streams_are_reported() {
        let mut d = Decoder::new(MAX);
        assert_eq!(d.finish(), Ok(()));
        assert_eq!(d.decode_all(&[3, 0]), Ok(vec![]));
        assert_eq!(
            d.finish(),
            Err(StreamFrameError::Truncated {
                have: 2,
                need: LEN_PREFIX
            })
        );
        assert_eq!(d.decode_all(&[0, 0, b'x']), Ok(vec![]));
        assert_eq!(
            d.finish(),
            Err(StreamFrameError::Truncated { have: 5, need: 7 })
        );
        assert_eq!(d.decode_all(b"yz"), Ok(vec![b"xyz".to_vec()]));
        assert_eq!(d.finish(), Ok(()));
    }

    proptest! {
        /// Any messages, encoded and cut at arbitrary places, decode to the same messages,
        /// and the decoder never holds more than a prefix plus `MAX`.
        #[test]
        fn round_trip_with_arbitrary_chunking(
            messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=MAX), 0..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut stream = Vec::new();
            for m in &messages {
                encode_into(m, MAX, &mut stream).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.push(0);
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut d = Decoder::new(MAX);
            let mut out = Vec::new();
            for w in cuts.windows(2) {
                out.extend(d.decode_all(&stream[w[0]..w[1]]).map_err(|e| TestCaseError::fail(e.to_string()))?);
                prop_assert!(d.buffered() <= LEN_PREFIX + MAX);
            }
            prop_assert_eq!(d.finish(), Ok(()));
            prop_assert_eq!(out, messages);
        }

        /// A stream cut short reports truncation, never a message that was not sent whole.
        #[test]
        fn a_cut_stream_is_truncated(
            message in prop::collection::vec(any::<u8>(), 0..=MAX),
            keep in any::<prop::sample::Index>(),
        ) {
            let stream = encode(&message, MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let keep = 1 + keep.index(stream.len() - 1);
            let mut d = Decoder::new(MAX);
            prop_assert_eq!(d.decode_all(&stream[..keep]), Ok(vec![]));
            let truncated = matches!(d.finish(), Err(StreamFrameError::Truncated { have, .. }) if have == keep);
            prop_assert!(truncated);
        }

        /// Arbitrary bytes never make the decoder panic or buffer beyond the bound, and a
        /// refused length is above the limit.
        #[test]
        fn hostile_bytes_stay_bounded(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut d = Decoder::new(MAX);
            match d.decode_all(&bytes) {
                Ok(messages) => prop_assert!(messages.iter().all(|m| m.len() <= MAX)),
                Err(StreamFrameError::TooLong { len, .. }) => prop_assert!(len > MAX as u64),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
            prop_assert!(d.buffered() <= LEN_PREFIX + MAX);
        }
    }
}
