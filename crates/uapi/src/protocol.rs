//! The request side of the protocol, sans I/O: limits, typed requests, a line-by-line
//! `set` parser, whole-text parsing, responses, and (feature `client`) request
//! serialization.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use ipnet::IpNet;
use wg_wire::{PresharedKey, PublicKey};
use zeroize::Zeroizing;

use crate::error::{Errno, KeyName, Section, UapiError};
#[cfg(feature = "client")]
use crate::keys::push_key_hex;
use crate::keys::{SecretKey, decode_key_hex};

/// Bounds on what a client may send, so that no client can make the server buffer or
/// allocate without limit.
///
/// Memory per connection is at most `max_line_len` bytes of line buffer plus the parsed
/// request: about 200 bytes per peer and 20 per allowed IP, so roughly 13 MiB + 20 MiB with
/// the defaults. The byte limit also bounds the time a request can take to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line, in bytes, not counting `\n`. The longest valid line is about 80
    /// bytes (`preshared_key=` + 64 hex digits); wireguard-go's scanner stops at 64 KiB.
    pub max_line_len: usize,
    /// Longest `set` request in bytes, counting every line and its `\n`.
    pub max_request_bytes: usize,
    /// Most `public_key=` sections in one request, and most peers in a device after
    /// [`crate::apply`] (wireguard-go's `MaxPeers` is 65 536 as well).
    pub max_peers: usize,
    /// Most `allowed_ip=` lines in one request, and most allowed IPs in a device.
    pub max_allowed_ips: usize,
}

impl Limits {
    /// 4 KiB lines, 64 MiB requests, 65 536 peers, 1 048 576 allowed IPs: several times
    /// what a large real configuration needs, small enough for any host.
    pub const DEFAULT: Limits = Limits {
        max_line_len: 4096,
        max_request_bytes: 64 << 20,
        max_peers: 1 << 16,
        max_allowed_ips: wg_wire::constants::MAX_ALLOWED_IPS,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Maps an IPv6 zone name (`fe80::1%eth0`) to an interface index.
pub type ScopeResolver = fn(&str) -> Option<u32>;

/// How requests are parsed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions {
    /// Size limits.
    pub limits: Limits,
    /// Resolves named IPv6 zones in endpoints. `wg` sends link-local endpoints as
    /// `[fe80::1%eth0]:port` (from `getnameinfo`); a numeric zone (`%2`) always works.
    /// Without a resolver, or when it fails, a named zone is accepted and dropped
    /// (scope id 0), which is what wireguard-go's `get` then shows too.
    pub resolve_scope: Option<ScopeResolver>,
}

/// A parsed UAPI request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get=1` followed by the empty line.
    Get,
    /// `set=1` followed by `key=value` lines and the empty line.
    Set(SetRequest),
}

/// A `set=1` request, validated and typed. Applying it is [`crate::apply`]'s job.
///
/// When a key repeats, the last value wins, except `allowed_ip`, which accumulates.
/// `replace_peers=true` is a device key, so wireguard-go only accepts it before the first
/// `public_key=`; where it stands among the device keys makes no difference, and it always
/// takes effect before any peer of the request is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetRequest {
    /// `private_key=`: the new private key; all zeros removes the key.
    pub private_key: Option<SecretKey>,
    /// `listen_port=`: the new port; 0 picks a random one.
    pub listen_port: Option<u16>,
    /// `fwmark=`: the new mark; 0 turns it off.
    pub fwmark: Option<u32>,
    /// `replace_peers=true`: remove every peer before applying `peers`.
    pub replace_peers: bool,
    /// One entry per `public_key=` line, in request order (a key may appear twice).
    pub peers: Vec<PeerChange>,
}

/// What one `public_key=` section asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChange {
    /// `public_key=`: which peer.
    pub public_key: PublicKey,
    /// `remove=true`: delete the peer; the section's other keys then have no effect.
    pub remove: bool,
    /// `update_only=true`: if the peer does not exist, do nothing instead of creating it.
    pub update_only: bool,
    /// `preshared_key=`: the new PSK; all zeros removes it.
    pub preshared_key: Option<PresharedKey>,
    /// `endpoint=`: an IP literal and port (`1.2.3.4:51820`, `[fe80::1]:51820`).
    pub endpoint: Option<SocketAddr>,
    /// `persistent_keepalive_interval=`: seconds, 0 turns it off.
    pub persistent_keepalive_interval: Option<u16>,
    /// `replace_allowed_ips=true`: drop the peer's allowed IPs before adding `allowed_ips`.
    /// As in wireguard-go, it also discards `allowed_ip` lines that came before it in the
    /// same section.
    pub replace_allowed_ips: bool,
    /// `allowed_ip=` lines, in order, as sent (host bits are cleared when applied).
    pub allowed_ips: Vec<IpNet>,
    /// `protocol_version=`: only 1 exists.
    pub protocol_version: Option<u32>,
}

