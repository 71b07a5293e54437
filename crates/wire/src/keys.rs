//! Key newtypes. Public keys are plain values; secret keys zeroize on drop, compare in
//! constant time and never print their bytes.

use core::fmt;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of every WireGuard key (Curve25519 points and scalars, symmetric keys).
pub const KEY_LEN: usize = 32;

/// A Curve25519 public key: a peer's identity. Public, so `Debug` and [`PublicKey::short`]
/// show it abbreviated the way wireguard-go's logs do (`peer(AbCd…wXyZ)`: the first four
/// and the last four significant characters of the base64 that `wg show` prints).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key in base64, as `wg show` and configuration files write it.
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// For logs: `peer(AbCd…wXyZ)`, characters 0-3 and 39-42 of [`PublicKey::to_base64`]
    /// (wireguard-go's format), enough to match a line against `wg show`.
    pub fn short(&self) -> ShortKey {
        ShortKey(*self)
    }
}

/// A public key abbreviated for logs; see [`PublicKey::short`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortKey(PublicKey);

impl fmt::Display for ShortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = self.0.to_base64();
        let head = full.get(0..4).unwrap_or_default();
        let tail = full.get(39..43).unwrap_or_default();
        write!(f, "peer({head}…{tail})")
    }
}

impl fmt::Debug for ShortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<[u8; KEY_LEN]> for PublicKey {
    fn from(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.short(), f)
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
    fn public_keys_print_as_wg_show_and_wireguard_go_logs_do() {
        // A key as `wg show` prints it, and its bytes (decoded independently, in Python).
        let key = PublicKey([
            197, 50, 1, 3, 154, 219, 161, 75, 231, 31, 136, 109, 161, 216, 219, 233, 238, 189, 237,
            8, 203, 17, 27, 117, 52, 0, 120, 153, 154, 169, 240, 56,
        ]);
        assert_eq!(
            key.to_base64(),
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
        );
        assert_eq!(key.short().to_string(), "peer(xTIB…p8Dg)");
        assert_eq!(format!("{key:?}"), "peer(xTIB…p8Dg)");
    }

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
