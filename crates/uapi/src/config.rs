//! The device configuration model, the atomic `set`, and configuration diffs (sans I/O).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use ipnet::IpNet;
use wg_wire::{PresharedKey, PublicKey};

use crate::error::UapiError;
use crate::keys::{SecretKey, psk_is_zero};
use crate::protocol::{Limits, SetRequest};

/// What `wg showconf` shows: the configured state of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The static private key (stored clamped), if any.
    pub private_key: Option<SecretKey>,
    /// The UDP port; 0 until bound. The daemon should store the port it actually bound
    /// (wireguard-go reports the kernel-chosen port after `listen_port=0`).
    pub listen_port: u16,
    /// The fwmark of outgoing packets; 0 is off.
    pub fwmark: u32,
    /// Peers in the order they were first added, as `wg` shows them.
    pub peers: Vec<PeerConfig>,
}

impl DeviceConfig {
    /// The peer with this public key.
    pub fn peer(&self, public_key: &PublicKey) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.public_key == *public_key)
    }
}

/// The configured state of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's identity.
    pub public_key: PublicKey,
    /// The pre-shared key, if one is set.
    pub preshared_key: Option<PresharedKey>,
    /// The configured endpoint (the data plane may learn a newer one by roaming).
    pub endpoint: Option<SocketAddr>,
    /// Seconds between keepalives; 0 is off.
    pub persistent_keepalive_interval: u16,
    /// Allowed IPs with host bits cleared, in the order they were added (re-adding one
    /// moves it to the end, as in wireguard-go). No prefix belongs to two peers.
    pub allowed_ips: Vec<IpNet>,
}

impl PeerConfig {
    /// A peer with nothing but its key.
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive_interval: 0,
            allowed_ips: Vec::new(),
        }
    }
}

/// What changed between two configurations, for the data plane.
///
/// Allowed IPs are compared as sets: their display order is not the data plane's concern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// The private key differs (all sessions must be renegotiated).
    pub private_key_changed: bool,
    /// The listen port differs (rebind).
    pub listen_port_changed: bool,
    /// The fwmark differs.
    pub fwmark_changed: bool,
    /// Peers to tear down, in their old order. Apply removals before additions: a peer that
    /// a request removed (or `replace_peers` dropped) and created again is listed in both.
    pub peers_removed: Vec<PublicKey>,
    /// Peers to create, in their new order.
    pub peers_added: Vec<PublicKey>,
    /// Peers that stay but changed, in their new order.
    pub peers_changed: Vec<PeerDiff>,
}

impl ConfigDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.private_key_changed
            && !self.listen_port_changed
            && !self.fwmark_changed
            && self.peers_removed.is_empty()
            && self.peers_added.is_empty()
            && self.peers_changed.is_empty()
    }
}

/// Which fields of one kept peer changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDiff {
    /// The peer.
    pub public_key: PublicKey,
    /// Its PSK was set, changed or removed.
    pub preshared_key: bool,
    /// Its configured endpoint changed.
    pub endpoint: bool,
    /// Its keepalive interval changed (turning it on calls for an immediate keepalive).
    pub persistent_keepalive_interval: bool,
    /// Its set of allowed IPs changed.
    pub allowed_ips: bool,
}

/// The result of [`apply_detailed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The new configuration.
    pub config: DeviceConfig,
    /// How it differs from the old one, including peers re-created by the request.
    pub diff: ConfigDiff,
}

/// Applies a `set` request to `current` and returns the new configuration, or an error and
/// no change at all. Uses [`Limits::DEFAULT`]; see [`apply_detailed`] for the rules.
pub fn apply(
    current: &DeviceConfig,
    request: &SetRequest,
    own_public_key: impl Fn(&SecretKey) -> PublicKey,
) -> Result<DeviceConfig, UapiError> {
    apply_detailed(current, request, own_public_key, &Limits::DEFAULT).map(|a| a.config)
}

