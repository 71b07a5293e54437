//! Parsers for what `wg` prints: `wg show IF dump` and `wg showconf IF`.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

/// Decodes a base64 key as `wg` prints it and encodes it as lowercase hex, as the UAPI
/// protocol carries keys.
pub fn base64_to_hex(s: &str) -> Result<String> {
    let val = |c: u8| -> Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("invalid base64 character {:?} in {s:?}", c as char),
        })
    };
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.trim().trim_end_matches('=').bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push_str(&format!("{:02x}", (acc >> bits) & 0xff));
        }
    }
    Ok(out)
}

/// `wg show IF dump`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    /// Interface private key (base64).
    pub private_key: String,
    /// Interface public key.
    pub public_key: String,
    /// Listen port.
    pub listen_port: u16,
    /// Firewall mark (`off` is 0).
    pub fwmark: u32,
    /// Peers in the order `wg` printed them.
    pub peers: Vec<DumpPeer>,
}

/// One peer line of `wg show IF dump`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpPeer {
    /// Public key.
    pub public_key: String,
    /// Preshared key, `None` for `(none)`.
    pub preshared_key: Option<String>,
    /// Endpoint, `None` for `(none)`.
    pub endpoint: Option<String>,
    /// Allowed IPs.
    pub allowed_ips: Vec<String>,
    /// Latest handshake, seconds since the epoch (0: never).
    pub latest_handshake: u64,
    /// Bytes received.
    pub rx: u64,
    /// Bytes sent.
    pub tx: u64,
    /// Persistent keepalive interval (0: off).
    pub keepalive: u16,
}

fn none(s: &str) -> Option<String> {
    (s != "(none)").then(|| s.to_owned())
}

fn off(s: &str) -> Result<u64> {
    if s == "off" {
        Ok(0)
    } else {
        s.parse().with_context(|| format!("bad number {s:?}"))
    }
}

impl Dump {
    /// Parses the output of `wg show IF dump`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().context("empty `wg show dump` output")?;
        let f: Vec<&str> = first.split('\t').collect();
        if f.len() != 4 {
            bail!(
                "interface line of `wg show dump` has {} fields: {first:?}",
                f.len()
            );
        }
        let mut dump = Self {
            private_key: f[0].to_owned(),
            public_key: f[1].to_owned(),
            listen_port: f[2]
                .parse()
                .with_context(|| format!("listen port {:?}", f[2]))?,
            fwmark: u32::try_from(off(f[3])?)?,
            peers: Vec::new(),
        };
        for line in lines {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 8 {
                bail!(
                    "peer line of `wg show dump` has {} fields: {line:?}",
                    f.len()
                );
            }
            dump.peers.push(DumpPeer {
                public_key: f[0].to_owned(),
                preshared_key: none(f[1]),
                endpoint: none(f[2]),
                allowed_ips: if f[3] == "(none)" {
                    Vec::new()
                } else {
                    f[3].split(',').map(str::to_owned).collect()
                },
                latest_handshake: f[4]
                    .parse()
                    .with_context(|| format!("handshake {:?}", f[4]))?,
                rx: f[5].parse().with_context(|| format!("rx {:?}", f[5]))?,
                tx: f[6].parse().with_context(|| format!("tx {:?}", f[6]))?,
                keepalive: u16::try_from(off(f[7])?)?,
            });
        }
        Ok(dump)
    }

    /// The peer with public key `key`.
    pub fn peer(&self, key: &str) -> Result<&DumpPeer> {
        self.peers
            .iter()
            .find(|p| p.public_key == key)
            .with_context(|| format!("no peer {key} in `wg show dump`: {self:#?}"))
    }
}

