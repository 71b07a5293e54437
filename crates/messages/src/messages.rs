//! Every message the processes exchange, one enum per direction. The privileged side of a
//! channel answers a fixed table of requests (see `docs/ipc.md`); anything else is fatal.
//!
//! Wire compatibility: variants and fields may only be appended, never reordered or
//! removed (postcard encodes enum variants by index). Bump [`crate::PROTOCOL_VERSION`]
//! for anything else.

use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wg_wire::PublicKey;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// 32 secret bytes (a transport key). Zeroized on drop, never shown by `Debug`.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(pub [u8; 32]);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(<redacted>)")
    }
}

/// Which process is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The launcher and supervisor.
    Monitor,
    /// The key process.
    Keyd,
    /// The data plane.
    Datad,
    /// The process that starts data planes.
    Spawner,
}

/// First message on every channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// Who the sender is.
    pub role: Role,
}

impl Hello {
    /// Our hello for `role`.
    pub fn new(role: Role) -> Self {
        Self {
            version: crate::PROTOCOL_VERSION,
            role,
        }
    }

    /// Checks a received hello: same version, expected role.
    pub fn check(self, expected: Role) -> Result<(), crate::MessageError> {
        if self.version != crate::PROTOCOL_VERSION {
            return Err(crate::MessageError::Version {
                ours: crate::PROTOCOL_VERSION,
                theirs: self.version,
            });
        }
        if self.role != expected {
            return Err(crate::MessageError::UnexpectedRole {
                expected,
                got: self.role,
            });
        }
        Ok(())
    }
}

/// What the data plane needs to know about a peer: never its PSK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerUpdate {
    /// The peer's identity.
    pub public_key: PublicKey,
    /// Configured endpoint (a learned one replaces it later).
    pub endpoint: Option<SocketAddr>,
    /// Cryptokey routing table entries: all of them, or the first
    /// [`ALLOWED_IPS_PER_MESSAGE`] when `more_allowed_ips` is set.
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive interval in seconds; 0 is off.
    pub persistent_keepalive: u16,
    /// The list continues in [`KeydToDatad::AllowedIps`] messages that follow at once; the
    /// data plane applies the update only when the last one arrived, so traffic never sees
    /// half a routing table.
    pub more_allowed_ips: bool,
}

/// Most allowed IPs one message carries: an encoded prefix takes at most 19 bytes (variant,
/// 16 address bytes, length), so 2,048 of them stay far below [`crate::MAX_MESSAGE_LEN`].
pub const ALLOWED_IPS_PER_MESSAGE: usize = 2048;

/// Most peers one [`DatadToKeyd::Stats`] chunk may carry (an encoded [`PeerStats`] takes
/// at most about 90 bytes).
pub const STATS_PER_MESSAGE: usize = 256;

impl PeerUpdate {
    /// The messages that carry this update, its allowed IPs in chunks of
    /// [`ALLOWED_IPS_PER_MESSAGE`]: any list UAPI accepts fits, however long.
    pub fn into_messages(mut self) -> Vec<KeydToDatad> {
        let rest = if self.allowed_ips.len() > ALLOWED_IPS_PER_MESSAGE {
            self.allowed_ips.split_off(ALLOWED_IPS_PER_MESSAGE)
        } else {
            Vec::new()
        };
        self.more_allowed_ips = !rest.is_empty();
        let public_key = self.public_key;
        let mut out = vec![KeydToDatad::Peer(self)];
        let mut chunks = rest.chunks(ALLOWED_IPS_PER_MESSAGE).peekable();
        while let Some(chunk) = chunks.next() {
            out.push(KeydToDatad::AllowedIps {
                public_key,
                allowed_ips: chunk.to_vec(),
                more: chunks.peek().is_some(),
            });
        }
        out
    }
}

/// Transport keys of a completed handshake.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionKeys {
    /// Which peer.
    pub public_key: PublicKey,
    /// Whether we initiated.
    pub initiator: bool,
    /// The index the peer uses to reach us.
    pub local_index: u32,
    /// The index we use to reach the peer.
    pub remote_index: u32,
    /// Key for sending.
    pub send: SecretBytes,
    /// Key for receiving.
    pub recv: SecretBytes,
    /// Where the authenticated handshake message that made this session came from: the
    /// peer's endpoint from now on (roaming).
    pub endpoint: Option<SocketAddr>,
}

