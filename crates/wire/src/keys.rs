//! Key newtypes. Public keys are plain values; secret keys zeroize on drop, compare in
//! constant time and never print their bytes.

use core::fmt;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of every WireGuard key (Curve25519 points and scalars, symmetric keys).
pub const KEY_LEN: usize = 32;

/// A Curve25519 public key: a peer's identity. Public, so `Debug` shows a short prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl From<[u8; KEY_LEN]> for PublicKey {
    fn from(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, ..] = self.0;
        write!(f, "PublicKey({a:02x}{b:02x}{c:02x}{d:02x}…)")
    }
}

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            /// Wraps 32 secret bytes; the caller should zeroize its own copy.
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            /// The secret bytes. Keep every copy short-lived and zeroized.
            pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.ct_eq(&other.0).into()
            }
        }
        impl Eq for $name {}

        impl ConstantTimeEq for $name {
            fn ct_eq(&self, other: &Self) -> subtle::Choice {
                self.0.ct_eq(&other.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret_key!(
    /// A peer's optional pre-shared symmetric key (all zeros when none is configured, as the
    /// whitepaper specifies).
    PresharedKey
);

impl PresharedKey {
    /// The all-zero PSK used when none is configured.
    pub fn zero() -> Self {
        Self([0; KEY_LEN])
    }
}

impl Default for PresharedKey {
    fn default() -> Self {
        Self::zero()
    }
}

secret_key!(
    /// A ChaCha20-Poly1305 transport key derived by a completed handshake.
    SessionKey
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secret_bytes() {
        let psk = PresharedKey::from_bytes([0xab; KEY_LEN]);
        let key = SessionKey::from_bytes([0xcd; KEY_LEN]);
        let shown = format!("{psk:?} {key:?}");
        assert!(!shown.contains("ab") && !shown.contains("171"), "{shown}");
        assert!(!shown.contains("cd") && !shown.contains("205"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn secret_equality_is_by_value() {
        let a = PresharedKey::from_bytes([1; KEY_LEN]);
        let b = PresharedKey::from_bytes([1; KEY_LEN]);
        let mut c = [1; KEY_LEN];
        c[31] = 2;
        assert_eq!(a, b);
        assert_ne!(a, PresharedKey::from_bytes(c));
    }

    #[test]
    fn zeroize_clears_the_bytes() {
        let mut k = SessionKey::from_bytes([7; KEY_LEN]);
        k.zeroize();
        assert_eq!(k.expose_secret(), &[0; KEY_LEN]);
    }
}