/// A WireGuard configuration as `wg setconf` reads and `wg showconf` writes it, normalised
/// for comparison: keys compared case-insensitively, peers keyed by public key, allowed
/// IPs as a sorted set, numbers parsed (`FwMark = 0x10` equals `FwMark = 16`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conf {
    /// `[Interface]` entries: lowercase key → normalised value.
    pub interface: BTreeMap<String, String>,
    /// `[Peer]` sections by public key: lowercase key → normalised values.
    pub peers: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl Conf {
    /// Parses a configuration file text.
    pub fn parse(text: &str) -> Result<Self> {
        enum Section {
            None,
            Interface,
            Peer(BTreeMap<String, Vec<String>>),
        }
        let mut conf = Self::default();
        let mut section = Section::None;
        let finish = |conf: &mut Self, section: Section| -> Result<()> {
            if let Section::Peer(mut p) = section {
                let key = p
                    .remove("publickey")
                    .and_then(|v| v.into_iter().next())
                    .context("[Peer] without PublicKey")?;
                if let Some(ips) = p.get_mut("allowedips") {
                    ips.sort();
                    ips.dedup();
                }
                if conf.peers.insert(key.clone(), p).is_some() {
                    bail!("peer {key} appears twice");
                }
            }
            Ok(())
        };
        for raw in text.lines() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                let old = std::mem::replace(&mut section, Section::None);
                finish(&mut conf, old)?;
                section = match line.to_ascii_lowercase().as_str() {
                    "[interface]" => Section::Interface,
                    "[peer]" => Section::Peer(BTreeMap::new()),
                    other => bail!("unknown section {other}"),
                };
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .with_context(|| format!("line without '=': {raw:?}"))?;
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim();
            match &mut section {
                Section::None => bail!("{k} outside a section"),
                Section::Interface => {
                    let v = normalise(&k, v)?;
                    conf.interface.insert(k, v);
                }
                Section::Peer(p) => {
                    let entry = p.entry(k.clone()).or_default();
                    if k == "allowedips" {
                        entry.extend(
                            v.split(',')
                                .map(str::trim)
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned),
                        );
                    } else {
                        entry.push(normalise(&k, v)?);
                    }
                }
            }
        }
        finish(&mut conf, section)?;
        Ok(conf)
    }
}

fn normalise(key: &str, value: &str) -> Result<String> {
    Ok(match key {
        "fwmark" => {
            let n = if value == "off" {
                0
            } else if let Some(hex) = value.strip_prefix("0x") {
                u32::from_str_radix(hex, 16).with_context(|| format!("FwMark {value}"))?
            } else {
                value.parse().with_context(|| format!("FwMark {value}"))?
            };
            n.to_string()
        }
        "listenport" | "persistentkeepalive" => {
            let n: u32 = if value == "off" {
                0
            } else {
                value.parse().with_context(|| format!("{key} {value}"))?
            };
            n.to_string()
        }
        _ => value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_keys() -> Result<()> {
        assert_eq!(base64_to_hex("AAECAw==")?, "00010203");
        assert_eq!(
            base64_to_hex("YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=")?,
            "61".repeat(32)
        );
        Ok(())
    }

    #[test]
    fn parses_dump() -> Result<()> {
        let text = "cHJpdg==\tcHVi\t51820\toff\n\
            cGVlcg==\t(none)\t10.0.0.2:51821\t10.77.0.2/32,fd77::2/128\t1700000000\t1234\t5678\toff\n";
        let d = Dump::parse(text)?;
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.fwmark, 0);
        let p = d.peer("cGVlcg==")?;
        assert_eq!(p.endpoint.as_deref(), Some("10.0.0.2:51821"));
        assert_eq!(p.allowed_ips, ["10.77.0.2/32", "fd77::2/128"]);
        assert_eq!(
            (p.latest_handshake, p.rx, p.tx, p.keepalive),
            (1_700_000_000, 1234, 5678, 0)
        );
        assert!(p.preshared_key.is_none());
        Ok(())
    }

    #[test]
    fn conf_is_order_insensitive() -> Result<()> {
        let a = Conf::parse(
            "[Interface]\nPrivateKey = k\nListenPort = 1\nFwMark = 16\n\
             [Peer]\nPublicKey = p1\nAllowedIPs = 10.0.0.1/32, fd00::/64\n\
             [Peer]\nPublicKey = p2\nAllowedIPs = 10.0.0.2/32\nAllowedIPs = 10.0.0.3/32\n",
        )?;
        let b = Conf::parse(
            "[Interface]\nlistenport = 1\nfwmark = 0x10\nprivatekey = k\n\
             [Peer]\nPublicKey = p2\nAllowedIPs = 10.0.0.3/32,10.0.0.2/32\n\
             [Peer]\nPublicKey = p1\nAllowedIPs = fd00::/64,10.0.0.1/32\n",
        )?;
        assert_eq!(a, b);
        let c = Conf::parse("[Interface]\nPrivateKey = k\n[Peer]\nPublicKey = p1\n")?;
        assert_ne!(a, c);
        Ok(())
    }
}
