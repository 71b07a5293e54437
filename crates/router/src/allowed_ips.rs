//! The allowed-IPs table: cryptokey routing (whitepaper section 2).
//!
//! It owns the map from IP prefixes to peers. Outbound, the longest prefix
//! containing a packet's destination picks the peer to encrypt for; inbound,
//! the router drops a decrypted packet unless its source address maps back to
//! the peer that decrypted it, which is what stops one peer from spoofing
//! another's addresses. A prefix belongs to exactly one peer.
//!
//! # Design: one hash map per prefix length in use, searched longest first
//!
//! Each address family keeps a short list of buckets, one per prefix length
//! that has at least one entry, sorted longest first. A bucket maps the
//! masked network address (a `u32` or `u128`) to its owner. A lookup masks the
//! address for each bucket in turn and stops at the first hit, so it costs one
//! hash probe per distinct prefix length in use, allocates nothing, and is
//! independent of the number of peers.
//!
//! Chosen over a path-compressed binary trie (the Linux kernel's and
//! wireguard-go's design) because real configurations use very few distinct
//! prefix lengths: a hub with 10,000 peers holding a /32 each answers with a
//! single probe into a flat table, where a trie walks about
//! log2(10,000) = 14 dependent pointers (`benches/allowed_ips.rs`: about
//! 4 ns per IPv4 lookup). The worst case, every length in use, is bounded at
//! 33 probes for IPv4 and 129 for IPv6 (about 0.4 µs for a miss); only the
//! configuration decides the lengths, and only local traffic and
//! authenticated peers' packets are looked up. Removing a whole peer scans
//! every entry because `T` is only `Eq`, not `Hash`; that happens on
//! configuration changes, not per packet.
//!
//! Keys are hashed with a folded multiply seeded from std's `RandomState`:
//! SipHash made lookups about three times slower, and the keys come from the
//! configuration, not the network, so hash flooding is not a remote threat.
//! The seed still keeps a table's layout unpredictable.
//!
//! IPv4 and IPv6 are separate tables. An IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`) is looked up as IPv6, as the Linux kernel does, so an
//! IPv4 prefix never matches it.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::BitAnd;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Maps IP prefixes to values (peer ids) and finds the longest prefix
/// containing an address.
#[derive(Clone, Debug)]
pub struct AllowedIps<T> {
    v4: PrefixTable<u32, T>,
    v6: PrefixTable<u128, T>,
}

impl<T: Copy + Eq> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Eq> AllowedIps<T> {
    /// Creates an empty table.
    pub fn new() -> Self {
        let hasher = KeyHasherBuilder::random();
        Self {
            v4: PrefixTable::new(hasher),
            v6: PrefixTable::new(hasher),
        }
    }