impl PeerChange {
    /// A section with only `public_key=`: creates the peer if it does not exist.
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive_interval: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
            protocol_version: None,
        }
    }
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A `get` answer as [`crate::write_get`] produced it (ends with `errno=0` and the
    /// empty line). It holds the private key and PSKs, so it zeroizes on drop.
    Get(Zeroizing<String>),
    /// A `set` that succeeded: `errno=0`.
    SetOk,
    /// A failed request: `errno=-N`.
    Error(Errno),
}

impl Response {
    /// The answer for a failed request, or `None` where wireguard-go closes without one.
    pub fn for_error(error: &UapiError) -> Option<Self> {
        error.errno().map(Response::Error)
    }

    /// The bytes to send.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        match self {
            Response::Get(text) => Zeroizing::new(text.as_bytes().to_vec()),
            Response::SetOk => Zeroizing::new(b"errno=0\n\n".to_vec()),
            Response::Error(errno) => {
                Zeroizing::new(format!("errno={}\n\n", errno.wire_value()).into_bytes())
            }
        }
    }
}

/// The operation line of a `get` request.
pub const GET_OPERATION: &[u8] = b"get=1";
/// The operation line of a `set` request.
pub const SET_OPERATION: &[u8] = b"set=1";

/// Parses one set request line by line: the incremental core that both
/// [`parse_request`] and [`crate::server::read_request`] drive.
#[derive(Debug)]
pub struct SetParser {
    options: ParseOptions,
    request: SetRequest,
    line: usize,
    bytes: usize,
    allowed_ips: usize,
    done: bool,
}

impl SetParser {
    /// A parser that has consumed the `set=1` line (line 1).
    pub fn new(options: ParseOptions) -> Self {
        Self {
            options,
            request: SetRequest::default(),
            line: 1,
            bytes: SET_OPERATION.len() + 1,
            allowed_ips: 0,
            done: false,
        }
    }

    /// The number of the last line fed (1 for the operation line).
    pub fn line(&self) -> usize {
        self.line
    }

    /// Feeds one line without its `\n` (a trailing `\r` is dropped, as Go's line scanner
    /// does). Returns `Ok(true)` when this was the empty line that ends the request. A
    /// line after the end is an error.
    pub fn feed_line(&mut self, raw: &[u8]) -> Result<bool, UapiError> {
        if self.done {
            return Err(UapiError::TrailingData);
        }
        self.line += 1;
        let line = self.line;
        let limits = self.options.limits;
        if raw.len() > limits.max_line_len {
            return Err(UapiError::LineTooLong {
                line,
                limit: limits.max_line_len,
            });
        }
        self.bytes = self.bytes.saturating_add(raw.len() + 1);
        if self.bytes > limits.max_request_bytes {
            return Err(UapiError::RequestTooLarge {
                limit: limits.max_request_bytes,
            });
        }
        let text = raw.strip_suffix(b"\r").unwrap_or(raw);
        if text.is_empty() {
            self.done = true;
            return Ok(true);
        }
        let Some(eq) = text.iter().position(|&b| b == b'=') else {
            return Err(UapiError::MissingSeparator { line });
        };
        let (key, value) = (&text[..eq], &text[eq + 1..]);

        if key == b"public_key" {
            if self.request.peers.len() >= limits.max_peers {
                return Err(UapiError::TooManyPeers {
                    limit: limits.max_peers,
                });
            }
            let bytes = decode_key_hex(value).ok_or(UapiError::InvalidValue {
                line,
                key: "public_key",
            })?;
            self.request.peers.push(PeerChange::new(PublicKey(*bytes)));
            return Ok(false);
        }
        let resolve = self.options.resolve_scope;
        match self.request.peers.last_mut() {
            None => device_line(&mut self.request, line, key, value),
            Some(peer) => peer_line(
                peer,
                line,
                key,
                value,
                resolve,
                &mut self.allowed_ips,
                limits.max_allowed_ips,
            ),
        }
        .map(|()| false)
    }

    /// The request parsed so far. Input may end at a line boundary without the empty line,
    /// as wireguard-go accepts; the caller decides whether it ended mid-line.
    pub fn finish(self) -> SetRequest {
        self.request
    }
}

const DEVICE_KEYS: [&str; 4] = ["private_key", "listen_port", "fwmark", "replace_peers"];
const PEER_KEYS: [&str; 9] = [
    "public_key",
    "remove",
    "update_only",
    "preshared_key",
    "endpoint",
    "persistent_keepalive_interval",
    "replace_allowed_ips",
    "allowed_ip",
    "protocol_version",
];