/// Counters of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStats {
    /// Which peer.
    pub public_key: PublicKey,
    /// The current (possibly learned) endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Last completed handshake as Unix seconds and nanoseconds.
    pub last_handshake: Option<(u64, u32)>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// keyd → datad.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KeydToDatad {
    /// First message.
    Hello(Hello),
    /// Our public key (for MAC1 checks and cookies), or `None` without a private key: then
    /// every handshake message is dropped.
    Interface {
        /// The interface's public key.
        public_key: Option<PublicKey>,
    },
    /// Adds or replaces a peer's data-plane configuration.
    Peer(PeerUpdate),
    /// Removes a peer and everything the data plane holds for it.
    RemovePeer {
        /// Which peer.
        public_key: PublicKey,
    },
    /// Installs a session's transport keys.
    Session(SessionKeys),
    /// Sends a handshake message (initiation or response) to a peer.
    SendHandshake {
        /// Which peer.
        public_key: PublicKey,
        /// The message, MACs included.
        message: Vec<u8>,
        /// Where the answered message came from (responses go back there), learned from an
        /// authenticated initiation.
        endpoint: Option<SocketAddr>,
    },
    /// Asks for every peer's counters.
    StatsRequest {
        /// Echoed in the answer.
        request: u32,
    },
    /// Forget every peer (a full resynchronisation follows).
    ClearPeers,
    /// More allowed IPs of the [`KeydToDatad::Peer`] update just sent for this peer.
    AllowedIps {
        /// Which peer (the one of the update in progress).
        public_key: PublicKey,
        /// The next chunk, at most [`ALLOWED_IPS_PER_MESSAGE`].
        allowed_ips: Vec<IpNet>,
        /// Another chunk follows.
        more: bool,
    },
    /// The private key changed: no current keypair may send any more (each peer
    /// re-handshakes with the new identity on its next packet), as the kernel and
    /// wireguard-go expire current keypairs on a key change. Receiving with them still works
    /// until they expire.
    ExpireSessions,
    /// keyd has taken this many more handshake messages ([`DatadToKeyd::is_handshake`]) off
    /// its queue, whether it answered or dropped them. datad's count of those still
    /// waiting is the kernel's handshake queue length: it decides when cookies are
    /// demanded. keyd reports in steps, so up to a step may stay counted.
    HandshakesTaken {
        /// How many since the last report; never more than datad sent.
        count: u32,
    },
}

/// datad → keyd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DatadToKeyd {
    /// First message.
    Hello(Hello),
    /// A handshake initiation or response that passed the MAC checks.
    Handshake {
        /// The message.
        message: Vec<u8>,
        /// Where it came from.
        source: SocketAddr,
    },
    /// A cookie reply answering a handshake message keyd asked datad to send.
    CookieReply {
        /// The 64-byte message.
        message: Vec<u8>,
    },
    /// The timers or outgoing data want a handshake with this peer.
    WantHandshake {
        /// Which peer.
        public_key: PublicKey,
        /// Whether this is a retransmission (keeps the attempt count).
        retry: bool,
    },
    /// 3 x Reject-After-Time passed without a session: erase the handshake state.
    ZeroKeys {
        /// Which peer.
        public_key: PublicKey,
    },
    /// Receiver indices whose keypairs the data plane dropped: free for reuse.
    RetiredIndices {
        /// The indices.
        indices: Vec<u32>,
    },
    /// Part of an answer to [`KeydToDatad::StatsRequest`].
    Stats {
        /// The request this answers.
        request: u32,
        /// A chunk of peers.
        peers: Vec<PeerStats>,
        /// Whether this is the last chunk.
        done: bool,
    },
}

impl DatadToKeyd {
    /// Whether this message is a peer's handshake message (a [`DatadToKeyd::Handshake`] or
    /// [`DatadToKeyd::CookieReply`]): the messages datad queues for keyd on a peer's
    /// behalf, which keyd acknowledges with [`KeydToDatad::HandshakesTaken`].
    pub fn is_handshake(&self) -> bool {
        matches!(self, Self::Handshake { .. } | Self::CookieReply { .. })
    }
}

