#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Property tests: the parser never panics, `apply` matches a line-by-line model of
//! wireguard-go, a failing line anywhere rejects the whole request, and `get` answers
//! parse back to the configuration they came from.

use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use proptest::prelude::*;
use wg_uapi::{
    DeviceConfig, Limits, PeerChange, PeerConfig, PeerRuntime, Request, SecretKey, SetRequest,
    apply, parse_get_response, parse_request, write_get, write_set,
};
use wg_wire::{PresharedKey, PublicKey};

/// Stand-in for X25519 (this crate links no Curve25519): the public key is the clamped
/// private key's bytes. Private keys of bytes 0x48 and 0x50 are unchanged by clamping,
/// so their "public keys" are in the peer key pool below.
fn own(key: &SecretKey) -> PublicKey {
    PublicKey(*key.expose_secret())
}

const PEER_KEYS: [u8; 5] = [0x01, 0x02, 0x03, 0x48, 0x50];

fn public_key() -> impl Strategy<Value = PublicKey> {
    prop::sample::select(&PEER_KEYS[..]).prop_map(|b| PublicKey([b; 32]))
}

fn allowed_ip() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (
            0u8..4,
            0u8..4,
            prop::sample::select(vec![0u8, 8, 16, 24, 32])
        )
            .prop_map(|(a, b, len)| IpNet::new(
                format!("10.{a}.{b}.7").parse().unwrap(),
                len
            )
            .unwrap()),
        (0u16..4, prop::sample::select(vec![0u8, 48, 64, 128])).prop_map(|(a, len)| {
            IpNet::new(format!("fd00:{a}::1").parse().unwrap(), len).unwrap()
        }),
    ]
}

fn endpoint() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn psk() -> impl Strategy<Value = PresharedKey> {
    prop_oneof![Just(0u8), Just(0x77u8), Just(0x99u8)]
        .prop_map(|b| PresharedKey::from_bytes([b; 32]))
}

fn peer_change() -> impl Strategy<Value = PeerChange> {
    (
        public_key(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.2),
        prop::option::of(psk()),
        prop::option::of(endpoint()),
        prop::option::of(prop_oneof![Just(0u16), Just(25u16), any::<u16>()]),
        prop::bool::weighted(0.3),
        prop::collection::vec(allowed_ip(), 0..4),
        prop::option::of(Just(1u32)),
    )
        .prop_map(
            |(key, remove, update_only, psk, endpoint, keepalive, replace, ips, version)| {
                PeerChange {
                    remove,
                    update_only,
                    preshared_key: psk,
                    endpoint,
                    persistent_keepalive_interval: keepalive,
                    replace_allowed_ips: replace,
                    allowed_ips: ips,
                    protocol_version: version,
                    ..PeerChange::new(key)
                }
            },
        )
}

fn set_request() -> impl Strategy<Value = SetRequest> {
    (
        prop::option::of(prop_oneof![
            Just(0u8),
            Just(0x48u8),
            Just(0x50u8),
            Just(0xffu8)
        ]),
        prop::option::of(any::<u16>()),
        prop::option::of(prop_oneof![Just(0u32), any::<u32>()]),
        prop::bool::weighted(0.15),
        prop::collection::vec(peer_change(), 0..8),
    )
        .prop_map(|(key, port, mark, replace, peers)| SetRequest {
            private_key: key.map(|b| SecretKey::from_bytes([b; 32])),
            listen_port: port,
            fwmark: mark,
            replace_peers: replace,
            peers,
        })
}

/// A configuration reached through the public API (so it is normalized and consistent).
fn device_config() -> impl Strategy<Value = DeviceConfig> {
    prop::collection::vec(set_request(), 0..3).prop_map(|requests| {
        requests
            .iter()
            .fold(DeviceConfig::default(), |config, request| {
                apply(&config, request, own).unwrap()
            })
    })
}

/// A model peer: key, PSK (zeros = none), endpoint, keepalive, allowed IPs in order.
type ModelPeer = (PublicKey, [u8; 32], Option<SocketAddr>, u16, Vec<IpNet>);