fn misplaced_or_unknown(line: usize, section: Section, key: &[u8]) -> UapiError {
    let other: &[&'static str] = match section {
        Section::Device => &PEER_KEYS,
        Section::Peer => &DEVICE_KEYS,
    };
    match other.iter().find(|k| k.as_bytes() == key) {
        Some(known) => UapiError::KeyOutOfContext {
            line,
            section,
            key: known,
        },
        None => UapiError::UnknownKey {
            line,
            section,
            key: KeyName::new(key),
        },
    }
}

fn device_line(
    request: &mut SetRequest,
    line: usize,
    key: &[u8],
    value: &[u8],
) -> Result<(), UapiError> {
    match key {
        b"private_key" => {
            let bytes = decode_key_hex(value).ok_or(UapiError::InvalidValue {
                line,
                key: "private_key",
            })?;
            request.private_key = Some(SecretKey::from_bytes(*bytes));
        }
        b"listen_port" => {
            let port =
                parse_decimal(value, u64::from(u16::MAX)).ok_or(UapiError::InvalidValue {
                    line,
                    key: "listen_port",
                })?;
            request.listen_port = u16::try_from(port).ok();
        }
        b"fwmark" => {
            let mark =
                parse_decimal(value, u64::from(u32::MAX)).ok_or(UapiError::InvalidValue {
                    line,
                    key: "fwmark",
                })?;
            request.fwmark = u32::try_from(mark).ok();
        }
        b"replace_peers" => {
            expect_true(value, line, "replace_peers")?;
            request.replace_peers = true;
        }
        _ => return Err(misplaced_or_unknown(line, Section::Device, key)),
    }
    Ok(())
}

fn peer_line(
    peer: &mut PeerChange,
    line: usize,
    key: &[u8],
    value: &[u8],
    resolve: Option<ScopeResolver>,
    allowed_ips_seen: &mut usize,
    max_allowed_ips: usize,
) -> Result<(), UapiError> {
    match key {
        b"remove" => {
            expect_true(value, line, "remove")?;
            peer.remove = true;
        }
        b"update_only" => {
            expect_true(value, line, "update_only")?;
            peer.update_only = true;
        }
        b"preshared_key" => {
            let bytes = decode_key_hex(value).ok_or(UapiError::InvalidValue {
                line,
                key: "preshared_key",
            })?;
            peer.preshared_key = Some(PresharedKey::from_bytes(*bytes));
        }
        b"endpoint" => {
            peer.endpoint = Some(parse_endpoint(value, resolve).ok_or(
                UapiError::InvalidValue {
                    line,
                    key: "endpoint",
                },
            )?);
        }
        b"persistent_keepalive_interval" => {
            let secs =
                parse_decimal(value, u64::from(u16::MAX)).ok_or(UapiError::InvalidValue {
                    line,
                    key: "persistent_keepalive_interval",
                })?;
            peer.persistent_keepalive_interval = u16::try_from(secs).ok();
        }
        b"replace_allowed_ips" => {
            expect_true(value, line, "replace_allowed_ips")?;
            peer.replace_allowed_ips = true;
            peer.allowed_ips.clear();
        }
        b"allowed_ip" => {
            if *allowed_ips_seen >= max_allowed_ips {
                return Err(UapiError::TooManyAllowedIps {
                    limit: max_allowed_ips,
                });
            }
            let net = parse_prefix(value).ok_or(UapiError::InvalidValue {
                line,
                key: "allowed_ip",
            })?;
            *allowed_ips_seen += 1;
            peer.allowed_ips.push(net);
        }
        b"protocol_version" => {
            if value != b"1" {
                return Err(UapiError::InvalidValue {
                    line,
                    key: "protocol_version",
                });
            }
            peer.protocol_version = Some(1);
        }
        _ => return Err(misplaced_or_unknown(line, Section::Peer, key)),
    }
    Ok(())
}

fn expect_true(value: &[u8], line: usize, key: &'static str) -> Result<(), UapiError> {
    if value == b"true" {
        Ok(())
    } else {
        Err(UapiError::InvalidValue { line, key })
    }
}

/// Go's `strconv.ParseUint(s, 10, bits)`: ASCII digits only (no sign, no spaces, leading
/// zeros allowed), at most `max`.
pub(crate) fn parse_decimal(value: &[u8], max: u64) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        if n > max {
            return None;
        }
    }
    Some(n)
}

