//! Receiver indices: random 32-bit values, unique among the live ones.

use std::collections::HashMap;

use rand_core::CryptoRng;

/// Maps the local receiver indices in use to what they belong to (a peer, a session).
/// Indices are drawn uniformly at random, never counted, so they reveal nothing about how
/// many sessions exist or when they were made.
#[derive(Debug)]
pub struct IndexTable<T> {
    live: HashMap<u32, T>,
}

impl<T> Default for IndexTable<T> {
    fn default() -> Self {
        Self {
            live: HashMap::new(),
        }
    }
}

impl<T> IndexTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Draws a random index not currently in use and binds it to `value`.
    pub fn insert<R: CryptoRng + ?Sized>(&mut self, rng: &mut R, value: T) -> u32 {
        loop {
            let index = rng.next_u32();
            if let std::collections::hash_map::Entry::Vacant(slot) = self.live.entry(index) {
                slot.insert(value);
                return index;
            }
        }
    }

    /// What `index` belongs to, if it is live.
    pub fn get(&self, index: u32) -> Option<&T> {
        self.live.get(&index)
    }

    /// Frees `index`, returning what it belonged to.
    pub fn remove(&mut self, index: u32) -> Option<T> {
        self.live.remove(&index)
    }

    /// Number of live indices.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no index is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::convert::Infallible;
    use rand_core::{TryCryptoRng, TryRng};

    /// Yields a fixed sequence of u32 values, repeating the last one.
    struct Scripted(Vec<u32>);
    impl TryRng for Scripted {
        type Error = Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            Ok(if self.0.len() > 1 {
                self.0.remove(0)
            } else {
                self.0[0]
            })
        }
        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            Ok(u64::from(self.try_next_u32()?))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
            dst.fill(0);
            Ok(())
        }
    }
    impl TryCryptoRng for Scripted {}

    #[test]
    fn colliding_draws_are_redrawn() {
        let mut table = IndexTable::new();
        let mut rng = Scripted(vec![7, 7, 7, 9]);
        assert_eq!(table.insert(&mut rng, "a"), 7);
        assert_eq!(table.insert(&mut rng, "b"), 9);
        assert_eq!(table.get(7), Some(&"a"));
        assert_eq!(table.remove(7), Some("a"));
        assert_eq!(table.get(7), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn indices_are_the_rng_output_not_a_counter() {
        let mut table = IndexTable::new();
        let mut rng = Scripted(vec![0xdead_beef, 0x0000_0001]);
        assert_eq!(table.insert(&mut rng, ()), 0xdead_beef);
        assert_eq!(table.insert(&mut rng, ()), 0x0000_0001);
    }
}
