//! The whitepaper's primitives (section 5.4): HASH, MAC-free HMAC, KDF_n, AEAD with a zero
//! nonce (DH lives in `x25519`).

use blake2::Blake2s256;
use blake2::digest::{Digest, KeyInit, Mac};
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hmac::SimpleHmac;
use wg_wire::{KEY_LEN, TAG_LEN};
use zeroize::Zeroizing;

use crate::HandshakeError;

/// A 32-byte value that is secret (chaining keys, derived keys, DH results).
pub(crate) type Secret = Zeroizing<[u8; KEY_LEN]>;

/// The Noise protocol name, hashed into the initial chaining key.
pub(crate) const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's prologue.
pub(crate) const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";

/// `HASH(a || b || ...)`: BLAKE2s-256.
pub(crate) fn hash(parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut h = Blake2s256::new();
    for part in parts {
        Digest::update(&mut h, part);
    }
    h.finalize().into()
}

/// The initial chaining key `HASH(CONSTRUCTION)` and hash `HASH(ck || IDENTIFIER)`.
pub(crate) fn initial_chain_and_hash() -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
    let chain = hash(&[CONSTRUCTION]);
    let h = hash(&[&chain, IDENTIFIER]);
    (chain, h)
}

/// `HMAC(key, a || b || ...)` with BLAKE2s-256.
fn hmac(key: &[u8], parts: &[&[u8]]) -> Secret {
    // HMAC takes keys of any length; the error arm is unreachable but keeps this panic-free.
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    if let Ok(mut m) = <SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key) {
        for part in parts {
            m.update(part);
        }
        out.copy_from_slice(&m.finalize().into_bytes());
    }
    out
}

/// `KDF_N(key, input)`: HKDF with HMAC-BLAKE2s, returning `N` 32-byte outputs.
pub(crate) fn kdf<const N: usize>(key: &[u8; KEY_LEN], input: &[u8]) -> [Secret; N] {
    let prk = hmac(key, &[input]);
    let mut previous: Option<Secret> = None;
    core::array::from_fn(|i| {
        // Counters run 1..=N; N is at most 3 here.
        let counter = [u8::try_from(i + 1).unwrap_or(u8::MAX)];
        let next = match &previous {
            None => hmac(&prk[..], &[&counter]),
            Some(prev) => hmac(&prk[..], &[&prev[..], &counter]),
        };
        previous = Some(next.clone());
        next
    })
}

/// `AEAD(key, 0, plaintext, ad)` in place: encrypts `buf[..len-16]` and writes the tag into
/// the last 16 bytes. Handshake keys are used once, so the counter is always zero.
pub(crate) fn seal(key: &[u8; KEY_LEN], buf: &mut [u8], ad: &[u8]) {
    let cipher = ChaCha20Poly1305::new(<&Key>::from(key));
    let Some(split) = buf.len().checked_sub(TAG_LEN) else {
        return;
    };
    let (msg, tag_dst) = buf.split_at_mut(split);
    if let Ok(tag) = cipher.encrypt_inout_detached(&Nonce::default(), ad, msg.into()) {
        tag_dst.copy_from_slice(&tag);
    }
}

/// Opens what [`seal`] made, in place; `buf[..len-16]` holds the plaintext on success.
pub(crate) fn open(key: &[u8; KEY_LEN], buf: &mut [u8], ad: &[u8]) -> Result<(), HandshakeError> {
    let cipher = ChaCha20Poly1305::new(<&Key>::from(key));
    let split = buf
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(HandshakeError::DecryptionFailed)?;
    let (msg, tag) = buf.split_at_mut(split);
    let tag = Tag::try_from(&*tag).map_err(|_| HandshakeError::DecryptionFailed)?;
    cipher
        .decrypt_inout_detached(&Nonce::default(), ad, msg.into(), &tag)
        .map_err(|_| HandshakeError::DecryptionFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HASH(CONSTRUCTION) and HASH(ck || IDENTIFIER) as published for WireGuard.
    #[test]
    fn initial_values_match_the_published_constants() {
        let (ck, h) = initial_chain_and_hash();
        assert_eq!(
            hex::encode(ck),
            "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
        );
        assert_eq!(
            hex::encode(h),
            "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"
        );
    }

    #[test]
    fn seal_then_open_round_trips_and_rejects_tampering() {
        let key = [9u8; KEY_LEN];
        let mut buf = *b"sixteen byte msg\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        seal(&key, &mut buf, b"ad");
        let sealed = buf;
        open(&key, &mut buf, b"ad").unwrap();
        assert_eq!(&buf[..16], b"sixteen byte msg");
        let mut bad = sealed;
        bad[3] ^= 1;
        assert_eq!(
            open(&key, &mut bad, b"ad"),
            Err(HandshakeError::DecryptionFailed)
        );
        let mut bad_ad = sealed;
        assert_eq!(
            open(&key, &mut bad_ad, b"AD"),
            Err(HandshakeError::DecryptionFailed)
        );
    }
}
