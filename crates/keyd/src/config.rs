//! How a UAPI `set` becomes the current configuration, the handshake oracle's state and
//! the messages that tell a data plane what changed: sans-IO, shared by the key process's
//! service and the in-process tunnel (`wg-tunnel`), so both apply a configuration by the
//! same rules.
//!
//! The flow: [`apply`] validates a request against the current configuration (all or
//! nothing; nothing changes yet), the caller does whatever the request needs besides
//! (rebinding sockets for a new listen port, setting a fwmark) and, if that worked,
//! [`commit`] makes the result current: the oracle's identity and peers are updated and
//! the [`KeydToDatad`] messages for the data plane are returned.

use wg_messages::messages::KeydToDatad;
use wg_uapi::{Applied, DeviceConfig, Limits, SecretKey, SetRequest, UapiError};
use wg_wire::PresharedKey;
use zeroize::Zeroizing;

use crate::handshakes::{Handshakes, LocalIdentity, peer_update};

/// The identity of a configured private key.
pub fn identity_of(key: &SecretKey) -> LocalIdentity {
    LocalIdentity::from_private_bytes(Zeroizing::new(*key.expose_secret()))
}

/// Applies `request` to `current` with the default limits, deriving our public key from
/// the new private key ([`wg_uapi::apply_detailed`]): the new configuration and what
/// changed, or an error and no change.
pub fn apply(current: &DeviceConfig, request: &SetRequest) -> Result<Applied, UapiError> {
    wg_uapi::apply_detailed(
        current,
        request,
        |key| *identity_of(key).public_key(),
        &Limits::DEFAULT,
    )
}

/// Whether `applied` needs the UDP sockets changed before it can be committed: a listen
/// port the request set to another value than `current`'s (0 always asks for a new random
/// one), or another fwmark.
pub fn needs_sockets(current: &DeviceConfig, request: &SetRequest, applied: &Applied) -> bool {
    let port_changes =
        request.listen_port.is_some() && applied.config.listen_port != current.listen_port;
    port_changes || applied.config.fwmark != current.fwmark
}

/// Makes a validated configuration current: updates `handshakes` (identity, peers, PSKs)
/// and returns what the data plane must be told, in order.
pub fn commit(
    config: &mut DeviceConfig,
    handshakes: &mut Handshakes,
    applied: Applied,
) -> Vec<KeydToDatad> {
    let Applied {
        config: new_config,
        diff,
    } = applied;
    let mut out = Vec::new();
    if diff.private_key_changed {
        handshakes.set_identity(new_config.private_key.as_ref().map(identity_of));
        out.push(KeydToDatad::Interface {
            public_key: handshakes.public_key(),
        });
        // As the kernel and wireguard-go: sessions made with the old identity stop
        // sending at once, so a replaced key stops carrying traffic.
        out.push(KeydToDatad::ExpireSessions);
    }
    for key in &diff.peers_removed {
        handshakes.remove_peer(key);
        out.push(KeydToDatad::RemovePeer { public_key: *key });
    }
    let psk_of =
        |p: &wg_uapi::PeerConfig| p.preshared_key.clone().unwrap_or_else(PresharedKey::zero);
    // With a new identity every peer needs handshake state made with it.
    for peer in &new_config.peers {
        let added = diff.peers_added.contains(&peer.public_key);
        let changed = diff
            .peers_changed
            .iter()
            .find(|d| d.public_key == peer.public_key);
        if added || diff.private_key_changed || changed.is_some_and(|d| d.preshared_key) {
            handshakes.upsert_peer(peer.public_key, psk_of(peer));
        }
        let data_plane_change =
            changed.is_some_and(|d| d.endpoint || d.allowed_ips || d.persistent_keepalive_interval);
        if added || data_plane_change {
            // The configured endpoint goes out only when it was set now: a learned
            // (roamed) endpoint must survive unrelated changes.
            let endpoint = if added || changed.is_some_and(|d| d.endpoint) {
                peer.endpoint
            } else {
                None
            };
            out.extend(peer_update(
                peer.public_key,
                endpoint,
                peer.allowed_ips.clone(),
                peer.persistent_keepalive_interval,
            ));
        }
    }
    *config = new_config;
    out
}

/// The whole configuration for a data plane that knows nothing yet (after its hello):
/// the interface key, then every peer.
pub fn full_configuration(config: &DeviceConfig, handshakes: &Handshakes) -> Vec<KeydToDatad> {
    let mut out = vec![KeydToDatad::Interface {
        public_key: handshakes.public_key(),
    }];
    out.extend(config.peers.iter().flat_map(|p| {
        peer_update(
            p.public_key,
            p.endpoint,
            p.allowed_ips.clone(),
            p.persistent_keepalive_interval,
        )
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wg_uapi::{PeerChange, Request};
    use wg_wire::PublicKey;

    fn public(seed: u8) -> PublicKey {
        *identity_of(&SecretKey::from_bytes([seed; 32])).public_key()
    }

    fn set(text: &str) -> SetRequest {
        match wg_uapi::parse_request(text.as_bytes()) {
            Ok(Request::Set(s)) => s,
            other => panic!("not a set: {other:?}"),
        }
    }

    #[test]
    fn a_new_key_and_peer_reach_the_oracle_and_the_data_plane() {
        let mut config = DeviceConfig::default();
        let mut hs = Handshakes::new();
        let peer = public(2);
        let mut request = SetRequest {
            private_key: Some(SecretKey::from_bytes([1; 32])),
            listen_port: Some(51820),
            ..SetRequest::default()
        };
        let mut change = PeerChange::new(peer);
        change.endpoint = Some("192.0.2.2:51820".parse().unwrap());
        change.allowed_ips = vec!["10.0.0.2/32".parse().unwrap()];
        request.peers.push(change);
        let applied = apply(&config, &request).unwrap();
        assert!(needs_sockets(&config, &request, &applied));
        let out = commit(&mut config, &mut hs, applied);
        assert_eq!(hs.public_key(), Some(public(1)));
        assert!(hs.peer(&peer).is_some());
        assert_eq!(config.listen_port, 51820);
        assert!(matches!(
            out.as_slice(),
            [
                KeydToDatad::Interface { public_key: Some(k) },
                KeydToDatad::ExpireSessions,
                KeydToDatad::Peer(update),
            ] if *k == public(1) && update.public_key == peer && update.endpoint.is_some()
        ));
        // An unrelated change does not send the configured endpoint again (a learned one
        // must survive it); removing the peer reaches both.
        let applied = apply(
            &config,
            &set(&format!(
                "set=1\npublic_key={}\npersistent_keepalive_interval=25\n\n",
                hex(&peer)
            )),
        )
        .unwrap();
        let out = commit(&mut config, &mut hs, applied);
        assert!(matches!(
            out.as_slice(),
            [KeydToDatad::Peer(update)] if update.endpoint.is_none() && update.persistent_keepalive == 25
        ));
        let request = set(&format!(
            "set=1\npublic_key={}\nremove=true\n\n",
            hex(&peer)
        ));
        let applied = apply(&config, &request).unwrap();
        assert!(!needs_sockets(&config, &request, &applied));
        let out = commit(&mut config, &mut hs, applied);
        assert!(
            matches!(out.as_slice(), [KeydToDatad::RemovePeer { public_key }] if *public_key == peer)
        );
        assert!(hs.peer(&peer).is_none());
        assert!(config.peers.is_empty());
    }

    fn hex(key: &PublicKey) -> String {
        key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }
}