/// Go's `netip.ParseAddrPort`: `a.b.c.d:port` or `[ipv6(%zone)]:port`; no host names.
pub(crate) fn parse_endpoint(value: &[u8], resolve: Option<ScopeResolver>) -> Option<SocketAddr> {
    let text = std::str::from_utf8(value).ok()?;
    if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        let port = u16::try_from(parse_decimal(port.as_bytes(), u64::from(u16::MAX))?).ok()?;
        let (addr, zone) = match host.split_once('%') {
            Some((addr, zone)) => (addr, Some(zone)),
            None => (host, None),
        };
        let ip: Ipv6Addr = addr.parse().ok()?;
        let scope_id = match zone {
            None => 0,
            Some("") => return None,
            Some(zone) if zone.bytes().all(|b| b.is_ascii_digit()) => {
                u32::try_from(parse_decimal(zone.as_bytes(), u64::from(u32::MAX))?).ok()?
            }
            Some(zone) => resolve.and_then(|f| f(zone)).unwrap_or(0),
        };
        Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope_id)))
    } else {
        let (host, port) = text.rsplit_once(':')?;
        let port = u16::try_from(parse_decimal(port.as_bytes(), u64::from(u16::MAX))?).ok()?;
        let ip: Ipv4Addr = host.parse().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
    }
}

/// Go's `netip.ParsePrefix`: an address without zone, `/`, and a decimal length without
/// sign or leading zeros that fits the family. Host bits are kept here.
pub(crate) fn parse_prefix(value: &[u8]) -> Option<IpNet> {
    let text = std::str::from_utf8(value).ok()?;
    let (addr, bits) = text.rsplit_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if bits.len() > 1 && bits.starts_with('0') {
        return None;
    }
    let bits = u8::try_from(parse_decimal(bits.as_bytes(), 128)?).ok()?;
    IpNet::new(addr, bits).ok()
}

/// Parses one complete request from `text` with the default options.
pub fn parse_request(text: &[u8]) -> Result<Request, UapiError> {
    parse_request_with(text, &ParseOptions::default())
}

/// Parses one complete request from `text`: exactly one request, nothing after it.
///
/// A `set` request may end at a line boundary without its empty line (wireguard-go applies
/// such input); one that ends in the middle of a line is [`UapiError::Truncated`] and
/// applies nothing, where wireguard-go would apply the fragment.
pub fn parse_request_with(text: &[u8], options: &ParseOptions) -> Result<Request, UapiError> {
    let Some(nl) = text.iter().position(|&b| b == b'\n') else {
        return Err(UapiError::UnknownOperation);
    };
    let (op, mut rest) = (&text[..nl], &text[nl + 1..]);
    if op == GET_OPERATION {
        return match rest {
            [] => Err(UapiError::IncompleteGet),
            [b'\n'] => Ok(Request::Get),
            [b'\n', ..] => Err(UapiError::TrailingData),
            _ => Err(UapiError::GetNotTerminated),
        };
    }
    if op != SET_OPERATION {
        return Err(UapiError::UnknownOperation);
    }
    let mut parser = SetParser::new(*options);
    while !rest.is_empty() {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            // The unfinished line still counts against the limits first.
            if rest.len() > options.limits.max_line_len {
                return Err(UapiError::LineTooLong {
                    line: parser.line() + 1,
                    limit: options.limits.max_line_len,
                });
            }
            return Err(UapiError::Truncated {
                line: parser.line() + 1,
            });
        };
        if parser.feed_line(&rest[..nl])? {
            if nl + 1 != rest.len() {
                return Err(UapiError::TrailingData);
            }
            break;
        }
        rest = &rest[nl + 1..];
    }
    Ok(Request::Set(parser.finish()))
}

/// Serializes a request the way `wg(8)` does: `set=1`, device keys, one section per peer,
/// the empty line. The text holds keys, so it zeroizes on drop. Client side: only with the
/// `client` feature.
#[cfg(feature = "client")]
pub fn write_set(request: &SetRequest) -> Zeroizing<String> {
    let mut capacity = 160 + request.peers.len() * 400;
    for peer in &request.peers {
        capacity += peer.allowed_ips.len() * 64;
    }
    let mut out = Zeroizing::new(String::with_capacity(capacity));
    let o: &mut String = &mut out;
    o.push_str("set=1\n");
    if let Some(key) = &request.private_key {
        o.push_str("private_key=");
        push_key_hex(o, key.expose_secret());
        o.push('\n');
    }
    if let Some(port) = request.listen_port {
        o.push_str(&format!("listen_port={port}\n"));
    }
    if let Some(mark) = request.fwmark {
        o.push_str(&format!("fwmark={mark}\n"));
    }
    if request.replace_peers {
        o.push_str("replace_peers=true\n");
    }
    for peer in &request.peers {
        o.push_str("public_key=");
        push_key_hex(o, peer.public_key.as_bytes());
        o.push('\n');
        if peer.remove {
            o.push_str("remove=true\n");
        }
        if peer.update_only {
            o.push_str("update_only=true\n");
        }
        if let Some(psk) = &peer.preshared_key {
            o.push_str("preshared_key=");
            push_key_hex(o, psk.expose_secret());
            o.push('\n');
        }
        if let Some(endpoint) = peer.endpoint {
            o.push_str(&format!("endpoint={endpoint}\n"));
        }
        if let Some(secs) = peer.persistent_keepalive_interval {
            o.push_str(&format!("persistent_keepalive_interval={secs}\n"));
        }
        if peer.replace_allowed_ips {
            o.push_str("replace_allowed_ips=true\n");
        }
        for net in &peer.allowed_ips {
            o.push_str(&format!("allowed_ip={net}\n"));
        }
        if let Some(version) = peer.protocol_version {
            o.push_str(&format!("protocol_version={version}\n"));
        }
    }
    o.push('\n');
    out
}

