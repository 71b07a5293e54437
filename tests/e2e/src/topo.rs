//! The standard topology: two namespaces `a` and `b` on a veth link with IPv4 and IPv6
//! underlay addresses, one daemon in each, configured as each other's peer.

use anyhow::{Context, Result};
use wg_netns::netns::{Namespace, TwoHosts};

use crate::daemon::{Daemon, Impl};
use crate::env::{Env, Keys};

/// Tunnel IPv4 addresses of A and B (on a /24).
pub const TUN4: [&str; 2] = ["10.77.0.1", "10.77.0.2"];
/// Tunnel IPv6 addresses of A and B (on a /64).
pub const TUN6: [&str; 2] = ["fd77::1", "fd77::2"];
/// Underlay IPv4 addresses of A and B (veth, /24).
pub const UNDER4: [&str; 2] = [wg_netns::netns::UNDERLAY_A, wg_netns::netns::UNDERLAY_B];
/// Underlay IPv6 addresses of A and B (veth, /64).
pub const UNDER6: [&str; 2] = ["fd03::1", "fd03::2"];
/// Listen ports of A and B.
pub const PORTS: [u16; 2] = [51820, 51821];

/// Which underlay the peers' endpoints use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Underlay {
    /// IPv4 endpoints.
    V4,
    /// IPv6 endpoints.
    V6,
}

impl Underlay {
    /// `addr:port` of side `i` (0 = A, 1 = B) on this underlay.
    pub fn endpoint(self, i: usize) -> String {
        match self {
            Self::V4 => format!("{}:{}", UNDER4[i], PORTS[i]),
            Self::V6 => format!("[{}]:{}", UNDER6[i], PORTS[i]),
        }
    }
}

/// How to build a [`Pair`].
#[derive(Clone, Copy, Debug)]
pub struct PairSpec {
    /// Implementation in namespace A (the initiator: it knows B's endpoint).
    pub a: Impl,
    /// Implementation in namespace B.
    pub b: Impl,
    /// Underlay of the endpoints.
    pub underlay: Underlay,
    /// Whether both sides share a preshared key.
    pub psk: bool,
    /// Whether B is given A's endpoint too (else B learns it from A's handshake and can
    /// only answer).
    pub b_knows_a: bool,
}

impl PairSpec {
    /// wireguard-rs on both sides, IPv4 underlay, no PSK, both endpoints known.
    pub fn rs() -> Self {
        Self {
            a: Impl::Rs,
            b: Impl::Rs,
            underlay: Underlay::V4,
            psk: false,
            b_knows_a: true,
        }
    }
}

/// Two hosts with a daemon each, configured as each other's peer, interfaces up with
/// [`TUN4`]/[`TUN6`] addresses. Fields drop in order: daemons, then the link and the
/// namespaces.
#[derive(Debug)]
pub struct Pair {
    /// Daemon in A.
    pub a: Daemon,
    /// Daemon in B.
    pub b: Daemon,
    /// The namespaces (`hosts.a`, `hosts.b`) and their veth link.
    pub hosts: TwoHosts,
    /// A's keys.
    pub ka: Keys,
    /// B's keys.
    pub kb: Keys,
    /// The preshared key, if any.
    pub psk: Option<String>,
    /// How it was built.
    pub spec: PairSpec,
}

/// Two namespaces `<prefix>a`/`<prefix>b` joined by veth `<prefix>va`/`<prefix>vb` with
/// [`UNDER4`] and [`UNDER6`] addresses.
pub fn two_hosts(env: &Env) -> Result<TwoHosts> {
    let hosts = TwoHosts::create(&env.names)?;
    hosts.a.ip(&[
        "addr",
        "add",
        &format!("{}/64", UNDER6[0]),
        "dev",
        &env.name("va")?,
        "nodad",
    ])?;
    hosts.b.ip(&[
        "addr",
        "add",
        &format!("{}/64", UNDER6[1]),
        "dev",
        &env.name("vb")?,
        "nodad",
    ])?;
    Ok(hosts)
}

/// Adds `v4/24` and `v6/64` (no DAD) to `dev` in `ns` and sets it up.
pub fn address_tunnel(ns: &Namespace, dev: &str, v4: &str, v6: &str) -> Result<()> {
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
    ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
    ns.ip(&["link", "set", dev, "up"])?;
    Ok(())
}

