//! The `get` answer: serialization exactly as wireguard-go writes it, and (feature
//! `client`) a parser for it, for tests, fuzzing and tools.

use std::fmt::Write as _;
use std::net::SocketAddr;
#[cfg(feature = "client")]
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(feature = "client")]
use wg_wire::PresharedKey;
use wg_wire::PublicKey;
use zeroize::Zeroizing;

use crate::config::{DeviceConfig, PeerConfig};
use crate::keys::push_key_hex;
#[cfg(feature = "client")]
use crate::{
    error::UapiError,
    keys::{SecretKey, decode_key_hex, psk_is_zero},
    protocol::{Limits, parse_decimal, parse_endpoint, parse_prefix},
};

/// What the data plane knows about a peer at the time of a `get`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerRuntime {
    /// The endpoint learned from authenticated traffic; shown instead of the configured one.
    pub endpoint: Option<SocketAddr>,
    /// When the last handshake completed.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// Upper bounds of the text per item, so the buffer never reallocates (a reallocation
/// would leave a copy of the keys in freed memory).
const DEVICE_TEXT_MAX: usize = 256;
const PEER_TEXT_MAX: usize = 512;
const ALLOWED_IP_TEXT_MAX: usize = 64;

/// The `get=1` answer for `config`, in wireguard-go's order and format:
/// `private_key` (if set), `listen_port` (if not 0), `fwmark` (if not 0), then per peer
/// `public_key`, `preshared_key` (64 zeros when none), `protocol_version=1`, `endpoint` (if
/// any; the learned one wins), `last_handshake_time_sec`, `last_handshake_time_nsec`,
/// `tx_bytes`, `rx_bytes`, `persistent_keepalive_interval`, one `allowed_ip` per prefix;
/// then `errno=0` and the empty line. The text holds the keys, so it zeroizes on drop.
pub fn write_get(
    config: &DeviceConfig,
    stats: impl Fn(&PublicKey) -> PeerRuntime,
) -> Zeroizing<String> {
    let ips: usize = config.peers.iter().map(|p| p.allowed_ips.len()).sum();
    let capacity = DEVICE_TEXT_MAX + config.peers.len() * PEER_TEXT_MAX + ips * ALLOWED_IP_TEXT_MAX;
    let mut out = Zeroizing::new(String::with_capacity(capacity));
    let o: &mut String = &mut out;

    if let Some(key) = config.private_key.as_ref().filter(|k| !k.is_zero()) {
        o.push_str("private_key=");
        push_key_hex(o, key.expose_secret());
        o.push('\n');
    }
    if config.listen_port != 0 {
        let _ = writeln!(o, "listen_port={}", config.listen_port);
    }
    if config.fwmark != 0 {
        let _ = writeln!(o, "fwmark={}", config.fwmark);
    }
    for peer in &config.peers {
        write_peer(o, peer, &stats(&peer.public_key));
    }
    o.push_str("errno=0\n\n");
    out
}

fn write_peer(o: &mut String, peer: &PeerConfig, runtime: &PeerRuntime) {
    o.push_str("public_key=");
    push_key_hex(o, peer.public_key.as_bytes());
    o.push_str("\npreshared_key=");
    match &peer.preshared_key {
        Some(psk) => push_key_hex(o, psk.expose_secret()),
        None => push_key_hex(o, &[0; wg_wire::KEY_LEN]),
    }
    o.push_str("\nprotocol_version=1\n");
    if let Some(endpoint) = runtime.endpoint.or(peer.endpoint) {
        // Display puts IPv6 in brackets with a numeric zone, as netip.AddrPort does.
        let _ = writeln!(o, "endpoint={endpoint}");
    }
    let since_epoch = runtime
        .last_handshake
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    let _ = writeln!(o, "last_handshake_time_sec={}", since_epoch.as_secs());
    let _ = writeln!(o, "last_handshake_time_nsec={}", since_epoch.subsec_nanos());
    let _ = writeln!(o, "tx_bytes={}", runtime.tx_bytes);
    let _ = writeln!(o, "rx_bytes={}", runtime.rx_bytes);
    let _ = writeln!(
        o,
        "persistent_keepalive_interval={}",
        peer.persistent_keepalive_interval
    );
    for net in &peer.allowed_ips {
        let _ = writeln!(o, "allowed_ip={net}");
    }
}

