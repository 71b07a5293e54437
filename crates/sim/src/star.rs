//! One hub interface with many peers, each a node of its own: what a VPN server sees.
//! The same glue as [`Sim`](crate::Sim), with N spokes instead of one other side.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wg_handshake::LocalIdentity;
use wg_wire::PresharedKey;

use crate::clock::Clock;
use crate::network::{LinkConditions, Network};
use crate::node::{Node, NodeConfig};

/// How to build a [`Star`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StarConfig {
    /// Seeds every RNG of the run.
    pub seed: u64,
    /// Number of spokes (peers of the hub), at most 250.
    pub spokes: u8,
    /// Conditions of every path.
    pub link: LinkConditions,
    /// The spokes' persistent keepalive toward the hub (the hub has none: spokes are
    /// behind NAT and it learns their endpoints).
    pub persistent_keepalive: Option<NonZeroU16>,
}

/// A hub (tunnel 10.1.0.1, UDP 192.0.2.1:51820) and its spokes (spoke `i`: tunnel
/// 10.1.1.`i+1`, UDP 198.51.100.`i+1`:51820). Each spoke knows the hub's endpoint; the hub
/// knows no spoke's and learns them.
pub struct Star {
    hub: Node,
    spokes: Vec<Node>,
    net: Network,
    clock: Clock,
    now: Instant,
    /// Every `interval`, each spoke sends one packet to the hub and the hub one to each
    /// spoke, until `until`.
    traffic: Option<(Duration, Instant, Instant)>,
    next_payload: u64,
    sent: u64,
}

impl std::fmt::Debug for Star {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Star")
            .field("spokes", &self.spokes.len())
            .field("net", &self.net)
            .finish_non_exhaustive()
    }
}

fn hub_inner() -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 1)
}

fn spoke_inner(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 1, i.saturating_add(1))
}

fn hub_endpoint() -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), 51820)
}

fn spoke_endpoint(i: u8) -> SocketAddr {
    SocketAddr::new(
        Ipv4Addr::new(198, 51, 100, i.saturating_add(1)).into(),
        51820,
    )
}

impl Star {
    /// A configured hub and spokes at virtual time 0.
    pub fn new(config: StarConfig) -> Self {
        let start = Instant::now();
        let clock = Clock::new(start);
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut key = || crate::clock::private_key(&mut rng);
        let hub_key = key();
        let spoke_keys: Vec<_> = (0..config.spokes).map(|_| key()).collect();
        let hub_public = *LocalIdentity::from_private_bytes(hub_key.clone()).public_key();
        let mut seeds = StdRng::seed_from_u64(config.seed ^ 0x5eed);
        let node =
            |name, private_key, remote_public, inner, remote_inner, endpoint, remote, ka, seed| {
                NodeConfig {
                    name,
                    private_key,
                    remote_public,
                    psk: PresharedKey::zero(),
                    inner,
                    remote_inner,
                    endpoint,
                    remote_endpoint: remote,
                    persistent_keepalive: ka,
                    rng_seed: seed,
                }
            };
        let mut spokes = Vec::new();
        let mut spoke_publics = Vec::new();
        for (i, private_key) in (0u8..).zip(spoke_keys) {
            let public = *LocalIdentity::from_private_bytes(private_key.clone()).public_key();
            spoke_publics.push(public);
            let config = node(
                "spoke",
                private_key,
                hub_public,
                spoke_inner(i),
                hub_inner(),
                spoke_endpoint(i),
                Some(hub_endpoint()),
                config.persistent_keepalive,
                seeds.next_u64(),
            );
            match Node::new(config, clock, start) {
                Ok(n) => spokes.push(n),
                Err(e) => unreachable!("a /32 is always a valid allowed IP: {e}"),
            }
        }
        // The hub's first peer comes with its construction, the others are added.
        let Some(&first) = spoke_publics.first() else {
            unreachable!("a star has at least one spoke");
        };
        let hub_config = node(
            "hub",
            hub_key,
            first,
            hub_inner(),
            spoke_inner(0),
            hub_endpoint(),
            None,
            None,
            seeds.next_u64(),
        );
        let mut hub = match Node::new(hub_config, clock, start) {
            Ok(n) => n,
            Err(e) => unreachable!("a /32 is always a valid allowed IP: {e}"),
        };
        for (i, public) in (0u8..).zip(&spoke_publics).skip(1) {
            if let Err(e) = hub.add_peer(
                *public,
                PresharedKey::zero(),
                spoke_inner(i),
                None,
                None,
                start,
            ) {
                unreachable!("a /32 is always a valid allowed IP: {e}");
            }
        }
        Self {
            hub,
            spokes,
            net: Network::new(config.link, seeds.next_u64()),
            clock,
            now: start,
            traffic: None,
            next_payload: 0,
            sent: 0,
        }
    }