/// Applies a `set` request as wireguard-go and `wg(8)` define it, all or nothing.
///
/// In order:
/// 1. `private_key`: all zeros removes the key; any other key is stored clamped.
///    `listen_port` and `fwmark` replace the old values.
/// 2. `replace_peers` removes every peer. Then a peer whose public key is the device's
///    own (derived by `own_public_key` from the new private key) is removed, as
///    wireguard-go does when the private key changes.
/// 3. Each [`crate::PeerChange`] in order: a section for our own public key is ignored;
///    `remove` deletes the peer; a missing peer is created unless `update_only`; a zero
///    PSK removes the PSK; `replace_allowed_ips` clears the peer's allowed IPs; each
///    allowed IP (host bits cleared) moves to this peer from whichever peer had it.
/// 4. Limits: at most `max_peers` peers and `max_allowed_ips` allowed IPs in the result.
///
/// Differences from wireguard-go, which applies line by line: nothing is applied when any
/// part fails; and the lines of a section that `remove` or `update_only` discards (or that
/// `replace_allowed_ips` clears) do not first take allowed IPs away from other peers.
pub fn apply_detailed(
    current: &DeviceConfig,
    request: &SetRequest,
    own_public_key: impl Fn(&SecretKey) -> PublicKey,
    limits: &Limits,
) -> Result<Applied, UapiError> {
    validate(request, limits)?;

    let private_key = match &request.private_key {
        None => current.private_key.clone().filter(|k| !k.is_zero()),
        Some(k) if k.is_zero() => None,
        Some(k) => Some(k.clamped()),
    };
    let own = private_key.as_ref().map(&own_public_key);

    let mut work = Work::new(if request.replace_peers {
        &[]
    } else {
        &current.peers[..]
    });
    if let Some(own) = &own {
        work.remove_peer(own);
    }

    for change in &request.peers {
        if own.as_ref() == Some(&change.public_key) {
            continue;
        }
        if change.remove {
            work.remove_peer(&change.public_key);
            continue;
        }
        let slot = match work.by_key.get(&change.public_key) {
            Some(&slot) => slot,
            None if change.update_only => continue,
            None => work.add_peer(change.public_key),
        };
        if let Some(peer) = work.slots.get_mut(slot).and_then(Option::as_mut) {
            if let Some(psk) = &change.preshared_key {
                peer.config.preshared_key = (!psk_is_zero(psk)).then(|| psk.clone());
            }
            if let Some(endpoint) = change.endpoint {
                peer.config.endpoint = Some(endpoint);
            }
            if let Some(secs) = change.persistent_keepalive_interval {
                peer.config.persistent_keepalive_interval = secs;
            }
        }
        if change.replace_allowed_ips {
            work.clear_ips(slot);
        }
        for net in &change.allowed_ips {
            work.insert_ip(slot, net.trunc());
        }
    }

    let dropped = std::mem::take(&mut work.removed);
    let peers = work.finish(limits)?;
    let config = DeviceConfig {
        private_key,
        listen_port: request.listen_port.unwrap_or(current.listen_port),
        fwmark: request.fwmark.unwrap_or(current.fwmark),
        peers,
    };

    // A peer that was dropped (by replace_peers or remove) and created again is a new peer
    // to wireguard-go and the kernel: fresh sessions, zeroed counters.
    let mut diff = diff(current, &config);
    let old_keys: HashSet<PublicKey> = current.peers.iter().map(|p| p.public_key).collect();
    let new_keys: HashSet<PublicKey> = config.peers.iter().map(|p| p.public_key).collect();
    let recreated: HashSet<PublicKey> = old_keys
        .iter()
        .filter(|k| new_keys.contains(*k) && (request.replace_peers || dropped.contains(*k)))
        .copied()
        .collect();
    if !recreated.is_empty() {
        diff.peers_changed
            .retain(|p| !recreated.contains(&p.public_key));
        diff.peers_removed = current
            .peers
            .iter()
            .map(|p| p.public_key)
            .filter(|k| !new_keys.contains(k) || recreated.contains(k))
            .collect();
        diff.peers_added = config
            .peers
            .iter()
            .map(|p| p.public_key)
            .filter(|k| !old_keys.contains(k) || recreated.contains(k))
            .collect();
    }
    Ok(Applied { config, diff })
}