    /// Inserts `net` for `value`, normalizing host bits away (10.0.0.1/8 is
    /// stored as 10.0.0.0/8, as `wg` does).
    ///
    /// A prefix belongs to exactly one value: inserting it again for another
    /// value moves it. Returns the previous owner.
    pub fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        match net {
            IpNet::V4(net) => self
                .v4
                .insert(u32::from(net.addr()), net.prefix_len(), value),
            IpNet::V6(net) => self
                .v6
                .insert(u128::from(net.addr()), net.prefix_len(), value),
        }
    }

    /// Removes exactly the prefix `net` (after normalizing host bits away),
    /// leaving longer and shorter prefixes alone. Returns its owner.
    pub fn remove(&mut self, net: &IpNet) -> Option<T> {
        match net {
            IpNet::V4(net) => self.v4.remove(u32::from(net.addr()), net.prefix_len()),
            IpNet::V6(net) => self.v6.remove(u128::from(net.addr()), net.prefix_len()),
        }
    }

    /// Returns the owner of exactly the prefix `net` (after normalizing host
    /// bits away), ignoring longer and shorter prefixes: a cheap "does this
    /// peer own this prefix" check, unlike collecting [`prefixes_of`](Self::prefixes_of).
    pub fn get(&self, net: &IpNet) -> Option<T> {
        match net {
            IpNet::V4(net) => self.v4.get(u32::from(net.addr()), net.prefix_len()),
            IpNet::V6(net) => self.v6.get(u128::from(net.addr()), net.prefix_len()),
        }
    }

    /// Removes every prefix of `value`, as `wg`'s `replace_allowed_ips` and
    /// peer removal do. Scans the whole table.
    pub fn remove_value(&mut self, value: T) {
        self.v4.remove_value(value);
        self.v6.remove_value(value);
    }

    /// Returns the owner of the longest prefix containing `addr`, if any.
    ///
    /// This is on the per-packet path: it allocates nothing.
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(addr) => self.v4.lookup(u32::from(addr)),
            IpAddr::V6(addr) => self.v6.lookup(u128::from(addr)),
        }
    }

    /// Returns the prefixes owned by `value`, IPv4 before IPv6, each family
    /// sorted by network address and then prefix length (for `wg show`).
    pub fn prefixes_of(&self, value: T) -> impl Iterator<Item = IpNet> + '_ {
        let mut prefixes: Vec<IpNet> = self
            .v4
            .entries_of(value)
            .filter_map(|(key, prefix_len)| {
                Ipv4Net::new(Ipv4Addr::from(key), prefix_len)
                    .ok()
                    .map(IpNet::V4)
            })
            .chain(self.v6.entries_of(value).filter_map(|(key, prefix_len)| {
                Ipv6Net::new(Ipv6Addr::from(key), prefix_len)
                    .ok()
                    .map(IpNet::V6)
            }))
            .collect();
        prefixes.sort_unstable();
        prefixes.into_iter()
    }

    /// Returns the number of prefixes in the table, both families.
    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len
    }

    /// Returns whether the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every prefix.
    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }
}

/// An address family's address as an integer, most significant bit first.
trait AddressBits: Copy + Eq + Hash + BitAnd<Output = Self> {
    /// The mask keeping the first `prefix_len` bits.
    fn prefix_mask(prefix_len: u8) -> Self;
}

impl AddressBits for u32 {
    fn prefix_mask(prefix_len: u8) -> Self {
        // A shift by the full width (prefix length 0) is an overflow, hence checked_shl.
        u32::MAX
            .checked_shl(u32::BITS.saturating_sub(u32::from(prefix_len)))
            .unwrap_or(0)
    }
}

impl AddressBits for u128 {
    fn prefix_mask(prefix_len: u8) -> Self {
        u128::MAX
            .checked_shl(u128::BITS.saturating_sub(u32::from(prefix_len)))
            .unwrap_or(0)
    }
}

/// One address family's prefixes.
#[derive(Clone, Debug)]
struct PrefixTable<K, T> {
    /// Only lengths in use, longest first, so the first hit is the longest match.
    buckets: Vec<LengthBucket<K, T>>,
    /// Number of prefixes across all buckets.
    len: usize,
    hasher: KeyHasherBuilder,
}

/// The prefixes of one length, keyed by their masked network address.
#[derive(Clone, Debug)]
struct LengthBucket<K, T> {
    prefix_len: u8,
    mask: K,
    owners: HashMap<K, T, KeyHasherBuilder>,
}

impl<K: AddressBits, T: Copy + Eq> PrefixTable<K, T> {
    fn new(hasher: KeyHasherBuilder) -> Self {
        Self {
            buckets: Vec::new(),
            len: 0,
            hasher,
        }
    }

    /// Where the bucket for `prefix_len` is, or would go to keep the order.
    fn bucket_position(&self, prefix_len: u8) -> Result<usize, usize> {
        // Reversed comparison: the buckets are sorted longest first.
        self.buckets
            .binary_search_by(|bucket| prefix_len.cmp(&bucket.prefix_len))
    }