#[cfg(feature = "client")]
impl SetRequest {
    /// The request that turns any device into `config` (`wg setconf` semantics:
    /// `replace_peers=true`, then every peer with all its fields). Client side: only with
    /// the `client` feature.
    pub fn from_config(config: &crate::DeviceConfig) -> Self {
        Self {
            private_key: Some(
                config
                    .private_key
                    .clone()
                    .unwrap_or_else(|| SecretKey::from_bytes([0; wg_wire::KEY_LEN])),
            ),
            listen_port: Some(config.listen_port),
            fwmark: Some(config.fwmark),
            replace_peers: true,
            peers: config
                .peers
                .iter()
                .map(|p| PeerChange {
                    preshared_key: Some(p.preshared_key.clone().unwrap_or_default()),
                    endpoint: p.endpoint,
                    persistent_keepalive_interval: Some(p.persistent_keepalive_interval),
                    replace_allowed_ips: true,
                    allowed_ips: p.allowed_ips.clone(),
                    protocol_version: Some(1),
                    ..PeerChange::new(p.public_key)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::keys::{psk_is_zero, push_key_hex};

    const K1: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
    const K2: &str = "B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2";

    fn set(body: &str) -> Result<SetRequest, UapiError> {
        match parse_request(format!("set=1\n{body}\n").as_bytes())? {
            Request::Set(s) => Ok(s),
            Request::Get => panic!("not a set"),
        }
    }

    fn errno_of(body: &str) -> Errno {
        set(body).unwrap_err().errno().unwrap()
    }

    #[test]
    fn get_request() {
        assert_eq!(parse_request(b"get=1\n\n").unwrap(), Request::Get);
        assert!(matches!(
            parse_request(b"get=1\nx"),
            Err(UapiError::GetNotTerminated)
        ));
        assert_eq!(
            parse_request(b"get=1\nx").unwrap_err().errno(),
            Some(Errno::Invalid)
        );
        assert!(matches!(
            parse_request(b"get=1\n"),
            Err(UapiError::IncompleteGet)
        ));
        assert!(matches!(
            parse_request(b"get=1\n\nget=1\n\n"),
            Err(UapiError::TrailingData)
        ));
    }

    #[test]
    fn unknown_operations_get_no_answer() {
        for text in [
            &b"bogus=1\n\n"[..],
            b"get=2\n\n",
            b"set=1\r\n\n",
            b"GET=1\n\n",
            b"",
            b"get=1",
        ] {
            let err = parse_request(text).unwrap_err();
            assert!(matches!(err, UapiError::UnknownOperation), "{text:?}");
            assert_eq!(err.errno(), None);
        }
    }

    #[test]
    fn every_device_key() {
        let s = set(&format!(
            "private_key={K1}\nlisten_port=51820\nfwmark=4294967295\nreplace_peers=true\n"
        ))
        .unwrap();
        assert_eq!(s.private_key.unwrap().expose_secret(), &[0xa1; 32]);
        assert_eq!(s.listen_port, Some(51820));
        assert_eq!(s.fwmark, Some(u32::MAX));
        assert!(s.replace_peers);
        assert!(s.peers.is_empty());
    }

    #[test]
    fn every_peer_key() {
        let s = set(&format!(
            "public_key={K1}\nupdate_only=true\npreshared_key={K2}\nendpoint=192.0.2.1:51820\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.0.1/24\n\
             allowed_ip=fd00::/64\nprotocol_version=1\npublic_key={K2}\nremove=true\n"
        ))
        .unwrap();
        assert_eq!(s.peers.len(), 2);
        let p = &s.peers[0];
        assert_eq!(p.public_key, PublicKey([0xa1; 32]));
        assert!(p.update_only && !p.remove && p.replace_allowed_ips);
        assert_eq!(
            p.preshared_key.as_ref().unwrap().expose_secret(),
            &[0xb2; 32]
        );
        assert_eq!(p.endpoint, Some("192.0.2.1:51820".parse().unwrap()));
        assert_eq!(p.persistent_keepalive_interval, Some(25));
        assert_eq!(
            p.allowed_ips,
            vec![
                "10.0.0.1/24".parse::<IpNet>().unwrap(),
                "fd00::/64".parse().unwrap()
            ]
        );
        assert_eq!(p.protocol_version, Some(1));
        assert!(s.peers[1].remove);
    }

    #[test]
    fn repeated_keys_last_wins_and_allowed_ips_accumulate() {
        let s = set(&format!(
            "listen_port=1\nlisten_port=2\npublic_key={K1}\nendpoint=1.1.1.1:1\n\
             endpoint=2.2.2.2:2\nallowed_ip=1.0.0.0/8\nallowed_ip=2.0.0.0/8\n"
        ))
        .unwrap();
        assert_eq!(s.listen_port, Some(2));
        assert_eq!(s.peers[0].endpoint, Some("2.2.2.2:2".parse().unwrap()));
        assert_eq!(s.peers[0].allowed_ips.len(), 2);
    }

    #[test]
    fn replace_allowed_ips_discards_earlier_lines_of_its_section() {
        let s = set(&format!(
            "public_key={K1}\nallowed_ip=1.0.0.0/8\nreplace_allowed_ips=true\nallowed_ip=2.0.0.0/8\n"
        ))
        .unwrap();
        assert_eq!(s.peers[0].allowed_ips, vec!["2.0.0.0/8".parse().unwrap()]);
        assert!(s.peers[0].replace_allowed_ips);
    }

    #[test]
    fn zero_keys_are_kept_for_apply_to_interpret() {
        let zero = "0".repeat(64);
        let s = set(&format!(
            "private_key={zero}\npublic_key={K1}\npreshared_key={zero}\n"
        ))
        .unwrap();
        assert!(s.private_key.unwrap().is_zero());
        assert!(psk_is_zero(s.peers[0].preshared_key.as_ref().unwrap()));
    }

    #[test]
    fn numbers_follow_go_parse_uint() {
        assert_eq!(set("listen_port=0051820").unwrap().listen_port, Some(51820));
        assert_eq!(set("listen_port=0").unwrap().listen_port, Some(0));
        assert_eq!(set("listen_port=65535").unwrap().listen_port, Some(65535));
        assert_eq!(set("fwmark=0").unwrap().fwmark, Some(0));
        for bad in [
            "listen_port=65536",
            "listen_port=+5",
            "listen_port=-1",
            "listen_port= 5",
            "listen_port=5 ",
            "listen_port=",
            "listen_port=0x10",
            "fwmark=4294967296",
            "fwmark=1e3",
        ] {
            assert_eq!(errno_of(bad), Errno::Invalid, "{bad}");
        }
        assert_eq!(
            errno_of(&format!(
                "public_key={K1}\npersistent_keepalive_interval=65536"
            )),
            Errno::Invalid
        );
    }

    #[test]
    fn booleans_must_be_exactly_true() {
        for bad in [
            "replace_peers=false",
            "replace_peers=TRUE",
            "replace_peers=",
        ] {
            assert_eq!(errno_of(bad), Errno::Invalid, "{bad}");
        }
        for key in ["remove", "update_only", "replace_allowed_ips"] {
            assert_eq!(
                errno_of(&format!("public_key={K1}\n{key}=1")),
                Errno::Invalid
            );
        }
    }

    #[test]
    fn keys_must_be_64_hex_digits() {
        for bad in [
            "a".repeat(63),
            "a".repeat(65),
            format!("{}g", "a".repeat(63)),
            format!(" {}", "a".repeat(63)),
            String::new(),
        ] {
            for key in ["private_key", "public_key"] {
                assert_eq!(errno_of(&format!("{key}={bad}")), Errno::Invalid);
            }
            assert_eq!(
                errno_of(&format!("public_key={K1}\npreshared_key={bad}")),
                Errno::Invalid
            );
        }
    }

    #[test]
    fn endpoints_are_ip_literals() {
        let ep = |v: &str| parse_endpoint(v.as_bytes(), None);
        assert_eq!(ep("1.2.3.4:51820"), Some("1.2.3.4:51820".parse().unwrap()));
        assert_eq!(
            ep("[fe80::1]:51820"),
            Some("[fe80::1]:51820".parse().unwrap())
        );
        assert_eq!(
            ep("[::ffff:1.2.3.4]:1"),
            Some("[::ffff:1.2.3.4]:1".parse().unwrap())
        );
        assert_eq!(ep("1.2.3.4:051820"), Some("1.2.3.4:51820".parse().unwrap()));
        let scoped = ep("[fe80::1%3]:7").unwrap();
        assert!(matches!(scoped, SocketAddr::V6(v6) if v6.scope_id() == 3));
        let named = ep("[fe80::1%eth0]:7").unwrap();
        assert!(matches!(named, SocketAddr::V6(v6) if v6.scope_id() == 0));
        let resolved = parse_endpoint(b"[fe80::1%eth0]:7", Some(|n| (n == "eth0").then_some(9)));
        assert!(matches!(resolved, Some(SocketAddr::V6(v6)) if v6.scope_id() == 9));
        for bad in [
            "example.com:51820",
            "localhost:1",
            "fe80::1:51820",
            "[1.2.3.4]:1",
            "[fe80::1%]:1",
            "1.2.3.4",
            "1.2.3.4:",
            "1.2.3.4:65536",
            "1.2.3.4:+1",
            "01.2.3.4:1",
            "[fe80::1]",
            "[fe80::1]:",
            " 1.2.3.4:1",
        ] {
            assert_eq!(ep(bad), None, "{bad}");
        }
        assert_eq!(
            errno_of(&format!("public_key={K1}\nendpoint=host.example:51820")),
            Errno::Invalid
        );
    }

    #[test]
    fn prefixes_follow_go_parse_prefix() {
        let p = |v: &str| parse_prefix(v.as_bytes());
        assert_eq!(p("10.0.0.1/24"), Some("10.0.0.1/24".parse().unwrap()));
        assert_eq!(p("0.0.0.0/0"), Some("0.0.0.0/0".parse().unwrap()));
        assert_eq!(p("::/0"), Some("::/0".parse().unwrap()));
        assert_eq!(
            p("::ffff:1.2.3.4/128"),
            Some("::ffff:1.2.3.4/128".parse().unwrap())
        );
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "::/129",
            "10.0.0.1/024",
            "10.0.0.1/+24",
            "10.0.0.1/",
            "fe80::1%eth0/64",
            "/24",
            "10.0.0.1/24/",
            "10.0.0.01/24",
            "host/24",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn protocol_version_must_be_one() {
        assert_eq!(
            set(&format!("public_key={K1}\nprotocol_version=1"))
                .unwrap()
                .peers[0]
                .protocol_version,
            Some(1)
        );
        for bad in ["0", "2", "01", ""] {
            assert_eq!(
                errno_of(&format!("public_key={K1}\nprotocol_version={bad}")),
                Errno::Invalid
            );
        }
    }

    #[test]
    fn unknown_and_misplaced_keys_are_einval() {
        let err = set("foo=bar").unwrap_err();
        assert!(matches!(
            &err,
            UapiError::UnknownKey { line: 2, section: Section::Device, key } if key.as_str() == Some("foo")
        ));
        assert_eq!(err.errno(), Some(Errno::Invalid));
        let err = set("endpoint=1.2.3.4:5").unwrap_err();
        assert!(matches!(
            err,
            UapiError::KeyOutOfContext {
                line: 2,
                section: Section::Device,
                key: "endpoint"
            }
        ));
        let err = set(&format!("public_key={K1}\nlisten_port=5")).unwrap_err();
        assert!(matches!(
            err,
            UapiError::KeyOutOfContext {
                line: 3,
                section: Section::Peer,
                key: "listen_port"
            }
        ));
        assert_eq!(
            errno_of(&format!("public_key={K1}\nbogus=1")),
            Errno::Invalid
        );
        assert_eq!(errno_of("=5"), Errno::Invalid);
        assert_eq!(errno_of("errno=0"), Errno::Invalid);
        // A line that is all hex is never echoed into an error message.
        let err = set(&format!("{K1}=1")).unwrap_err();
        assert!(!err.to_string().contains("a1a1"), "{err}");
    }

    #[test]
    fn malformed_lines_are_eproto() {
        assert_eq!(errno_of("noequals"), Errno::Protocol);
        let err = parse_request(b"set=1\nlisten_port=5").unwrap_err();
        assert!(matches!(err, UapiError::Truncated { line: 2 }));
        assert_eq!(err.errno(), Some(Errno::Protocol));
        assert!(matches!(
            parse_request(b"set=1\n\nx"),
            Err(UapiError::TrailingData)
        ));
    }

    #[test]
    fn end_of_input_at_a_line_boundary_ends_a_set() {
        let Request::Set(s) = parse_request(b"set=1\nfwmark=8\n").unwrap() else {
            panic!()
        };
        assert_eq!(s.fwmark, Some(8));
        assert_eq!(
            parse_request(b"set=1\n").unwrap(),
            Request::Set(SetRequest::default())
        );
        assert_eq!(
            parse_request(b"set=1\n\n").unwrap(),
            Request::Set(SetRequest::default())
        );
    }

    #[test]
    fn crlf_lines_are_accepted_like_go_scanner() {
        // The operation line is compared exactly (Go's ReadString); key lines lose one
        // trailing '\r' (Go's ScanLines).
        assert!(matches!(
            parse_request(b"set=1\r\n\n"),
            Err(UapiError::UnknownOperation)
        ));
        let Request::Set(s) = parse_request(b"set=1\nfwmark=7\r\n\r\n").unwrap() else {
            panic!()
        };
        assert_eq!(s.fwmark, Some(7));
    }

    #[test]
    fn limits_are_enforced() {
        let small = ParseOptions {
            limits: Limits {
                max_line_len: 100,
                max_request_bytes: 1000,
                max_peers: 2,
                max_allowed_ips: 3,
            },
            resolve_scope: None,
        };
        let parse = |t: String| parse_request_with(t.as_bytes(), &small);

        let long = format!("set=1\nlisten_port={}1\n\n", "0".repeat(100));
        let err = parse(long).unwrap_err();
        assert!(matches!(
            err,
            UapiError::LineTooLong {
                line: 2,
                limit: 100
            }
        ));
        assert_eq!(err.errno(), Some(Errno::Io));
        // An over-long unterminated line is reported as too long, not as truncated.
        assert!(matches!(
            parse(format!("set=1\n{}", "x".repeat(101))),
            Err(UapiError::LineTooLong { .. })
        ));

        let many = format!("set=1\n{}\n", "fwmark=1\n".repeat(120));
        let err = parse(many).unwrap_err();
        assert!(matches!(err, UapiError::RequestTooLarge { limit: 1000 }));
        assert_eq!(err.errno(), Some(Errno::Io));

        let peers = format!("set=1\npublic_key={K1}\npublic_key={K2}\npublic_key={K1}\n\n");
        let err = parse(peers).unwrap_err();
        assert!(matches!(err, UapiError::TooManyPeers { limit: 2 }));
        assert_eq!(err.errno(), Some(Errno::Invalid));

        let ips = format!(
            "set=1\npublic_key={K1}\nallowed_ip=1.0.0.0/8\nallowed_ip=2.0.0.0/8\n\
             public_key={K2}\nallowed_ip=3.0.0.0/8\nallowed_ip=4.0.0.0/8\n\n"
        );
        let err = parse(ips).unwrap_err();
        assert!(matches!(err, UapiError::TooManyAllowedIps { limit: 3 }));
        assert_eq!(err.errno(), Some(Errno::Invalid));
    }

    #[test]
    fn default_peer_limit_matches_wireguard_go() {
        let mut text = String::from("set=1\n");
        for i in 0..=Limits::DEFAULT.max_peers as u32 {
            text.push_str("public_key=");
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            push_key_hex(&mut text, &key);
            text.push('\n');
        }
        text.push('\n');
        assert!(matches!(
            parse_request(text.as_bytes()),
            Err(UapiError::TooManyPeers { limit: 65536 })
        ));
    }

    #[cfg(feature = "client")]
    #[test]
    fn write_set_round_trips() {
        let s = set(&format!(
            "private_key={K1}\nlisten_port=5\nfwmark=6\nreplace_peers=true\npublic_key={K2}\n\
             update_only=true\npreshared_key={K1}\nendpoint=[fd00::2]:9\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.0.1/24\n\
             protocol_version=1\npublic_key={K1}\nremove=true\n"
        ))
        .unwrap();
        let text = write_set(&s);
        assert_eq!(parse_request(text.as_bytes()).unwrap(), Request::Set(s));
    }

    #[test]
    fn responses() {
        assert_eq!(&Response::SetOk.to_bytes()[..], b"errno=0\n\n");
        assert_eq!(
            &Response::Error(Errno::Invalid).to_bytes()[..],
            b"errno=-22\n\n"
        );
        assert_eq!(
            Response::for_error(&UapiError::MissingSeparator { line: 2 }),
            Some(Response::Error(Errno::Protocol))
        );
        assert_eq!(Response::for_error(&UapiError::UnknownOperation), None);
    }

    #[test]
    fn debug_output_never_shows_keys() {
        let s = set(&format!(
            "private_key={K1}\npublic_key={K2}\npreshared_key={K1}\n"
        ))
        .unwrap();
        let shown = format!("{s:?}").to_lowercase();
        assert!(!shown.contains("a1, ") && !shown.contains("161"), "{shown}");
        assert!(!shown.contains("a1a1"), "{shown}");
    }
}