fn validate(request: &SetRequest, limits: &Limits) -> Result<(), UapiError> {
    if request.peers.len() > limits.max_peers {
        return Err(UapiError::TooManyPeers {
            limit: limits.max_peers,
        });
    }
    let mut ips = 0usize;
    for peer in &request.peers {
        if peer.protocol_version.is_some_and(|v| v != 1) {
            return Err(UapiError::InvalidRequest {
                reason: "protocol_version must be 1",
            });
        }
        ips = ips.saturating_add(peer.allowed_ips.len());
    }
    if ips > limits.max_allowed_ips {
        return Err(UapiError::TooManyAllowedIps {
            limit: limits.max_allowed_ips,
        });
    }
    Ok(())
}

/// One peer while a request is being applied; its allowed IPs live in [`Work::owner`].
struct Slot {
    config: PeerConfig,
    ips: HashSet<IpNet>,
}

/// The working copy `apply` mutates; the caller's configuration is never touched.
struct Work {
    /// Peers in insertion order; a removed peer leaves `None`.
    slots: Vec<Option<Slot>>,
    by_key: HashMap<PublicKey, usize>,
    /// Which slot owns each prefix, and when it was (re)added, for display order.
    owner: HashMap<IpNet, (usize, u64)>,
    next_seq: u64,
    /// Keys removed at some point of this request (a later section may re-create them).
    removed: HashSet<PublicKey>,
}

impl Work {
    fn new(peers: &[PeerConfig]) -> Self {
        let mut work = Self {
            slots: Vec::with_capacity(peers.len()),
            by_key: HashMap::with_capacity(peers.len()),
            owner: HashMap::new(),
            next_seq: 0,
            removed: HashSet::new(),
        };
        for peer in peers {
            if work.by_key.contains_key(&peer.public_key) {
                continue;
            }
            let slot = work.add_peer(peer.public_key);
            if let Some(s) = work.slots.get_mut(slot).and_then(Option::as_mut) {
                s.config = PeerConfig {
                    allowed_ips: Vec::new(),
                    ..peer.clone()
                };
            }
            for net in &peer.allowed_ips {
                work.insert_ip(slot, net.trunc());
            }
        }
        work
    }

    fn add_peer(&mut self, key: PublicKey) -> usize {
        let slot = self.slots.len();
        self.slots.push(Some(Slot {
            config: PeerConfig::new(key),
            ips: HashSet::new(),
        }));
        self.by_key.insert(key, slot);
        slot
    }

    fn remove_peer(&mut self, key: &PublicKey) {
        if let Some(slot) = self.by_key.remove(key) {
            self.clear_ips(slot);
            if let Some(s) = self.slots.get_mut(slot) {
                *s = None;
            }
            self.removed.insert(*key);
        }
    }

    fn clear_ips(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) {
            for net in s.ips.drain() {
                self.owner.remove(&net);
            }
        }
    }

    fn insert_ip(&mut self, slot: usize, net: IpNet) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some((previous, _)) = self.owner.insert(net, (slot, seq))
            && previous != slot
            && let Some(p) = self.slots.get_mut(previous).and_then(Option::as_mut)
        {
            p.ips.remove(&net);
        }
        if let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) {
            s.ips.insert(net);
        }
    }

    fn finish(self, limits: &Limits) -> Result<Vec<PeerConfig>, UapiError> {
        let live = self.slots.iter().flatten().count();
        if live > limits.max_peers {
            return Err(UapiError::TooManyPeers {
                limit: limits.max_peers,
            });
        }
        if self.owner.len() > limits.max_allowed_ips {
            return Err(UapiError::TooManyAllowedIps {
                limit: limits.max_allowed_ips,
            });
        }
        let owner = self.owner;
        Ok(self
            .slots
            .into_iter()
            .flatten()
            .map(|slot| {
                let mut ips: Vec<(u64, IpNet)> = slot
                    .ips
                    .into_iter()
                    .map(|net| (owner.get(&net).map_or(0, |&(_, seq)| seq), net))
                    .collect();
                ips.sort_unstable_by_key(|&(seq, _)| seq);
                PeerConfig {
                    allowed_ips: ips.into_iter().map(|(_, net)| net).collect(),
                    ..slot.config
                }
            })
            .collect())
    }
}