    fn insert(&mut self, addr: K, prefix_len: u8, value: T) -> Option<T> {
        let position = match self.bucket_position(prefix_len) {
            Ok(position) => position,
            Err(position) => {
                self.buckets.insert(
                    position,
                    LengthBucket {
                        prefix_len,
                        mask: K::prefix_mask(prefix_len),
                        owners: HashMap::with_hasher(self.hasher),
                    },
                );
                position
            }
        };
        let bucket = self.buckets.get_mut(position)?;
        let previous = bucket.owners.insert(addr & bucket.mask, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    fn get(&self, addr: K, prefix_len: u8) -> Option<T> {
        let position = self.bucket_position(prefix_len).ok()?;
        let bucket = self.buckets.get(position)?;
        bucket.owners.get(&(addr & bucket.mask)).copied()
    }

    fn remove(&mut self, addr: K, prefix_len: u8) -> Option<T> {
        let position = self.bucket_position(prefix_len).ok()?;
        let bucket = self.buckets.get_mut(position)?;
        let previous = bucket.owners.remove(&(addr & bucket.mask))?;
        self.len -= 1;
        if bucket.owners.is_empty() {
            self.buckets.remove(position);
        }
        Some(previous)
    }

    fn remove_value(&mut self, value: T) {
        for bucket in &mut self.buckets {
            let before = bucket.owners.len();
            bucket.owners.retain(|_, owner| *owner != value);
            self.len -= before - bucket.owners.len();
        }
        self.buckets.retain(|bucket| !bucket.owners.is_empty());
    }

    fn lookup(&self, addr: K) -> Option<T> {
        self.buckets
            .iter()
            .find_map(|bucket| bucket.owners.get(&(addr & bucket.mask)).copied())
    }

    /// The (network address, prefix length) pairs owned by `value`, unordered.
    fn entries_of(&self, value: T) -> impl Iterator<Item = (K, u8)> + '_ {
        self.buckets.iter().flat_map(move |bucket| {
            bucket
                .owners
                .iter()
                .filter(move |(_, owner)| **owner == value)
                .map(|(addr, _)| (*addr, bucket.prefix_len))
        })
    }

    fn clear(&mut self) {
        self.buckets.clear();
        self.len = 0;
    }
}

/// Builds [`KeyHasher`]s with random seeds, one pair per table.
#[derive(Clone, Copy, Debug)]
struct KeyHasherBuilder {
    seed: u64,
    salt: u64,
}

impl KeyHasherBuilder {
    fn random() -> Self {
        // std's RandomState is the only randomness source available without a
        // new dependency; hashing constants with it yields random words.
        let random = RandomState::new();
        Self {
            seed: random.hash_one(0u8),
            salt: random.hash_one(1u8),
        }
    }
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            state: self.seed,
            salt: self.salt,
        }
    }
}

/// A folded-multiply hash for fixed-width integer keys (as in foldhash): a
/// few cycles, with well-mixed high bits (the SwissTable tag) and low bits
/// (the slot), which a plain multiply would not give for keys ending in zero
/// bits like a /24.
#[derive(Clone, Copy, Debug)]
struct KeyHasher {
    state: u64,
    salt: u64,
}

