//! RFC 1071 Internet checksum arithmetic, vectorisable.
//!
//! The ones'-complement sum depends neither on how the words are grouped nor (up to a final
//! byte swap) on byte order (RFC 1071 §2), so the bulk is added as native 32-bit words in a
//! 64-bit accumulator and folded to 16 bits at the end.

/// The folded ones'-complement sum (RFC 1071) of `data`, read as big-endian 16-bit words
/// with an odd last byte padded by a zero byte, plus `initial`. Not complemented: the value
/// to store in a checksum field is `!checksum(..)`, and a packet whose checksum field is
/// correct sums (field included) to `0xffff`.
///
/// Sums chain: `checksum(b, u32::from(checksum(a, 0)))` equals `checksum(a ++ b, 0)` when `a`
/// has an even length. `initial` may be any value, e.g. an unfolded sum of several parts.
#[must_use]
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    fold(sum(data, u64::from(initial)))
}

/// The folded (not complemented) sum of the TCP/UDP pseudo-header: source and destination
/// address (4 bytes each for IPv4, 16 for IPv6), the protocol number and the transport
/// length (header + payload). Pass it as `initial` to [`checksum`] over the transport
/// header and payload. This folded value is also what a `NEEDS_CSUM` checksum field holds.
#[must_use]
pub fn pseudo_header_checksum(src: &[u8], dst: &[u8], protocol: u8, l4_len: u32) -> u16 {
    let acc = sum(src, 0);
    let acc = sum(dst, acc);
    fold(add(add(acc, u64::from(protocol)), u64::from(l4_len)))
}

/// Ones'-complement addition in 64 bits (the carry out wraps around into bit 0).
#[inline]
fn add(acc: u64, value: u64) -> u64 {
    let (total, carry) = acc.overflowing_add(value);
    total + u64::from(carry)
}

/// Adds `data` to the running 64-bit ones'-complement sum `acc` (big-endian words).
///
/// The bulk is summed as native-endian 32-bit words into a plain `u64`, with no carry to
/// propagate (64 KiB of words cannot overflow it), which the compiler turns into vector
/// adds; the ones'-complement sum does not depend on byte order except for a final byte
/// swap (RFC 1071 §2(B)), applied after folding.
#[inline]
pub(crate) fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(4);
    let native: u64 = chunks
        .by_ref()
        .map(|c| u64::from(<[u8; 4]>::try_from(c).map_or(0, u32::from_ne_bytes)))
        .sum();
    let folded = fold(native);
    let big_endian = if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    };
    acc = add(acc, u64::from(big_endian));
    // Up to 3 bytes left: place them as the high bytes of one more big-endian word, which
    // keeps each byte at its position within a 16-bit word (the rest starts 4-aligned).
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        for (slot, byte) in word.iter_mut().zip(rest) {
            *slot = *byte;
        }
        acc = add(acc, u64::from_be_bytes(word));
    }
    acc
}

/// Folds a 64-bit ones'-complement sum to 16 bits.
#[inline]
pub(crate) fn fold(acc: u64) -> u16 {
    // 64 -> 33 -> 32 bits, then 32 -> 17 -> 16 bits; each step keeps the sum mod 0xffff.
    let acc = (acc >> 32) + (acc & 0xffff_ffff);
    let acc = (acc >> 32) + (acc & 0xffff_ffff);
    let acc = (acc >> 16) + (acc & 0xffff);
    let acc = (acc >> 16) + (acc & 0xffff);
    // The four steps leave at most 16 bits.
    u16::try_from(acc).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 as written: 16-bit words, 32-bit accumulator, carries folded at the end.
    fn reference(data: &[u8], initial: u32) -> u16 {
        let mut acc = u64::from(initial);
        for pair in data.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u64::from(*b));
            acc += hi | lo;
        }
        while acc > 0xffff {
            acc = (acc >> 16) + (acc & 0xffff);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0),
            0xddf2
        );
    }

    #[test]
    fn known_ipv4_header() {
        // A textbook IPv4 header whose checksum field (b861) is correct.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header, 0), 0xffff);
        let mut zeroed = header;
        zeroed[10] = 0;
        zeroed[11] = 0;
        assert_eq!(!checksum(&zeroed, 0), 0xb861);
    }

    #[test]
    fn carries_wrap_around() {
        assert_eq!(checksum(&[0xff; 64], 0), 0xffff);
        assert_eq!(checksum(&[0xff, 0xff], 1), 0x0001);
        assert_eq!(checksum(&[], u32::MAX), reference(&[], u32::MAX));
    }

    proptest! {
        #[test]
        fn matches_byte_by_byte_reference(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            initial in any::<u32>(),
        ) {
            prop_assert_eq!(checksum(&data, initial), reference(&data, initial));
        }

        #[test]
        fn pseudo_header_matches_reference(
            v6 in any::<bool>(),
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
            protocol in any::<u8>(),
            len in any::<u32>(),
        ) {
            let n = if v6 { 16 } else { 4 };
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&src[..n]);
            bytes.extend_from_slice(&dst[..n]);
            bytes.extend_from_slice(&[0, protocol]);
            bytes.extend_from_slice(&len.to_be_bytes());
            prop_assert_eq!(
                pseudo_header_checksum(&src[..n], &dst[..n], protocol, len),
                reference(&bytes, 0)
            );
        }
    }
}