/// What differs between `old` and `new`, peer by peer (by public key).
pub fn diff(old: &DeviceConfig, new: &DeviceConfig) -> ConfigDiff {
    let old_peers: HashMap<&PublicKey, &PeerConfig> =
        old.peers.iter().map(|p| (&p.public_key, p)).collect();
    let new_keys: HashSet<&PublicKey> = new.peers.iter().map(|p| &p.public_key).collect();

    let peers_removed = old
        .peers
        .iter()
        .map(|p| p.public_key)
        .filter(|k| !new_keys.contains(k))
        .collect();
    let mut peers_added = Vec::new();
    let mut peers_changed = Vec::new();
    for peer in &new.peers {
        let Some(before) = old_peers.get(&peer.public_key) else {
            peers_added.push(peer.public_key);
            continue;
        };
        let ips_before: HashSet<&IpNet> = before.allowed_ips.iter().collect();
        let ips_after: HashSet<&IpNet> = peer.allowed_ips.iter().collect();
        let change = PeerDiff {
            public_key: peer.public_key,
            preshared_key: before.preshared_key != peer.preshared_key,
            endpoint: before.endpoint != peer.endpoint,
            persistent_keepalive_interval: before.persistent_keepalive_interval
                != peer.persistent_keepalive_interval,
            allowed_ips: ips_before != ips_after,
        };
        if change.preshared_key
            || change.endpoint
            || change.persistent_keepalive_interval
            || change.allowed_ips
        {
            peers_changed.push(change);
        }
    }
    ConfigDiff {
        private_key_changed: old.private_key != new.private_key,
        listen_port_changed: old.listen_port != new.listen_port,
        fwmark_changed: old.fwmark != new.fwmark,
        peers_removed,
        peers_added,
        peers_changed,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::protocol::{Request, parse_request};

    /// A stand-in for X25519: our "public key" is the (clamped) private key's bytes.
    fn own(key: &SecretKey) -> PublicKey {
        PublicKey(*key.expose_secret())
    }

    fn hex(b: u8) -> String {
        format!("{b:02x}").repeat(32)
    }

    fn pk(b: u8) -> PublicKey {
        PublicKey([b; 32])
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn set(body: &str) -> SetRequest {
        match parse_request(format!("set=1\n{body}\n").as_bytes()).unwrap() {
            Request::Set(s) => s,
            Request::Get => panic!(),
        }
    }

    fn run(current: &DeviceConfig, body: &str) -> DeviceConfig {
        apply(current, &set(body), own).unwrap()
    }

    /// Two peers: 0x01 with 10.0.0.0/24 and 10.9.0.0/16, 0x02 with fd00::/64.
    fn base() -> DeviceConfig {
        run(
            &DeviceConfig::default(),
            &format!(
                "private_key={}\nlisten_port=51820\npublic_key={}\nallowed_ip=10.0.0.1/24\n\
                 allowed_ip=10.9.0.0/16\npublic_key={}\nendpoint=[fd00::2]:51820\n\
                 allowed_ip=fd00::/64\n",
                hex(0x50),
                hex(1),
                hex(2)
            ),
        )
    }

    #[test]
    fn builds_a_config_with_normalized_allowed_ips() {
        let c = base();
        assert_eq!(c.private_key, Some(SecretKey::from_bytes([0x50; 32])));
        assert_eq!(c.listen_port, 51820);
        assert_eq!(c.fwmark, 0);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[0].public_key, pk(1));
        assert_eq!(
            c.peers[0].allowed_ips,
            vec![net("10.0.0.0/24"), net("10.9.0.0/16")]
        );
        assert_eq!(
            c.peers[1].endpoint,
            Some("[fd00::2]:51820".parse().unwrap())
        );
        assert_eq!(c.peers[1].allowed_ips, vec![net("fd00::/64")]);
    }

    #[test]
    fn a_failing_request_changes_nothing() {
        let before = base();
        let snapshot = before.clone();
        // The third peer section is invalid: the whole request is rejected before apply.
        let text = format!(
            "set=1\nlisten_port=1\nreplace_peers=true\npublic_key={}\npublic_key={}\n\
             public_key={}\nendpoint=nonsense\n\n",
            hex(7),
            hex(8),
            hex(9)
        );
        assert!(parse_request(text.as_bytes()).is_err());
        // A request that parses but breaks a device limit fails in apply, also whole.
        let limits = Limits {
            max_peers: 3,
            ..Limits::DEFAULT
        };
        let req = set(&format!(
            "listen_port=1\npublic_key={}\npublic_key={}\nremove=true\npublic_key={}\n",
            hex(7),
            hex(1),
            hex(8)
        ));
        assert!(apply_detailed(&before, &req, own, &limits).is_ok());
        let req = set(&format!(
            "listen_port=1\npublic_key={}\npublic_key={}\n",
            hex(7),
            hex(8)
        ));
        let err = apply_detailed(&before, &req, own, &limits).unwrap_err();
        assert!(matches!(err, UapiError::TooManyPeers { limit: 3 }));
        assert_eq!(before, snapshot);
        let limits = Limits {
            max_allowed_ips: 3,
            ..Limits::DEFAULT
        };
        let req = set(&format!("public_key={}\nallowed_ip=1.0.0.0/8\n", hex(7)));
        assert!(matches!(
            apply_detailed(&before, &req, own, &limits),
            Err(UapiError::TooManyAllowedIps { limit: 3 })
        ));
    }

    #[test]
    fn hand_built_requests_are_validated() {
        let mut req = SetRequest::default();
        let mut change = crate::PeerChange::new(pk(3));
        change.protocol_version = Some(2);
        req.peers.push(change);
        let err = apply(&base(), &req, own).unwrap_err();
        assert_eq!(err.errno(), Some(crate::Errno::Invalid));
    }

    #[test]
    fn absent_device_keys_keep_their_values() {
        let c = run(&base(), "fwmark=5");
        assert_eq!(c.listen_port, 51820);
        assert_eq!(c.fwmark, 5);
        assert_eq!(c.private_key, base().private_key);
        assert_eq!(c.peers, base().peers);
        assert_eq!(run(&c, "fwmark=0").fwmark, 0);
    }

    #[test]
    fn private_key_is_clamped_and_zero_removes_it() {
        let c = run(
            &DeviceConfig::default(),
            &format!("private_key={}", hex(0xff)),
        );
        let stored = c.private_key.clone().unwrap();
        assert_eq!(stored.expose_secret()[0], 0xf8);
        assert_eq!(stored.expose_secret()[31], 0x7f);
        let c = run(&c, &format!("private_key={}", hex(0)));
        assert_eq!(c.private_key, None);
    }

    #[test]
    fn replace_peers_drops_every_peer_first() {
        let c = run(
            &base(),
            &format!(
                "replace_peers=true\npublic_key={}\nallowed_ip=10.0.0.0/24\n",
                hex(3)
            ),
        );
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].public_key, pk(3));
        assert_eq!(c.peers[0].allowed_ips, vec![net("10.0.0.0/24")]);
        // With no peer sections it empties the device.
        assert!(run(&base(), "replace_peers=true").peers.is_empty());
    }

    #[test]
    fn remove_deletes_a_peer_and_frees_its_allowed_ips() {
        let c = run(&base(), &format!("public_key={}\nremove=true\n", hex(1)));
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].public_key, pk(2));
        // Removing an unknown peer is not an error.
        assert_eq!(
            run(&base(), &format!("public_key={}\nremove=true", hex(9))),
            base()
        );
        // A later section for the same key creates it again, at the end.
        let c = run(
            &base(),
            &format!(
                "public_key={}\nremove=true\npublic_key={}\nallowed_ip=10.0.0.0/24\n",
                hex(1),
                hex(1)
            ),
        );
        assert_eq!(c.peers[1].public_key, pk(1));
        assert_eq!(c.peers[1].allowed_ips, vec![net("10.0.0.0/24")]);
    }

    #[test]
    fn update_only_never_creates() {
        let c = run(
            &base(),
            &format!(
                "public_key={}\nupdate_only=true\nallowed_ip=10.0.0.0/24\n\
                 public_key={}\nupdate_only=true\npersistent_keepalive_interval=25\n",
                hex(9),
                hex(2)
            ),
        );
        assert_eq!(c.peers.len(), 2);
        assert!(c.peer(&pk(9)).is_none());
        // The skipped section did not take 10.0.0.0/24 away from peer 1.
        assert_eq!(c.peers[0].allowed_ips, base().peers[0].allowed_ips);
        assert_eq!(c.peers[1].persistent_keepalive_interval, 25);
    }

    #[test]
    fn replace_allowed_ips_clears_before_adding() {
        let c = run(
            &base(),
            &format!(
                "public_key={}\nreplace_allowed_ips=true\nallowed_ip=192.168.0.0/16\n",
                hex(1)
            ),
        );
        assert_eq!(c.peers[0].allowed_ips, vec![net("192.168.0.0/16")]);
        let c = run(
            &base(),
            &format!("public_key={}\nreplace_allowed_ips=true\n", hex(1)),
        );
        assert!(c.peers[0].allowed_ips.is_empty());
        // Without it, allowed IPs accumulate.
        let c = run(
            &base(),
            &format!("public_key={}\nallowed_ip=192.168.0.0/16\n", hex(1)),
        );
        assert_eq!(c.peers[0].allowed_ips.len(), 3);
    }

    #[test]
    fn an_allowed_ip_moves_between_peers() {
        let c = run(
            &base(),
            &format!("public_key={}\nallowed_ip=10.0.0.77/24\n", hex(2)),
        );
        assert_eq!(c.peers[0].allowed_ips, vec![net("10.9.0.0/16")]);
        assert_eq!(
            c.peers[1].allowed_ips,
            vec![net("fd00::/64"), net("10.0.0.0/24")]
        );
        // A different prefix length is a different entry.
        let c = run(
            &base(),
            &format!("public_key={}\nallowed_ip=10.0.0.0/25\n", hex(2)),
        );
        assert_eq!(c.peers[0].allowed_ips.len(), 2);
        // Re-adding an entry to its own peer moves it to the end, as in wireguard-go.
        let c = run(
            &base(),
            &format!("public_key={}\nallowed_ip=10.0.0.0/24\n", hex(1)),
        );
        assert_eq!(
            c.peers[0].allowed_ips,
            vec![net("10.9.0.0/16"), net("10.0.0.0/24")]
        );
        // Moving within one request, several times.
        let c = run(
            &base(),
            &format!(
                "public_key={}\nallowed_ip=10.9.0.0/16\npublic_key={}\nallowed_ip=10.9.0.0/16\n",
                hex(2),
                hex(3)
            ),
        );
        assert_eq!(c.peers[0].allowed_ips, vec![net("10.0.0.0/24")]);
        assert_eq!(c.peers[1].allowed_ips, vec![net("fd00::/64")]);
        assert_eq!(c.peers[2].allowed_ips, vec![net("10.9.0.0/16")]);
    }

    #[test]
    fn our_own_public_key_is_never_a_peer() {
        // A section for our own key is ignored silently.
        let c = run(
            &base(),
            &format!("public_key={}\nallowed_ip=10.0.0.0/24\n", hex(0x50)),
        );
        assert_eq!(c, base());
        // (0x48 bytes are unchanged by clamping, so this key's "public key" is 0x48 too.)
        // Changing the private key to that of an existing peer removes that peer; the
        // new key is in force for the sections of the same request.
        let c = run(
            &base(),
            &format!(
                "private_key={}\npublic_key={}\nendpoint=1.2.3.4:5\npublic_key={}\n",
                hex(0x48),
                hex(0x48),
                hex(0x50)
            ),
        );
        assert!(c.peer(&pk(0x48)).is_none());
        assert!(c.peer(&pk(0x50)).is_some());
        let mut with_peer = base();
        with_peer.peers.push(PeerConfig::new(pk(0x48)));
        let c = run(&with_peer, &format!("private_key={}", hex(0x48)));
        assert!(c.peer(&pk(0x48)).is_none());
        assert_eq!(c.peers.len(), 2);
    }

    #[test]
    fn zero_psk_removes_the_psk() {
        let c = run(
            &base(),
            &format!("public_key={}\npreshared_key={}\n", hex(1), hex(0xaa)),
        );
        assert_eq!(
            c.peers[0].preshared_key,
            Some(PresharedKey::from_bytes([0xaa; 32]))
        );
        let c = run(
            &c,
            &format!("public_key={}\npreshared_key={}\n", hex(1), hex(0)),
        );
        assert_eq!(c.peers[0].preshared_key, None);
    }

    #[test]
    fn diff_lists_what_changed() {
        let old = base();
        let new = run(
            &old,
            &format!(
                "listen_port=1\npublic_key={}\nremove=true\npublic_key={}\n\
                 persistent_keepalive_interval=25\nallowed_ip=10.9.0.0/16\npublic_key={}\n",
                hex(1),
                hex(2),
                hex(3)
            ),
        );
        let d = diff(&old, &new);
        assert!(!d.private_key_changed && d.listen_port_changed && !d.fwmark_changed);
        assert_eq!(d.peers_removed, vec![pk(1)]);
        assert_eq!(d.peers_added, vec![pk(3)]);
        assert_eq!(
            d.peers_changed,
            vec![PeerDiff {
                public_key: pk(2),
                preshared_key: false,
                endpoint: false,
                persistent_keepalive_interval: true,
                allowed_ips: true,
            }]
        );
        assert!(diff(&old, &old).is_empty());
        assert!(!d.is_empty());
    }

    #[cfg(feature = "client")]
    #[test]
    fn apply_reports_recreated_peers() {
        let old = base();
        // setconf-style: replace_peers and the same peers again. Structurally nothing
        // changed, but wireguard-go and the kernel start those peers afresh.
        let req = crate::SetRequest::from_config(&old);
        let applied = apply_detailed(&old, &req, own, &Limits::DEFAULT).unwrap();
        assert_eq!(applied.config, old);
        assert!(diff(&old, &applied.config).is_empty());
        assert_eq!(applied.diff.peers_removed, vec![pk(1), pk(2)]);
        assert_eq!(applied.diff.peers_added, vec![pk(1), pk(2)]);
        assert!(applied.diff.peers_changed.is_empty());
        // remove + re-add of one peer.
        let req = set(&format!(
            "public_key={}\nremove=true\npublic_key={}\nallowed_ip=10.0.0.0/24\n\
             public_key={}\nendpoint=9.9.9.9:9\n",
            hex(1),
            hex(1),
            hex(2)
        ));
        let applied = apply_detailed(&old, &req, own, &Limits::DEFAULT).unwrap();
        assert_eq!(applied.diff.peers_removed, vec![pk(1)]);
        assert_eq!(applied.diff.peers_added, vec![pk(1)]);
        assert_eq!(applied.diff.peers_changed.len(), 1);
        assert_eq!(applied.diff.peers_changed[0].public_key, pk(2));
        assert!(applied.diff.peers_changed[0].endpoint);
    }

    #[cfg(feature = "client")]
    #[test]
    fn from_config_reproduces_the_config() {
        let target = base();
        let other = run(
            &DeviceConfig::default(),
            &format!("fwmark=9\npublic_key={}\nallowed_ip=10.0.0.0/24\n", hex(5)),
        );
        assert_eq!(
            apply(&other, &crate::SetRequest::from_config(&target), own).unwrap(),
            target
        );
    }
}