/// keyd → monitor: the privileged operations keyd may ask for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KeydToMonitor {
    /// First message.
    Hello(Hello),
    /// Change the UDP sockets: bind new ones on `port` (0: any free port) if it differs
    /// from the current one, and set `SO_MARK` to `fwmark` (0: none). All or nothing: on
    /// failure the old sockets stay in use, unchanged.
    Reconfigure {
        /// The wanted listen port.
        port: u16,
        /// The wanted firewall mark.
        fwmark: u32,
    },
    /// The data plane broke the protocol (stalled, did not answer, lied): kill it and start
    /// a new one (floods are not a reason: keyd drops what exceeds its limits). keyd has already closed its channel to it.
    RestartDataPlane {
        /// What it did, for the log.
        reason: Misbehaviour,
        /// Which data plane: 0 for the first, then one more for each
        /// [`MonitorToKeyd::DataPlaneRestarted`]. A request about one that is already
        /// gone (it died and was replaced meanwhile) must not kill its successor.
        generation: u32,
    },
}

/// Why keyd gave up on a data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Misbehaviour {
    /// It stopped reading keyd's messages.
    Stalled,
    /// It did not answer a statistics request in time.
    StatsTimeout,
    /// A message whose content cannot be true (a time beyond the clock's range, more
    /// peers than are configured, an answer to no request).
    Implausible,
}

impl std::fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Misbehaviour::Stalled => "it stopped reading the key process's messages",
            Misbehaviour::StatsTimeout => "it did not answer a statistics request in time",
            Misbehaviour::Implausible => "it sent a message whose content cannot be true",
        })
    }
}

/// monitor → keyd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MonitorToKeyd {
    /// First message.
    Hello(Hello),
    /// Everything to start: fds are the UAPI listener and keyd's end of the keyd↔datad
    /// channel, in that order.
    Start {
        /// The interface name (for logs).
        interface: String,
        /// The UDP port the monitor bound at start-up.
        listen_port: u16,
    },
    /// Result of [`KeydToMonitor::Reconfigure`].
    Reconfigured {
        /// The port now in use (the old one on failure).
        port: u16,
        /// 0 on success, else the errno (EADDRINUSE when the port is taken, EPERM when a
        /// privileged port or the mark is not allowed).
        errno: i32,
    },
    /// A new data plane runs; carries keyd's end of a fresh keyd↔datad channel as its fd.
    DataPlaneRestarted,
}

/// monitor → datad.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MonitorToDatad {
    /// First message.
    Hello(Hello),
    /// Everything to start: fds are TUN, IPv4 UDP, IPv6 UDP (if any) and the keyd channel,
    /// in that order.
    Start {
        /// The bound port.
        listen_port: u16,
        /// Whether an IPv6 socket is included.
        has_ipv6: bool,
        /// Whether to send batches with UDP segmentation offload (`UDP_SEGMENT`).
        udp_gso: bool,
        /// Threads besides the event loop for the AEAD work of a batch.
        crypto_threads: u16,
    },
    /// Replacement UDP sockets (fds: IPv4, then IPv6 if any).
    Sockets {
        /// The bound port.
        listen_port: u16,
        /// Whether an IPv6 socket is included.
        has_ipv6: bool,
    },
    /// The TUN device's MTU, sent after `Start` and whenever it changes (`wg-quick` sets it
    /// after the daemon starts): transport padding must not exceed it.
    Mtu {
        /// The MTU in bytes.
        mtu: u32,
    },
    /// Roaming on (the default) or off: off, a peer with a configured endpoint keeps it
    /// whatever address its packets come from (wireguard-go's
    /// `DisableSomeRoamingForBrokenMobileSemantics`). Sent by the in-process tunnel
    /// (`wg-tunnel` over `wg-embed`) only; the daemon's monitor never sends it. Appended
    /// last: the other variants keep their encoding.
    Roaming {
        /// Whether packets from a new address move a configured endpoint.
        enabled: bool,
    },
}

/// datad → monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DatadToMonitor {
    /// First message.
    Hello(Hello),
    /// The TUN interface was deleted: shut everything down.
    InterfaceGone,
}

/// monitor → spawner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MonitorToSpawner {
    /// First message.
    Hello(Hello),
    /// Start a data plane; the fd is its end of a fresh monitor↔datad channel.
    SpawnDatad,
    /// Kill this data plane. The spawner does it because it is the parent: it has not
    /// reaped the process yet, so the pid cannot have been reused by another.
    KillDatad {
        /// Its process id, as reported in [`SpawnerToMonitor::Spawned`].
        pid: u32,
    },
}