/// A parsed `get` answer.
#[cfg(feature = "client")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetResponse {
    /// The configuration shown; each peer's `endpoint` is the one the answer showed.
    pub config: DeviceConfig,
    /// Counters and handshake time, in the order of `config.peers`. `endpoint` is left
    /// `None`: the answer does not say whether the endpoint was configured or learned.
    pub runtime: Vec<PeerRuntime>,
}

/// Parses a `get` answer (what [`write_get`] or wireguard-go writes). Unknown keys are
/// skipped, as `wg(8)` does; a non-zero `errno` is [`UapiError::Remote`].
#[cfg(feature = "client")]
pub fn parse_get_response(text: &[u8], limits: &Limits) -> Result<GetResponse, UapiError> {
    let mut response = GetResponse::default();
    let mut line_no = 0usize;
    let mut rest = text;
    if text.len() > limits.max_request_bytes {
        return Err(UapiError::RequestTooLarge {
            limit: limits.max_request_bytes,
        });
    }
    let mut allowed_ips = 0usize;
    loop {
        line_no += 1;
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(UapiError::Truncated { line: line_no });
        };
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        if line.len() > limits.max_line_len {
            return Err(UapiError::LineTooLong {
                line: line_no,
                limit: limits.max_line_len,
            });
        }
        if line.is_empty() {
            return Err(UapiError::Truncated { line: line_no });
        }
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            return Err(UapiError::MissingSeparator { line: line_no });
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        let invalid = |key: &'static str| UapiError::InvalidValue { line: line_no, key };
        let peer = response.config.peers.last_mut();
        let runtime = response.runtime.last_mut();
        match (key, peer, runtime) {
            (b"errno", _, _) => {
                let errno = parse_errno(value).ok_or(invalid("errno"))?;
                if rest != b"\n" {
                    return Err(UapiError::TrailingData);
                }
                if errno != 0 {
                    return Err(UapiError::Remote { errno });
                }
                return Ok(response);
            }
            (b"private_key", None, _) => {
                let bytes = decode_key_hex(value).ok_or(invalid("private_key"))?;
                let key = SecretKey::from_bytes(*bytes);
                response.config.private_key = (!key.is_zero()).then_some(key);
            }
            (b"listen_port", None, _) => {
                let port =
                    parse_decimal(value, u64::from(u16::MAX)).ok_or(invalid("listen_port"))?;
                response.config.listen_port =
                    u16::try_from(port).map_err(|_| invalid("listen_port"))?;
            }
            (b"fwmark", None, _) => {
                let mark = parse_decimal(value, u64::from(u32::MAX)).ok_or(invalid("fwmark"))?;
                response.config.fwmark = u32::try_from(mark).map_err(|_| invalid("fwmark"))?;
            }
            (b"public_key", _, _) => {
                if response.config.peers.len() >= limits.max_peers {
                    return Err(UapiError::TooManyPeers {
                        limit: limits.max_peers,
                    });
                }
                let bytes = decode_key_hex(value).ok_or(invalid("public_key"))?;
                response
                    .config
                    .peers
                    .push(PeerConfig::new(PublicKey(*bytes)));
                response.runtime.push(PeerRuntime::default());
            }
            (b"preshared_key", Some(peer), _) => {
                let bytes = decode_key_hex(value).ok_or(invalid("preshared_key"))?;
                let psk = PresharedKey::from_bytes(*bytes);
                peer.preshared_key = (!psk_is_zero(&psk)).then_some(psk);
            }
            (b"protocol_version", Some(_), _) if value != b"1" => {
                return Err(invalid("protocol_version"));
            }
            (b"endpoint", Some(peer), _) => {
                peer.endpoint = Some(parse_endpoint(value, None).ok_or(invalid("endpoint"))?);
            }
            (b"last_handshake_time_sec", Some(_), Some(rt)) => {
                let secs = parse_decimal(value, i64::MAX as u64)
                    .ok_or(invalid("last_handshake_time_sec"))?;
                let nanos = rt
                    .last_handshake
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.subsec_nanos());
                rt.last_handshake = handshake_time(secs, nanos);
            }
            (b"last_handshake_time_nsec", Some(_), Some(rt)) => {
                let nanos =
                    parse_decimal(value, 999_999_999).ok_or(invalid("last_handshake_time_nsec"))?;
                let secs = rt
                    .last_handshake
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                rt.last_handshake = handshake_time(secs, u32::try_from(nanos).unwrap_or(0));
            }
            (b"tx_bytes", Some(_), Some(rt)) => {
                rt.tx_bytes = parse_decimal(value, u64::MAX).ok_or(invalid("tx_bytes"))?;
            }
            (b"rx_bytes", Some(_), Some(rt)) => {
                rt.rx_bytes = parse_decimal(value, u64::MAX).ok_or(invalid("rx_bytes"))?;
            }
            (b"persistent_keepalive_interval", Some(peer), _) => {
                let secs = parse_decimal(value, u64::from(u16::MAX))
                    .ok_or(invalid("persistent_keepalive_interval"))?;
                peer.persistent_keepalive_interval =
                    u16::try_from(secs).map_err(|_| invalid("persistent_keepalive_interval"))?;
            }
            (b"allowed_ip", Some(peer), _) => {
                if allowed_ips >= limits.max_allowed_ips {
                    return Err(UapiError::TooManyAllowedIps {
                        limit: limits.max_allowed_ips,
                    });
                }
                allowed_ips += 1;
                let net = parse_prefix(value).ok_or(invalid("allowed_ip"))?;
                peer.allowed_ips.push(net.trunc());
            }
            _ => {}
        }
    }
}

