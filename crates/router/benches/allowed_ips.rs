//! Allowed-IPs lookup cost (the per-packet routing decision) for 10,000 peers.
//!
//! Each iteration looks up 4096 precomputed addresses, a random mix of hits
//! and misses; divan reports the time per iteration and lookups per second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use ipnet::IpNet;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wg_router::allowed_ips::AllowedIps;

const PEERS: u32 = 10_000;
/// Enough distinct addresses to defeat the branch predictor, few enough to stay in cache.
const ADDRESSES: usize = 4096;

fn main() {
    divan::main();
}

fn v4(bits: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(bits))
}

fn net(addr: IpAddr, prefix_len: u8) -> IpNet {
    IpNet::new(addr, prefix_len).unwrap()
}

/// Times `table.lookup` over all of `addresses` per iteration; divan's item
/// counter turns that into lookups per second (ns per lookup = 1e9 / rate).
fn bench_lookups(bencher: Bencher<'_, '_>, table: &AllowedIps<u32>, addresses: &[IpAddr]) {
    bencher
        .counter(ItemsCount::new(addresses.len()))
        .bench_local(|| {
            addresses
                .iter()
                .filter_map(|addr| table.lookup(black_box(*addr)))
                .fold(0u32, u32::wrapping_add)
        });
}

/// Peer i holds 10.x.y.z/32 with x.y.z = i + 1; half the addresses hit.
#[divan::bench]
fn v4_host_routes(bencher: Bencher<'_, '_>) {
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    let mut table = AllowedIps::new();
    for peer in 0..PEERS {
        table.insert(net(v4(base + peer + 1), 32), peer);
    }
    let mut rng = StdRng::seed_from_u64(1);
    let addresses: Vec<IpAddr> = (0..ADDRESSES)
        .map(|_| {
            if rng.random_bool(0.5) {
                v4(base + rng.random_range(1..=PEERS))
            } else {
                v4(rng.random::<u32>())
            }
        })
        .collect();
    bench_lookups(bencher, &table, &addresses);
}

/// Peer i holds 10.x.y.0/24 and peer 10,000 + i holds 10.x.y.1/32 inside it;
/// a third of the addresses hit a /32, a third a /24 only, a third miss.
#[divan::bench]
fn v4_nested_subnets(bencher: Bencher<'_, '_>) {
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    let mut table = AllowedIps::new();
    for peer in 0..PEERS {
        let subnet = base + (peer << 8);
        table.insert(net(v4(subnet), 24), peer);
        table.insert(net(v4(subnet + 1), 32), PEERS + peer);
    }
    let mut rng = StdRng::seed_from_u64(2);
    let addresses: Vec<IpAddr> = (0..ADDRESSES)
        .map(|_| {
            let subnet = base + (rng.random_range(0..PEERS) << 8);
            match rng.random_range(0..3) {
                0 => v4(subnet + 1),
                1 => v4(subnet + rng.random_range(2..256)),
                _ => v4(u32::from(Ipv4Addr::new(11, 0, 0, 0)) + rng.random_range(0..1 << 24)),
            }
        })
        .collect();
    bench_lookups(bencher, &table, &addresses);
}

/// Peer i holds fd00::i+1/128; half the addresses hit.
#[divan::bench]
fn v6_host_routes(bencher: Bencher<'_, '_>) {
    let base = u128::from("fd00::".parse::<Ipv6Addr>().unwrap());
    let v6 = |bits: u128| IpAddr::V6(Ipv6Addr::from(bits));
    let mut table = AllowedIps::new();
    for peer in 0..PEERS {
        table.insert(net(v6(base + u128::from(peer) + 1), 128), peer);
    }
    let mut rng = StdRng::seed_from_u64(3);
    let addresses: Vec<IpAddr> = (0..ADDRESSES)
        .map(|_| {
            if rng.random_bool(0.5) {
                v6(base + u128::from(rng.random_range(1..=PEERS)))
            } else {
                v6(rng.random::<u128>())
            }
        })
        .collect();
    bench_lookups(bencher, &table, &addresses);
}

/// The worst case of the per-length design: 10,000 IPv6 prefixes spread over
/// the 126 lengths /3 to /128, looked up with addresses that match nothing,
/// so every length is probed.
#[divan::bench]
fn v6_every_length_miss(bencher: Bencher<'_, '_>) {
    let v6 = |bits: u128| IpAddr::V6(Ipv6Addr::from(bits));
    let mut table = AllowedIps::new();
    let mut rng = StdRng::seed_from_u64(4);
    for peer in 0..PEERS {
        let prefix_len = (peer % 129) as u8;
        // Under 2000::/3, so that the misses below (in fd00::/8) match nothing;
        // /0../2 would cover everything, so they get a longer prefix instead.
        let bits = (0b001u128 << 125) | (rng.random::<u128>() >> 3);
        table.insert(net(v6(bits), prefix_len.max(3)), peer);
    }
    let addresses: Vec<IpAddr> = (0..ADDRESSES)
        .map(|_| v6((0xfd_u128 << 120) | (rng.random::<u128>() >> 8)))
        .collect();
    assert!(addresses.iter().all(|addr| table.lookup(*addr).is_none()));
    bench_lookups(bencher, &table, &addresses);
}