/// spawner → monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SpawnerToMonitor {
    /// First message.
    Hello(Hello),
    /// The data plane runs with this pid.
    Spawned {
        /// Its process id.
        pid: u32,
    },
    /// Starting it failed.
    SpawnFailed {
        /// Why.
        reason: String,
    },
    /// A data plane ended.
    Exited {
        /// Its process id.
        pid: u32,
        /// How it ended ("exit status 1", "killed by SIGKILL").
        status: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MessageError, decode, encode};
    use proptest::prelude::*;

    #[test]
    fn session_keys_are_not_debug_printed() {
        let s = SessionKeys {
            public_key: PublicKey([1; 32]),
            initiator: true,
            local_index: 1,
            remote_index: 2,
            send: SecretBytes([0xab; 32]),
            recv: SecretBytes([0xcd; 32]),
            endpoint: None,
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("171") && !shown.contains("205") && !shown.contains("ab, "));
    }

    #[test]
    fn messages_round_trip() {
        let m = KeydToDatad::Peer(PeerUpdate {
            public_key: PublicKey([9; 32]),
            endpoint: Some("[2001:db8::1]:51820".parse().unwrap()),
            allowed_ips: vec!["10.0.0.0/8".parse().unwrap(), "::/0".parse().unwrap()],
            persistent_keepalive: 25,
            more_allowed_ips: false,
        });
        let back: KeydToDatad = decode(&encode(&m).unwrap()).unwrap();
        assert_eq!(format!("{m:?}"), format!("{back:?}"));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&DatadToKeyd::ZeroKeys {
            public_key: PublicKey([1; 32]),
        })
        .unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<DatadToKeyd>(&bytes),
            Err(MessageError::Trailing(1))
        ));
    }

    #[test]
    fn hello_checks_version_and_role() {
        assert!(Hello::new(Role::Keyd).check(Role::Keyd).is_ok());
        assert!(Hello::new(Role::Keyd).check(Role::Datad).is_err());
        let old = Hello {
            version: 0,
            role: Role::Keyd,
        };
        assert!(matches!(
            old.check(Role::Keyd),
            Err(MessageError::Version { .. })
        ));
    }

    #[test]
    fn the_largest_configuration_uapi_accepts_fits_in_messages() {
        // One peer with UAPI's maximum of allowed IPs, all IPv6 (the longest encoding).
        let max = wg_wire::constants::MAX_ALLOWED_IPS;
        let allowed_ips: Vec<IpNet> = (0..max)
            .map(|i| {
                let a = u128::try_from(i).unwrap() << 64 | u128::MAX >> 64;
                IpNet::V6(ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(a), 128).unwrap())
            })
            .collect();
        let update = PeerUpdate {
            public_key: PublicKey([7; 32]),
            endpoint: Some("[2001:db8::1]:51820".parse().unwrap()),
            allowed_ips: allowed_ips.clone(),
            persistent_keepalive: 25,
            more_allowed_ips: false,
        };
        let messages = update.into_messages();
        let mut back = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let bytes = encode(m).unwrap();
            assert!(bytes.len() <= crate::MAX_MESSAGE_LEN);
            match decode::<KeydToDatad>(&bytes).unwrap() {
                KeydToDatad::Peer(p) => {
                    assert_eq!(i, 0);
                    assert!(p.more_allowed_ips);
                    back.extend(p.allowed_ips);
                }
                KeydToDatad::AllowedIps {
                    allowed_ips, more, ..
                } => {
                    assert_eq!(more, i + 1 < messages.len());
                    back.extend(allowed_ips);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, allowed_ips);
    }

    #[test]
    fn a_full_stats_chunk_fits() {
        let peer = PeerStats {
            public_key: PublicKey([0xff; 32]),
            endpoint: Some(
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                    .parse()
                    .unwrap(),
            ),
            last_handshake: Some((u64::MAX, u32::MAX)),
            rx_bytes: u64::MAX,
            tx_bytes: u64::MAX,
        };
        let m = DatadToKeyd::Stats {
            request: u32::MAX,
            peers: vec![peer; STATS_PER_MESSAGE],
            done: true,
        };
        assert!(encode(&m).unwrap().len() <= crate::MAX_MESSAGE_LEN);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<KeydToDatad>(&bytes);
            let _ = decode::<DatadToKeyd>(&bytes);
            let _ = decode::<KeydToMonitor>(&bytes);
            let _ = decode::<MonitorToKeyd>(&bytes);
            let _ = decode::<MonitorToDatad>(&bytes);
            let _ = decode::<DatadToMonitor>(&bytes);
            let _ = decode::<MonitorToSpawner>(&bytes);
            let _ = decode::<SpawnerToMonitor>(&bytes);
        }
    }
}