#[cfg(feature = "client")]
fn parse_errno(value: &[u8]) -> Option<i64> {
    let (negative, digits) = match value.strip_prefix(b"-") {
        Some(digits) => (true, digits),
        None => (false, value),
    };
    let n = i64::try_from(parse_decimal(digits, i64::MAX as u64)?).ok()?;
    Some(if negative { -n } else { n })
}

#[cfg(feature = "client")]
fn handshake_time(secs: u64, nanos: u32) -> Option<SystemTime> {
    if secs == 0 && nanos == 0 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    fn two_peers() -> DeviceConfig {
        DeviceConfig {
            private_key: Some(SecretKey::from_bytes([0x50; 32])),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![
                PeerConfig {
                    public_key: PublicKey([0x01; 32]),
                    preshared_key: None,
                    endpoint: Some("192.0.2.1:51820".parse().unwrap()),
                    persistent_keepalive_interval: 0,
                    allowed_ips: vec!["10.0.0.0/24".parse().unwrap()],
                },
                PeerConfig {
                    public_key: PublicKey([0xab; 32]),
                    preshared_key: Some(PresharedKey::from_bytes([0xcd; 32])),
                    endpoint: Some("[fd00::1]:4242".parse().unwrap()),
                    persistent_keepalive_interval: 25,
                    allowed_ips: vec!["fd00::/64".parse().unwrap(), "0.0.0.0/0".parse().unwrap()],
                },
            ],
        }
    }

    #[test]
    fn exact_wireguard_go_format() {
        let config = two_peers();
        let text = write_get(&config, |pk| {
            if pk.0[0] == 0xab {
                PeerRuntime {
                    endpoint: None,
                    last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_700)),
                    rx_bytes: 1000,
                    tx_bytes: 2000,
                }
            } else {
                PeerRuntime::default()
            }
        });
        let expected = format!(
            "private_key={}\nlisten_port=51820\n\
             public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=192.0.2.1:51820\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
             persistent_keepalive_interval=0\nallowed_ip=10.0.0.0/24\n\
             public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=[fd00::1]:4242\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123456700\n\
             tx_bytes=2000\nrx_bytes=1000\npersistent_keepalive_interval=25\n\
             allowed_ip=fd00::/64\nallowed_ip=0.0.0.0/0\nerrno=0\n\n",
            "50".repeat(32),
            "01".repeat(32),
            "0".repeat(64),
            "ab".repeat(32),
            "cd".repeat(32),
        );
        assert_eq!(*text, expected);
    }

    #[test]
    fn optional_device_lines_and_learned_endpoints() {
        let mut config = two_peers();
        config.private_key = None;
        config.listen_port = 0;
        config.fwmark = 77;
        config.peers[0].endpoint = None;
        let text = write_get(&config, |pk| PeerRuntime {
            endpoint: (pk.0[0] == 0x01).then(|| "[fe80::1%3]:9".parse().unwrap()),
            ..PeerRuntime::default()
        });
        assert!(text.starts_with("fwmark=77\npublic_key="), "{}", *text);
        assert!(text.contains("\nendpoint=[fe80::1%3]:9\n"));
        assert!(text.ends_with("\nerrno=0\n\n"));
        let empty = write_get(&DeviceConfig::default(), |_| PeerRuntime::default());
        assert_eq!(*empty, "errno=0\n\n");
    }

    #[test]
    fn buffer_is_never_reallocated() {
        let mut config = two_peers();
        for i in 0..50u8 {
            let mut peer = PeerConfig::new(PublicKey([i; 32]));
            peer.endpoint = Some(
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
                    .parse()
                    .unwrap(),
            );
            peer.preshared_key = Some(PresharedKey::from_bytes([i; 32]));
            peer.persistent_keepalive_interval = u16::MAX;
            peer.allowed_ips = (0..20u8)
                .map(|j| {
                    format!("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff{j:02x}/128")
                        .parse::<IpNet>()
                        .unwrap()
                })
                .collect();
            config.peers.push(peer);
        }
        config.fwmark = u32::MAX;
        let ips: usize = config.peers.iter().map(|p| p.allowed_ips.len()).sum();
        let capacity =
            DEVICE_TEXT_MAX + config.peers.len() * PEER_TEXT_MAX + ips * ALLOWED_IP_TEXT_MAX;
        let text = write_get(&config, |_| PeerRuntime {
            endpoint: None,
            last_handshake: Some(UNIX_EPOCH + Duration::new(u32::MAX as u64 * 16, 999_999_999)),
            rx_bytes: u64::MAX,
            tx_bytes: u64::MAX,
        });
        assert_eq!(text.capacity(), capacity);
    }

    #[cfg(feature = "client")]
    #[test]
    fn get_answer_parses_back() {
        let config = two_peers();
        let runtime = PeerRuntime {
            endpoint: None,
            last_handshake: Some(UNIX_EPOCH + Duration::new(5, 6)),
            rx_bytes: 7,
            tx_bytes: 8,
        };
        let text = write_get(&config, |_| runtime);
        let parsed = parse_get_response(text.as_bytes(), &Limits::DEFAULT).unwrap();
        assert_eq!(parsed.config, config);
        assert_eq!(parsed.runtime, vec![runtime, runtime]);
    }

    #[cfg(feature = "client")]
    #[test]
    fn get_answer_errors() {
        let l = Limits::DEFAULT;
        assert!(matches!(
            parse_get_response(b"errno=-22\n\n", &l),
            Err(UapiError::Remote { errno: -22 })
        ));
        assert!(matches!(
            parse_get_response(b"listen_port=1\n", &l),
            Err(UapiError::Truncated { .. })
        ));
        assert!(matches!(
            parse_get_response(b"errno=0\n\nmore", &l),
            Err(UapiError::TrailingData)
        ));
        // Unknown keys are skipped, as wg does.
        let ok = parse_get_response(b"jc=5\nlisten_port=3\nerrno=0\n\n", &l).unwrap();
        assert_eq!(ok.config.listen_port, 3);
    }
}