    /// The hub.
    pub fn hub(&self) -> &Node {
        &self.hub
    }

    /// The spokes, in order.
    pub fn spokes(&self) -> &[Node] {
        &self.spokes
    }

    /// The clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Packets the applications sent so far (both directions).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// From virtual time `first`, every `every` until `until`: each spoke sends one packet
    /// to the hub, and the hub one to each spoke.
    pub fn schedule_traffic(&mut self, first: Duration, every: Duration, until: Duration) {
        self.traffic = Some((every, self.clock.at(first), self.clock.at(until)));
    }

    /// Packets delivered to the hub and to all spokes, and how many distinct payloads among
    /// them arrived more than once.
    pub fn delivered(&self) -> (u64, usize) {
        let mut total = 0u64;
        let mut seen: HashMap<u64, u32> = HashMap::new();
        for node in std::iter::once(&self.hub).chain(&self.spokes) {
            for (&id, &n) in node.delivered() {
                total += u64::from(n);
                *seen.entry(id).or_default() += n;
            }
        }
        (total, seen.values().filter(|&&n| n > 1).count())
    }

    /// Runs every event up to virtual time `at`.
    pub fn run_until(&mut self, at: Duration) {
        let target = self.clock.at(at);
        while let Some(next) = self.next_event().filter(|&t| t <= target) {
            self.now = self.now.max(next);
            self.step();
        }
        self.now = self.now.max(target);
    }

    fn next_event(&mut self) -> Option<Instant> {
        let now = self.now;
        let mut next = [
            self.net.next_delivery(),
            self.hub.next_deadline(now),
            self.traffic.map(|(_, at, _)| at),
        ]
        .into_iter()
        .flatten()
        .min();
        for spoke in &mut self.spokes {
            next = [next, spoke.next_deadline(now)].into_iter().flatten().min();
        }
        next
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some(datagram) = self.net.pop_due(now) {
            let node = if datagram.to == self.hub.endpoint() {
                Some(&mut self.hub)
            } else {
                self.spokes.iter_mut().find(|s| s.endpoint() == datagram.to)
            };
            if let Some(node) = node {
                node.receive(&datagram.bytes, datagram.from, now);
            }
            self.flush();
        }
        if let Some((every, at, until)) = self.traffic
            && at <= now
        {
            for i in 0..self.spokes.len() {
                let id = self.next_payload;
                self.next_payload += 2;
                if let (Some(spoke), Ok(i)) = (self.spokes.get_mut(i), u8::try_from(i)) {
                    spoke.send_ip(id, now);
                    self.hub.send_ip_to(spoke_inner(i), id + 1, now);
                    self.sent += 2;
                }
                self.flush();
            }
            let next = at + every;
            self.traffic = (next < until).then_some((every, next, until));
        }
        self.hub.poll_timers(now);
        for spoke in &mut self.spokes {
            spoke.poll_timers(now);
        }
        self.flush();
    }

    fn flush(&mut self) {
        let now = self.now;
        for datagram in self.hub.take_outbox() {
            self.net.send(datagram, now);
        }
        for spoke in &mut self.spokes {
            for datagram in spoke.take_outbox() {
                self.net.send(datagram, now);
            }
        }
    }
}