/// wireguard-go's `IpcSetOperation`, line by line, over plain data: the slow model.
#[derive(Debug, Default)]
struct Model {
    private_key: Option<[u8; 32]>,
    listen_port: u16,
    fwmark: u32,
    peers: Vec<ModelPeer>,
}

fn clamp(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

fn unhex(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

impl Model {
    fn from_config(c: &DeviceConfig) -> Self {
        Self {
            private_key: c.private_key.as_ref().map(|k| *k.expose_secret()),
            listen_port: c.listen_port,
            fwmark: c.fwmark,
            peers: c
                .peers
                .iter()
                .map(|p| {
                    (
                        p.public_key,
                        p.preshared_key
                            .as_ref()
                            .map_or([0; 32], |k| *k.expose_secret()),
                        p.endpoint,
                        p.persistent_keepalive_interval,
                        p.allowed_ips.clone(),
                    )
                })
                .collect(),
        }
    }

    fn to_config(&self) -> DeviceConfig {
        DeviceConfig {
            private_key: self.private_key.map(SecretKey::from_bytes),
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            peers: self
                .peers
                .iter()
                .map(|(key, psk, endpoint, keepalive, ips)| PeerConfig {
                    public_key: *key,
                    preshared_key: (*psk != [0; 32]).then(|| PresharedKey::from_bytes(*psk)),
                    endpoint: *endpoint,
                    persistent_keepalive_interval: *keepalive,
                    allowed_ips: ips.clone(),
                })
                .collect(),
        }
    }

    fn own(&self) -> Option<PublicKey> {
        self.private_key.map(PublicKey)
    }

    fn index(&self, key: &PublicKey) -> Option<usize> {
        self.peers.iter().position(|p| p.0 == *key)
    }

    fn run(&mut self, text: &str) {
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("set=1"));
        // (key, created) of the section being applied; None for a dummy peer.
        let mut current: Option<(PublicKey, bool)> = None;
        let mut device = true;
        for line in lines {
            if line.is_empty() {
                break;
            }
            let (key, value) = line.split_once('=').unwrap();
            if key == "public_key" {
                device = false;
                let pk = PublicKey(unhex(value));
                current = if self.own() == Some(pk) {
                    None
                } else if self.index(&pk).is_some() {
                    Some((pk, false))
                } else {
                    self.peers.push((pk, [0; 32], None, 0, Vec::new()));
                    Some((pk, true))
                };
                continue;
            }
            if device {
                match key {
                    "private_key" => {
                        let k = unhex(value);
                        let new = (k != [0; 32]).then(|| clamp(k));
                        if new != self.private_key {
                            self.private_key = new;
                            if let Some(own) = self.own() {
                                self.peers.retain(|p| p.0 != own);
                            }
                        }
                    }
                    "listen_port" => self.listen_port = value.parse().unwrap(),
                    "fwmark" => self.fwmark = value.parse().unwrap(),
                    "replace_peers" => self.peers.clear(),
                    _ => unreachable!("{line}"),
                }
                continue;
            }
            let Some((pk, created)) = current else {
                continue;
            };
            let Some(i) = self.index(&pk) else { continue };
            match key {
                "remove" => {
                    self.peers.remove(i);
                    current = None;
                }
                "update_only" => {
                    if created {
                        self.peers.remove(i);
                        current = None;
                    }
                }
                "preshared_key" => self.peers[i].1 = unhex(value),
                "endpoint" => self.peers[i].2 = Some(value.parse().unwrap()),
                "persistent_keepalive_interval" => self.peers[i].3 = value.parse().unwrap(),
                "replace_allowed_ips" => self.peers[i].4.clear(),
                "allowed_ip" => {
                    let net: IpNet = value.parse::<IpNet>().unwrap().trunc();
                    for peer in &mut self.peers {
                        peer.4.retain(|n| *n != net);
                    }
                    self.peers[i].4.push(net);
                }
                "protocol_version" => {}
                _ => unreachable!("{line}"),
            }
        }
    }
}

const BAD_LINES: [&str; 8] = [
    "noequals",
    "listen_port=65536",
    "bogus=1",
    "public_key=xyz",
    "endpoint=example.com:1",
    "allowed_ip=10.0.0.0/33",
    "replace_peers=false",
    "protocol_version=2",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(text in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_request(&text);
        let mut with_op = b"set=1\n".to_vec();
        with_op.extend_from_slice(&text);
        let _ = parse_request(&with_op);
        let _ = parse_get_response(&text, &Limits::DEFAULT);
    }

    #[test]
    fn plausible_line_soup_never_panics(
        lines in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "private_key", "listen_port", "fwmark", "replace_peers", "public_key",
                    "remove", "update_only", "preshared_key", "endpoint",
                    "persistent_keepalive_interval", "replace_allowed_ips", "allowed_ip",
                    "protocol_version", "", "errno",
                ]),
                "[0-9a-fA-F:./\\[\\]%=+-]{0,70}",
            ),
            0..20,
        )
    ) {
        let mut text = String::from("set=1\n");
        for (key, value) in &lines {
            text.push_str(&format!("{key}={value}\n"));
        }
        if let Ok(Request::Set(request)) = parse_request(text.as_bytes()) {
            let _ = apply(&DeviceConfig::default(), &request, own);
        }
    }

    #[test]
    fn set_text_round_trips(request in set_request()) {
        let text = write_set(&request);
        prop_assert_eq!(parse_request(text.as_bytes()).unwrap(), Request::Set(request));
    }

    #[test]
    fn apply_matches_the_line_by_line_model(current in device_config(), request in set_request()) {
        let text = write_set(&request);
        let Request::Set(parsed) = parse_request(text.as_bytes()).unwrap() else { panic!() };
        let ours = apply(&current, &parsed, own).unwrap();
        let mut model = Model::from_config(&current);
        model.run(&text);
        prop_assert_eq!(ours, model.to_config());
    }

    #[test]
    fn a_failing_line_anywhere_rejects_the_whole_request(
        current in device_config(),
        request in set_request(),
        position in any::<prop::sample::Index>(),
        bad in prop::sample::select(&BAD_LINES[..]),
    ) {
        let text = write_set(&request);
        let mut lines: Vec<&str> = text.lines().collect();
        // Keep "set=1" first and the empty line last; a peer-only or device-only bad line
        // is bad in either section.
        let at = 1 + position.index(lines.len() - 1);
        lines.insert(at, bad);
        let broken = format!("{}\n", lines.join("\n"));
        let err = parse_request(broken.as_bytes()).unwrap_err();
        prop_assert!(err.errno().is_some(), "{err}");
        // Without the bad line the same request applies; with it nothing can be applied,
        // so the configuration stays exactly as it was.
        prop_assert!(apply(&current, &request, own).is_ok());
        let snapshot = current.clone();
        prop_assert_eq!(current, snapshot);
    }

    #[test]
    fn get_answers_parse_back(
        config in device_config(),
        rx in any::<u64>(),
        tx in any::<u64>(),
        // Inside every OS's SystemTime range and resolution (Windows: 100 ns ticks, until
        // the year 30828), so the property is the same everywhere.
        secs in 0u64..(1 << 36),
        ticks in 0u32..10_000_000,
    ) {
        let nanos = ticks * 100;
        let runtime = PeerRuntime {
            endpoint: None,
            last_handshake: Some(UNIX_EPOCH + Duration::new(secs, nanos)),
            rx_bytes: rx,
            tx_bytes: tx,
        };
        let text = write_get(&config, |_| runtime);
        let parsed = parse_get_response(text.as_bytes(), &Limits::DEFAULT).unwrap();
        prop_assert_eq!(&parsed.config, &config);
        let expected_handshake = (secs != 0 || nanos != 0).then_some(runtime.last_handshake).flatten();
        for rt in &parsed.runtime {
            prop_assert_eq!(rt.rx_bytes, rx);
            prop_assert_eq!(rt.tx_bytes, tx);
            prop_assert_eq!(rt.last_handshake, expected_handshake);
        }
        // And `setconf` with what `get` showed reproduces the configuration.
        prop_assert_eq!(
            apply(&DeviceConfig::default(), &SetRequest::from_config(&parsed.config), own).unwrap(),
            config
        );
    }
}
