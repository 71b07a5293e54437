//! X25519 behind one small interface, with two backends chosen at build time:
//!
//! - **aws-lc** (feature `aws-lc`, what the key process ships on Linux): AWS-LC's X25519,
//!   whose x86_64 code uses the ADX/BMI2 multiply instructions. Measured on the 2-core build
//!   machine (docs/benchmarks.md, "X25519 backend"): about 2x faster per DH than
//!   x25519-dalek, and a responder does three of them per handshake. AWS-LC keeps the key
//!   in its own heap and wipes it when freed (`OPENSSL_free` cleanses).
//! - **x25519-dalek** (default without the feature): pure Rust, for the targets where no C
//!   can be cross-built (Apple, Android, the BSD checks) and for the reference tests.
//!
//! Both are checked against RFC 7748's vectors and against each other (tests below).
//! Secrets: private bytes stay in `Zeroizing` buffers or the backend's own wiped storage;
//! nothing here implements `Debug`.

use wg_wire::KEY_LEN;
use zeroize::Zeroizing;

use crate::HandshakeError;

/// A 32-byte DH result.
pub(crate) type Shared = Zeroizing<[u8; KEY_LEN]>;

#[cfg(feature = "aws-lc")]
mod backend {
    use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};

    use super::{KEY_LEN, Shared, Zeroizing};
    use crate::HandshakeError;

    /// A private key the backend can use any number of times; `None` if AWS-LC refused
    /// the bytes (it takes any 32 bytes for X25519, so this is not expected), in which case
    /// every DH with it fails.
    pub(crate) struct Secret(Option<PrivateKey>);

    impl Secret {
        pub(crate) fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
            Secret(PrivateKey::from_private_key(&X25519, bytes).ok())
        }

        pub(crate) fn public(&self) -> [u8; KEY_LEN] {
            let mut out = [0u8; KEY_LEN];
            if let Some(Ok(public)) = self.0.as_ref().map(PrivateKey::compute_public_key) {
                let bytes = public.as_ref();
                if bytes.len() == KEY_LEN {
                    out.copy_from_slice(bytes);
                }
            }
            out
        }

        pub(crate) fn dh(&self, public: &[u8; KEY_LEN]) -> Result<Shared, HandshakeError> {
            let key = self.0.as_ref().ok_or(HandshakeError::InvalidPublicKey)?;
            let peer = UnparsedPublicKey::new(&X25519, public);
            // AWS-LC refuses an all-zero result (a small-order public key), as the kernel
            // and wireguard-go do.
            agreement::agree(key, peer, HandshakeError::InvalidPublicKey, |shared| {
                let mut out = Zeroizing::new([0u8; KEY_LEN]);
                if shared.len() != KEY_LEN {
                    return Err(HandshakeError::InvalidPublicKey);
                }
                out.copy_from_slice(shared);
                Ok(out)
            })
        }
    }
}

#[cfg(not(feature = "aws-lc"))]
mod backend {
    use x25519_dalek::{PublicKey, StaticSecret};

    use super::{KEY_LEN, Shared, Zeroizing};
    use crate::HandshakeError;

    /// A private key the backend can use any number of times (dalek zeroizes it on drop).
    pub(crate) struct Secret(StaticSecret);

    impl Secret {
        pub(crate) fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
            Secret(StaticSecret::from(*bytes))
        }

        pub(crate) fn public(&self) -> [u8; KEY_LEN] {
            PublicKey::from(&self.0).to_bytes()
        }

        pub(crate) fn dh(&self, public: &[u8; KEY_LEN]) -> Result<Shared, HandshakeError> {
            let shared = self.0.diffie_hellman(&PublicKey::from(*public));
            // Refuse an all-zero result (a small-order public key), as the kernel and
            // wireguard-go do.
            if !shared.was_contributory() {
                return Err(HandshakeError::InvalidPublicKey);
            }
            Ok(Zeroizing::new(*shared.as_bytes()))
        }
    }
}

/// Which backend this build uses, for `--version` and the benchmarks.
pub const BACKEND: &str = if cfg!(feature = "aws-lc") {
    "aws-lc"
} else {
    "x25519-dalek"
};