/// The full 128-bit product of `a` and `b`, its halves XORed together.
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl KeyHasher {
    /// An odd constant with no structure (the fractional digits of pi).
    const MULTIPLIER: u64 = 0x243f_6a88_85a3_08d3;

    fn mix(&mut self, word: u64) {
        self.state = folded_multiply(self.state ^ word, Self::MULTIPLIER);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for key types other than u32 and u128; kept correct, not fast.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            for (slot, byte) in word.iter_mut().zip(chunk) {
                *slot = *byte;
            }
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    fn write_u128(&mut self, n: u128) {
        // One multiply of the two seeded halves: half the latency of two
        // rounds. The random salt keeps any one value of the high half from
        // zeroing the product for every key.
        self.state = folded_multiply(self.state ^ n as u64, self.salt ^ (n >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn addr(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn prefixes(table: &AllowedIps<u32>, value: u32) -> Vec<IpNet> {
        table.prefixes_of(value).collect()
    }

    #[test]
    fn empty_table_matches_nothing() {
        let table = AllowedIps::<u32>::default();
        assert!(table.is_empty());
        assert_eq!(table.len(), 0);
        assert_eq!(table.lookup(addr("10.0.0.1")), None);
        assert_eq!(table.lookup(addr("::1")), None);
    }

    #[test]
    fn insert_normalizes_host_bits() {
        let mut table = AllowedIps::new();
        assert_eq!(table.insert(net("10.1.2.3/8"), 1), None);
        assert_eq!(prefixes(&table, 1), vec![net("10.0.0.0/8")]);
        // The same prefix written differently is the same entry.
        assert_eq!(table.insert(net("10.255.0.0/8"), 1), Some(1));
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup(addr("10.200.0.1")), Some(1));
        assert_eq!(table.lookup(addr("11.0.0.0")), None);

        assert_eq!(table.insert(net("fd00::1:2:3/64"), 1), None);
        assert_eq!(
            prefixes(&table, 1),
            vec![net("10.0.0.0/8"), net("fd00::/64")]
        );
        assert_eq!(table.remove(&net("fd00::ffff/64")), Some(1));
        assert_eq!(table.remove(&net("10.9.9.9/8")), Some(1));
        assert!(table.is_empty());
    }

    #[test]
    fn reinserting_for_another_value_moves_the_prefix() {
        let mut table = AllowedIps::new();
        assert_eq!(table.insert(net("10.0.0.0/24"), 1), None);
        assert_eq!(table.insert(net("10.0.0.0/24"), 2), Some(1));
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup(addr("10.0.0.7")), Some(2));
        assert_eq!(prefixes(&table, 1), vec![]);
        assert_eq!(prefixes(&table, 2), vec![net("10.0.0.0/24")]);
    }

    #[test]
    fn get_and_remove_are_exact() {
        let mut table = AllowedIps::new();
        table.insert(net("10.0.0.0/8"), 1);
        table.insert(net("10.0.0.0/16"), 2);
        assert_eq!(table.get(&net("10.0.0.0/24")), None);
        assert_eq!(table.get(&net("10.0.9.9/16")), Some(2));
        assert_eq!(table.get(&net("10.0.0.0/8")), Some(1));
        assert_eq!(table.get(&net("::/0")), None);
        assert_eq!(table.remove(&net("10.0.0.0/24")), None);
        assert_eq!(table.remove(&net("10.0.0.0/16")), Some(2));
        assert_eq!(table.remove(&net("10.0.0.0/16")), None);
        assert_eq!(table.lookup(addr("10.0.0.1")), Some(1));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn remove_value_removes_every_prefix_of_that_value_only() {
        let mut table = AllowedIps::new();
        table.insert(net("10.0.0.0/8"), 1);
        table.insert(net("10.1.0.0/16"), 2);
        table.insert(net("10.1.1.1/32"), 1);
        table.insert(net("fd00::/48"), 1);
        table.insert(net("fd00:1::/48"), 2);
        table.remove_value(1);
        assert_eq!(table.len(), 2);
        assert_eq!(prefixes(&table, 1), vec![]);
        assert_eq!(
            prefixes(&table, 2),
            vec![net("10.1.0.0/16"), net("fd00:1::/48")]
        );
        assert_eq!(table.lookup(addr("10.1.1.1")), Some(2));
        assert_eq!(table.lookup(addr("10.2.0.0")), None);
        assert_eq!(table.lookup(addr("fd00::1")), None);
        table.remove_value(3);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn default_routes_match_everything_in_their_family() {
        let mut table = AllowedIps::new();
        table.insert(net("0.0.0.0/0"), 4);
        assert_eq!(table.lookup(addr("0.0.0.0")), Some(4));
        assert_eq!(table.lookup(addr("255.255.255.255")), Some(4));
        assert_eq!(table.lookup(addr("::")), None);
        table.insert(net("::/0"), 6);
        assert_eq!(
            table.lookup(addr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(6)
        );
        assert_eq!(table.lookup(addr("1.2.3.4")), Some(4));
        // A longer prefix still wins over the default route.
        table.insert(net("1.2.3.0/24"), 1);
        assert_eq!(table.lookup(addr("1.2.3.4")), Some(1));
        assert_eq!(table.lookup(addr("1.2.4.4")), Some(4));
        assert_eq!(table.remove(&net("0.0.0.0/0")), Some(4));
        assert_eq!(table.lookup(addr("1.2.4.4")), None);
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_are_looked_up_as_ipv6() {
        let mut table = AllowedIps::new();
        table.insert(net("10.0.0.0/8"), 4);
        assert_eq!(table.lookup(addr("::ffff:10.0.0.1")), None);
        table.insert(net("::ffff:10.0.0.0/104"), 6);
        assert_eq!(table.lookup(addr("::ffff:10.0.0.1")), Some(6));
        assert_eq!(table.lookup(addr("10.0.0.1")), Some(4));
        // Prefixes of equal bits in different families are different prefixes.
        table.insert(net("0.0.0.0/0"), 40);
        table.insert(net("::/0"), 60);
        assert_eq!(table.len(), 4);
        assert_eq!(table.remove(&net("::/0")), Some(60));
        assert_eq!(table.lookup(addr("11.0.0.1")), Some(40));
    }

    #[test]
    fn nested_subnets_of_different_values_longest_match_wins() {
        let mut table = AllowedIps::new();
        table.insert(net("10.0.0.0/8"), 1);
        table.insert(net("10.1.0.0/16"), 2);
        table.insert(net("10.1.2.0/24"), 3);
        table.insert(net("10.1.2.3/32"), 4);
        table.insert(net("10.1.2.2/31"), 5);
        assert_eq!(table.lookup(addr("10.9.9.9")), Some(1));
        assert_eq!(table.lookup(addr("10.1.9.9")), Some(2));
        assert_eq!(table.lookup(addr("10.1.2.9")), Some(3));
        assert_eq!(table.lookup(addr("10.1.2.3")), Some(4));
        assert_eq!(table.lookup(addr("10.1.2.2")), Some(5));
        assert_eq!(table.lookup(addr("11.0.0.0")), None);
        // Removing an inner prefix exposes the next one out.
        assert_eq!(table.remove(&net("10.1.2.0/24")), Some(3));
        assert_eq!(table.lookup(addr("10.1.2.9")), Some(2));

        table.insert(net("fd00::/48"), 1);
        table.insert(net("fd00::/64"), 2);
        table.insert(net("fd00::1/128"), 3);
        table.insert(net("fd00::/127"), 4);
        assert_eq!(table.lookup(addr("fd00:0:0:1::1")), Some(1));
        assert_eq!(table.lookup(addr("fd00::2")), Some(2));
        assert_eq!(table.lookup(addr("fd00::1")), Some(3));
        assert_eq!(table.lookup(addr("fd00::")), Some(4));
    }

    #[test]
    fn clear_empties_both_families() {
        let mut table = AllowedIps::new();
        table.insert(net("10.0.0.0/8"), 1);
        table.insert(net("fd00::/8"), 1);
        table.clear();
        assert!(table.is_empty());
        assert_eq!(table.lookup(addr("10.0.0.1")), None);
        assert_eq!(table.lookup(addr("fd00::1")), None);
        assert_eq!(table.insert(net("10.0.0.0/8"), 2), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn prefix_masks_cover_every_length() {
        assert_eq!(u32::prefix_mask(0), 0);
        assert_eq!(u32::prefix_mask(1), 0x8000_0000);
        assert_eq!(u32::prefix_mask(24), 0xffff_ff00);
        assert_eq!(u32::prefix_mask(32), u32::MAX);
        assert_eq!(u128::prefix_mask(0), 0);
        assert_eq!(u128::prefix_mask(64), u128::MAX << 64);
        assert_eq!(u128::prefix_mask(128), u128::MAX);
    }
}
