//! The private key newtype and constant-time hex coding of keys.

use core::fmt;
use subtle::ConstantTimeEq;
use wg_wire::{KEY_LEN, PresharedKey};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A device's static Curve25519 private key. Zeroized on drop, compared in constant time,
/// never shown by `Debug`. An all-zero key in a `set` request means "remove the key".
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// Wraps 32 secret bytes; the caller should zeroize its own copy.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The secret bytes. Keep every copy short-lived and zeroized.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Whether all 32 bytes are zero (constant time).
    pub fn is_zero(&self) -> bool {
        self.0.ct_eq(&[0u8; KEY_LEN]).into()
    }

    /// The key with the Curve25519 clamping applied, as the kernel and wireguard-go store it
    /// (and as `get` then shows it).
    pub fn clamped(&self) -> Self {
        let mut bytes = self.0;
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        let key = Self(bytes);
        bytes.zeroize();
        key
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for SecretKey {}

impl ConstantTimeEq for SecretKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Whether a PSK is the all-zero "no PSK" value (constant time).
pub(crate) fn psk_is_zero(psk: &PresharedKey) -> bool {
    psk.expose_secret().ct_eq(&[0u8; KEY_LEN]).into()
}

/// The value of one hex digit, or a negative number; no table look-up, no branch on the
/// digit's value, so decoding a secret does not leak it through timing.
fn hex_nibble(c: u8) -> i16 {
    let c = i16::from(c);
    // Each mask is -1 when `c` lies in the range, 0 otherwise.
    let digit = ((0x2f - c) & (c - 0x3a)) >> 8;
    let lower = ((0x60 - c) & (c - 0x67)) >> 8;
    let upper = ((0x40 - c) & (c - 0x47)) >> 8;
    let valid = digit | lower | upper;
    ((c - 0x30) & digit) | ((c - 0x57) & lower) | ((c - 0x37) & upper) | !valid
}

/// Decodes exactly 64 hex digits (either case, as Go's `hex.DecodeString` accepts) into 32
/// bytes that zeroize on drop.
pub(crate) fn decode_key_hex(text: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    if text.len() != 2 * KEY_LEN {
        return None;
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    let mut bad: i16 = 0;
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let hi = hex_nibble(pair[0]);
        let lo = hex_nibble(pair[1]);
        bad |= hi | lo;
        *byte = ((hi << 4) | lo) as u8;
    }
    // A negative nibble sets the sign bit of `bad`.
    if bad < 0 { None } else { Some(out) }
}

/// Lowercase hex of one nibble without a table or a branch on its value.
fn hex_digit(n: u8) -> char {
    let n = i16::from(n & 0xf);
    // 9 - n is negative for n >= 10; the shifted mask then adds the gap from '9'+1 to 'a'.
    let c = n + 0x30 + (((9 - n) >> 8) & 0x27);
    char::from(c as u8)
}

/// Appends the 64 lowercase hex digits of `key` to `out`.
pub(crate) fn push_key_hex(out: &mut String, key: &[u8; KEY_LEN]) {
    for byte in key {
        out.push(hex_digit(byte >> 4));
        out.push(hex_digit(*byte));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_all_bytes() {
        for start in (0u16..256).step_by(32) {
            let mut key = [0u8; KEY_LEN];
            for (i, b) in key.iter_mut().enumerate() {
                *b = (start as usize + i) as u8;
            }
            let mut text = String::new();
            push_key_hex(&mut text, &key);
            assert_eq!(text.len(), 64);
            assert!(
                text.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            );
            assert_eq!(*decode_key_hex(text.as_bytes()).unwrap(), key);
            assert_eq!(
                *decode_key_hex(text.to_uppercase().as_bytes()).unwrap(),
                key
            );
        }
    }

    #[test]
    fn hex_rejects_every_non_hex_byte() {
        for c in 0u8..=255 {
            let mut text = [b'0'; 64];
            text[17] = c;
            let ok = c.is_ascii_hexdigit();
            assert_eq!(decode_key_hex(&text).is_some(), ok, "byte {c:#x}");
        }
        assert!(decode_key_hex(&[b'0'; 63]).is_none());
        assert!(decode_key_hex(&[b'0'; 65]).is_none());
        assert!(decode_key_hex(b"").is_none());
    }

    #[test]
    fn secret_key_debug_is_redacted_and_clamping_matches_x25519() {
        let k = SecretKey::from_bytes([0xff; KEY_LEN]);
        assert_eq!(format!("{k:?}"), "SecretKey(<redacted>)");
        let c = k.clamped();
        assert_eq!(c.expose_secret()[0], 0xf8);
        assert_eq!(c.expose_secret()[31], 0x7f);
        assert!(!k.is_zero());
        assert!(SecretKey::from_bytes([0; KEY_LEN]).is_zero());
    }
}
