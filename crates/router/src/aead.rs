//! The transport AEAD behind a small interface, so the backend is a build-time choice:
//! RustCrypto's `chacha20poly1305` by default, `ring` with the `ring` feature. Both are
//! ChaCha20-Poly1305 with WireGuard's nonce (32 zero bits, then the 64-bit little-endian
//! counter) and an empty associated data.

use wg_wire::{SessionKey, TAG_LEN};

/// Authentication failed: wrong key, wrong counter or tampered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unauthentic;

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

#[cfg(not(feature = "ring"))]
mod backend {
    use super::*;
    use chacha20poly1305::aead::{AeadInOut, KeyInit};
    use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

    /// A keyed ChaCha20-Poly1305 instance; the key schedule zeroizes on drop.
    pub(crate) struct Cipher(ChaCha20Poly1305);

    impl Cipher {
        pub(crate) fn new(key: &SessionKey) -> Self {
            Self(ChaCha20Poly1305::new(<&Key>::from(key.expose_secret())))
        }

        /// Encrypts `buf` in place and returns the tag.
        pub(crate) fn seal(&self, counter: u64, buf: &mut [u8]) -> [u8; TAG_LEN] {
            match self
                .0
                .encrypt_inout_detached(&Nonce::from(nonce(counter)), &[], buf.into())
            {
                Ok(tag) => tag.into(),
                // Only for inputs beyond 256 GiB; a datagram never is.
                Err(_) => [0; TAG_LEN],
            }
        }

        /// Decrypts `buf` in place if `tag` authenticates it.
        pub(crate) fn open(
            &self,
            counter: u64,
            buf: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), Unauthentic> {
            self.0
                .decrypt_inout_detached(
                    &Nonce::from(nonce(counter)),
                    &[],
                    buf.into(),
                    &Tag::from(*tag),
                )
                .map_err(|_| Unauthentic)
        }
    }
}

#[cfg(feature = "ring")]
mod backend {
    use super::*;
    use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};

    /// A keyed ChaCha20-Poly1305 instance from ring.
    pub(crate) struct Cipher(Option<LessSafeKey>);

    impl Cipher {
        pub(crate) fn new(key: &SessionKey) -> Self {
            // ring only rejects keys of the wrong length; ours are always 32 bytes.
            Self(
                UnboundKey::new(&CHACHA20_POLY1305, key.expose_secret())
                    .ok()
                    .map(LessSafeKey::new),
            )
        }

        pub(crate) fn seal(&self, counter: u64, buf: &mut [u8]) -> [u8; TAG_LEN] {
            let Some(key) = &self.0 else {
                return [0; TAG_LEN];
            };
            let nonce = Nonce::assume_unique_for_key(nonce(counter));
            match key.seal_in_place_separate_tag(nonce, Aad::empty(), buf) {
                Ok(tag) => {
                    let mut out = [0u8; TAG_LEN];
                    out.copy_from_slice(tag.as_ref());
                    out
                }
                Err(_) => [0; TAG_LEN],
            }
        }

        pub(crate) fn open(
            &self,
            counter: u64,
            buf: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), Unauthentic> {
            let key = self.0.as_ref().ok_or(Unauthentic)?;
            let nonce = Nonce::assume_unique_for_key(nonce(counter));
            key.open_in_place_separate_tag(nonce, Aad::empty(), Tag::from(*tag), buf, 0..)
                .map(|_| ())
                .map_err(|_| Unauthentic)
        }
    }
}

pub(crate) use backend::Cipher;

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire-format known answer is in `tests/known_answers.rs` (the independent
    /// generator's first transport packet); this checks the counter and tag are bound.
    #[test]
    fn round_trip_and_tamper_detection() {
        let key = SessionKey::from_bytes([0x80; 32]);
        let c = Cipher::new(&key);
        let mut buf = *b"0123456789abcdef0123456789abcdef";
        let tag = c.seal(7, &mut buf);
        assert_ne!(&buf, b"0123456789abcdef0123456789abcdef");
        let sealed = buf;
        c.open(7, &mut buf, &tag).unwrap();
        assert_eq!(&buf, b"0123456789abcdef0123456789abcdef");
        let mut wrong_counter = sealed;
        assert_eq!(c.open(8, &mut wrong_counter, &tag), Err(Unauthentic));
        let mut flipped = sealed;
        flipped[0] ^= 1;
        assert_eq!(c.open(7, &mut flipped, &tag), Err(Unauthentic));
    }
}