/// The local static private key, with the bytes it was made from (which `get=1` returns).
pub(crate) struct StaticKey {
    secret: backend::Secret,
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl StaticKey {
    pub(crate) fn from_bytes(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        StaticKey {
            secret: backend::Secret::from_bytes(&bytes),
            bytes,
        }
    }

    pub(crate) fn public(&self) -> [u8; KEY_LEN] {
        self.secret.public()
    }

    pub(crate) fn bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.bytes.clone()
    }

    /// `DH(self, public)`, refusing an all-zero result.
    pub(crate) fn dh(&self, public: &[u8; KEY_LEN]) -> Result<Shared, HandshakeError> {
        self.secret.dh(public)
    }
}

/// An ephemeral key pair: made from 32 random bytes, used in at most two DHs of one
/// handshake, then dropped (wiped).
pub struct Ephemeral {
    secret: backend::Secret,
    public: [u8; KEY_LEN],
}

impl Ephemeral {
    /// A fresh ephemeral key from `rng`.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut bytes[..]);
        let secret = backend::Secret::from_bytes(&bytes);
        Ephemeral {
            public: secret.public(),
            secret,
        }
    }

    /// The public half, as it goes on the wire.
    pub fn public(&self) -> &[u8; KEY_LEN] {
        &self.public
    }

    pub(crate) fn dh(&self, public: &[u8; KEY_LEN]) -> Result<Shared, HandshakeError> {
        self.secret.dh(public)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_hex(s: &str) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        out.copy_from_slice(&hex::decode(s).unwrap_or_default());
        out
    }

    /// RFC 7748 section 6.1: Alice's and Bob's keys and their shared secret.
    #[test]
    fn rfc7748_diffie_hellman_vectors() {
        let alice = StaticKey::from_bytes(Zeroizing::new(from_hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        )));
        let bob = StaticKey::from_bytes(Zeroizing::new(from_hex(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        )));
        assert_eq!(
            hex::encode(alice.public()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert_eq!(
            hex::encode(bob.public()),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        );
        let shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
        assert_eq!(
            hex::encode(&alice.dh(&bob.public()).map(|s| *s).unwrap_or_default()[..]),
            shared
        );
        assert_eq!(
            hex::encode(&bob.dh(&alice.public()).map(|s| *s).unwrap_or_default()[..]),
            shared
        );
    }

    /// A small-order public key (here the all-zero point) gives an all-zero result: refused.
    #[test]
    fn small_order_public_keys_are_refused() {
        let key = StaticKey::from_bytes(Zeroizing::new([7u8; KEY_LEN]));
        assert!(matches!(
            key.dh(&[0u8; KEY_LEN]),
            Err(HandshakeError::InvalidPublicKey)
        ));
        // The order-1 point (u = 1).
        let mut one = [0u8; KEY_LEN];
        one[0] = 1;
        assert!(matches!(
            key.dh(&one),
            Err(HandshakeError::InvalidPublicKey)
        ));
    }

    proptest::proptest! {
        /// Whichever backend is built agrees with x25519-dalek, the pure-Rust reference,
        /// on public keys and shared secrets (the same code when dalek is the backend; a
        /// real cross-check under `--features aws-lc`).
        #[test]
        fn agrees_with_the_reference(a in proptest::array::uniform32(0u8..), b in proptest::array::uniform32(0u8..)) {
            let ours = StaticKey::from_bytes(Zeroizing::new(a));
            let theirs = x25519_dalek::StaticSecret::from(b);
            let their_public = x25519_dalek::PublicKey::from(&theirs);
            let reference = theirs.diffie_hellman(&x25519_dalek::PublicKey::from(ours.public()));
            proptest::prop_assert_eq!(ours.public(), x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(a)).to_bytes());
            match ours.dh(their_public.as_bytes()) {
                Ok(shared) => proptest::prop_assert_eq!(&shared[..], reference.as_bytes()),
                Err(_) => proptest::prop_assert!(!reference.was_contributory()),
            }
        }
    }
}