/// A wireguard-go peer on host B of `hosts`, for a tunnel that a test runs itself on host A
/// (in process, through the library or its C ABI): B listens on [`PORTS`]`[1]` with its
/// tunnel addressed [`TUN4`]`[1]`/[`TUN6`]`[1]` and accepts A's key for A's tunnel
/// addresses. Returns B and the keys of A and B.
pub fn go_peer_on_b(env: &Env, hosts: &TwoHosts) -> Result<(Daemon, Keys, Keys)> {
    let (ka, kb) = (env.keys("a")?, env.keys("b")?);
    let b = Daemon::start(env, &hosts.b, Impl::Go, &env.name("wb")?)?;
    b.set(&[
        "private-key",
        &kb.file.to_string_lossy(),
        "listen-port",
        &PORTS[1].to_string(),
        "peer",
        &ka.public,
        "allowed-ips",
        &format!("{}/32,{}/128", TUN4[0], TUN6[0]),
    ])?;
    address_tunnel(&hosts.b, &b.ifname, TUN4[1], TUN6[1])?;
    Ok((b, ka, kb))
}

impl Pair {
    /// Builds the pair and configures both ends (no traffic yet: no handshake).
    pub fn new(env: &Env, spec: PairSpec) -> Result<Self> {
        let hosts = two_hosts(env)?;
        let ka = env.keys("a")?;
        let kb = env.keys("b")?;
        let psk = if spec.psk { Some(env.psk("ab")?) } else { None };
        let a = Daemon::start(env, &hosts.a, spec.a, &env.name("wa")?)?;
        let b = Daemon::start(env, &hosts.b, spec.b, &env.name("wb")?)?;
        let pair = Self {
            a,
            b,
            hosts,
            ka,
            kb,
            psk: psk.as_ref().map(|(k, _)| k.clone()),
            spec,
        };
        let psk_file = psk.as_ref().map(|(_, f)| f.to_string_lossy().into_owned());
        for i in 0..2 {
            let (d, me, peer, ns) = if i == 0 {
                (&pair.a, &pair.ka, &pair.kb, &pair.hosts.a)
            } else {
                (&pair.b, &pair.kb, &pair.ka, &pair.hosts.b)
            };
            let key = me.file.to_string_lossy().into_owned();
            let port = PORTS[i].to_string();
            let allowed = format!("{}/32,{}/128", TUN4[1 - i], TUN6[1 - i]);
            let endpoint = spec.underlay.endpoint(1 - i);
            let mut args = vec![
                "private-key",
                &key,
                "listen-port",
                &port,
                "peer",
                &peer.public,
                "allowed-ips",
                &allowed,
            ];
            if let Some(f) = &psk_file {
                args.extend(["preshared-key", f.as_str()]);
            }
            if i == 0 || spec.b_knows_a {
                args.extend(["endpoint", endpoint.as_str()]);
            }
            d.set(&args)
                .with_context(|| format!("configuring {} in {}", d.kind.name(), d.ns))?;
            address_tunnel(ns, &d.ifname, TUN4[i], TUN6[i])?;
        }
        Ok(pair)
    }

    /// Both daemons' `wg show` and log tails, for error messages.
    pub fn diag(&self) -> String {
        format!("{}{}", self.a.diag(), self.b.diag())
    }
}

/// One daemon alone in a namespace `<prefix>s` (only `lo`), interface `<prefix>ws`:
/// nothing it sends can leave the namespace. Drops the daemon first.
#[derive(Debug)]
pub struct Solo {
    /// The daemon.
    pub d: Daemon,
    /// Its namespace.
    pub ns: Namespace,
}

impl Solo {
    /// Starts `kind` alone in a fresh namespace.
    pub fn new(env: &Env, kind: Impl) -> Result<Self> {
        let ns = Namespace::create(&env.name("s")?)?;
        let d = Daemon::start(env, &ns, kind, &env.name("ws")?)?;
        Ok(Self { d, ns })
    }

    /// Our daemon alone in a fresh namespace, given a fresh private key (key name `i`) and
    /// listen port 51820, so that all its workers run.
    pub fn rs_keyed(env: &Env) -> Result<Self> {
        let solo = Self::new(env, Impl::Rs)?;
        let k = env.keys("i")?;
        solo.d.set(&[
            "private-key",
            &k.file.to_string_lossy(),
            "listen-port",
            "51820",
        ])?;
        Ok(solo)
    }
}
