//! `AllowedIps` against a naive model: a list of (prefix, owner) searched
//! linearly for the longest match, under random operation sequences drawn so
//! that prefixes overlap and collide often.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use wg_router::allowed_ips::AllowedIps;

type PeerId = u8;

/// The obviously correct table the real one must agree with.
#[derive(Default)]
struct Model {
    entries: Vec<(IpNet, PeerId)>,
}

impl Model {
    fn insert(&mut self, net: IpNet, value: PeerId) -> Option<PeerId> {
        let net = net.trunc();
        match self
            .entries
            .iter_mut()
            .find(|(existing, _)| *existing == net)
        {
            Some((_, owner)) => Some(std::mem::replace(owner, value)),
            None => {
                self.entries.push((net, value));
                None
            }
        }
    }

    fn get(&self, net: &IpNet) -> Option<PeerId> {
        let net = net.trunc();
        self.entries
            .iter()
            .find(|(existing, _)| *existing == net)
            .map(|(_, owner)| *owner)
    }

    fn remove(&mut self, net: &IpNet) -> Option<PeerId> {
        let net = net.trunc();
        let position = self
            .entries
            .iter()
            .position(|(existing, _)| *existing == net)?;
        Some(self.entries.remove(position).1)
    }

    fn remove_value(&mut self, value: PeerId) {
        self.entries.retain(|(_, owner)| *owner != value);
    }

    fn lookup(&self, addr: IpAddr) -> Option<PeerId> {
        // IpNet::contains is false across families, which is the separation we want.
        self.entries
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, owner)| *owner)
    }

    fn prefixes_of(&self, value: PeerId) -> Vec<IpNet> {
        let mut prefixes: Vec<IpNet> = self
            .entries
            .iter()
            .filter(|(_, owner)| *owner == value)
            .map(|(net, _)| *net)
            .collect();
        prefixes.sort();
        prefixes
    }
}

const PEERS: PeerId = 4;

/// A small pool so that addresses share prefixes, including the IPv4-mapped
/// forms of the IPv4 ones.
fn address_pool() -> Vec<IpAddr> {
    let mut pool = Vec::new();
    for x in [0u8, 1, 128] {
        for y in [0u8, 1, 2, 255] {
            pool.push(IpAddr::V4(Ipv4Addr::new(10, 0, x, y)));
        }
    }
    pool.push(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)));
    pool.push(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)));
    pool.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    pool.push(IpAddr::V4(Ipv4Addr::BROADCAST));
    for text in [
        "fd00::",
        "fd00::1",
        "fd00::2",
        "fd00::3",
        "fd00:0:0:1::1",
        "fd00:0:1::1",
        "fd01::1",
        "::",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "::ffff:10.0.0.1",
        "::ffff:10.0.1.2",
    ] {
        pool.push(IpAddr::V6(text.parse::<Ipv6Addr>().unwrap()));
    }
    pool
}

fn prefix_lens(addr: IpAddr) -> &'static [u8] {
    match addr {
        IpAddr::V4(_) => &[0, 8, 16, 24, 31, 32],
        IpAddr::V6(_) => &[0, 48, 64, 104, 127, 128],
    }
}

fn any_addr() -> impl Strategy<Value = IpAddr> {
    proptest::sample::select(address_pool())
}

/// Host bits are usually left set, to exercise normalization.
fn any_net() -> impl Strategy<Value = IpNet> {
    any_addr().prop_flat_map(|addr| {
        proptest::sample::select(prefix_lens(addr))
            .prop_map(move |prefix_len| IpNet::new(addr, prefix_len).unwrap())
    })
}

#[derive(Clone, Debug)]
enum Op {
    Insert(IpNet, PeerId),
    Remove(IpNet),
    RemoveValue(PeerId),
    Lookup(IpAddr),
    Get(IpNet),
    Clear,
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        24 => (any_net(), 0..PEERS).prop_map(|(net, value)| Op::Insert(net, value)),
        8 => any_net().prop_map(Op::Remove),
        3 => (0..PEERS).prop_map(Op::RemoveValue),
        8 => any_addr().prop_map(Op::Lookup),
        4 => any_net().prop_map(Op::Get),
        1 => Just(Op::Clear),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matches_the_linear_model(ops in proptest::collection::vec(any_op(), 1..80)) {
        let pool = address_pool();
        let mut table = AllowedIps::new();
        let mut model = Model::default();
        for op in &ops {
            match *op {
                Op::Insert(net, value) => {
                    prop_assert_eq!(table.insert(net, value), model.insert(net, value), "{:?}", op);
                }
                Op::Remove(net) => {
                    prop_assert_eq!(table.remove(&net), model.remove(&net), "{:?}", op);
                }
                Op::RemoveValue(value) => {
                    table.remove_value(value);
                    model.remove_value(value);
                }
                Op::Lookup(addr) => {
                    prop_assert_eq!(table.lookup(addr), model.lookup(addr), "{:?}", op);
                }
                Op::Get(net) => {
                    prop_assert_eq!(table.get(&net), model.get(&net), "{:?}", op);
                }
                Op::Clear => {
                    table.clear();
                    model = Model::default();
                }
            }
            prop_assert_eq!(table.len(), model.entries.len(), "after {:?}", op);
            prop_assert_eq!(table.is_empty(), model.entries.is_empty());
            for &addr in &pool {
                prop_assert_eq!(table.lookup(addr), model.lookup(addr), "{} after {:?}", addr, op);
            }
        }
        for value in 0..PEERS {
            prop_assert_eq!(table.prefixes_of(value).collect::<Vec<_>>(), model.prefixes_of(value));
        }
    }
}

/// Many peers with host routes inside other peers' subnets, checked on every
/// host route, every subnet's other hosts, and misses.
#[test]
fn ten_thousand_nested_peers_match_the_model() {
    let mut table = AllowedIps::new();
    let mut entries: Vec<(IpNet, u32)> = Vec::new();
    for peer in 0..10_000u32 {
        let [_, _, b, c] = peer.to_be_bytes();
        let subnet = IpNet::new(IpAddr::V4(Ipv4Addr::new(10, b, c, 0)), 24).unwrap();
        let host = IpNet::new(IpAddr::V4(Ipv4Addr::new(10, b, c, 1)), 32).unwrap();
        assert_eq!(table.insert(subnet, peer), None);
        assert_eq!(table.insert(host, peer + 10_000), None);
        entries.push((subnet, peer));
        entries.push((host, peer + 10_000));
    }
    assert_eq!(table.len(), 20_000);
    for peer in (0..10_000u32).step_by(97) {
        let [_, _, b, c] = peer.to_be_bytes();
        assert_eq!(
            table.lookup(IpAddr::V4(Ipv4Addr::new(10, b, c, 1))),
            Some(peer + 10_000)
        );
        assert_eq!(
            table.lookup(IpAddr::V4(Ipv4Addr::new(10, b, c, 2))),
            Some(peer)
        );
        assert_eq!(
            table.prefixes_of(peer).collect::<Vec<_>>(),
            vec![entries[2 * peer as usize].0]
        );
    }
    assert_eq!(table.lookup(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1))), None);
    assert_eq!(table.lookup(IpAddr::V4(Ipv4Addr::new(11, 0, 0, 1))), None);
    table.remove_value(10_005);
    assert_eq!(
        table.lookup(IpAddr::V4(Ipv4Addr::new(10, 0, 5, 1))),
        Some(5)
    );
    assert_eq!(table.len(), 19_999);
}
