//! The command line of `wireguard-rs`, in a library so that the man page and the shell
//! completions are generated from this very definition (`cargo xtask install`) and never
//! drift from it.

use std::path::PathBuf;

use clap::Parser;

/// The `wireguard-rs` command line.
#[derive(Parser, Debug)]
#[command(
    name = "wireguard-rs",
    version,
    about = "Userspace WireGuard: creates interface IFNAME and its UAPI socket; configure it with wg(8)"
)]
pub struct Cli {
    /// Stay in the foreground instead of returning once the interface exists.
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,
    /// Directory holding wireguard-rs-keyd and wireguard-rs-datad (default: beside this
    /// binary, or the packager's build-time setting).
    #[arg(long, value_name = "DIR")]
    pub libexec_dir: Option<PathBuf>,
    /// Run every process without seccomp, capability limits or user switch. For
    /// debugging only: a bug in packet handling could then reach the static key.
    #[arg(long)]
    pub no_sandbox: bool,
    /// Dedicated user of the key process; no other process or service may share it.
    #[arg(long, value_name = "USER")]
    pub keyd_user: Option<String>,
    /// Dedicated user of the data plane (and of the spawner that starts it).
    #[arg(long, value_name = "USER")]
    pub datad_user: Option<String>,
    /// One user for both the key process and the data plane (as before dedicated users;
    /// weaker: only seccomp then keeps a compromised data plane from signalling the key
    /// process). --keyd-user and --datad-user override it.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Keep CAP_NET_BIND_SERVICE in the monitor so `wg set ... listen-port` may pick a
    /// port below 1024 (e.g. 53 or 443). Off by default: the capability is dropped.
    #[arg(long)]
    pub allow_low_ports: bool,
    /// Read and write the TUN device one packet at a time, without a virtio-net header and
    /// segmentation offloads (TSO/USO). Slower; for kernels or setups where they misbehave.
    #[arg(long)]
    pub no_tun_offload: bool,
    /// Send one UDP datagram per system call instead of batches with `UDP_SEGMENT`.
    #[arg(long)]
    pub no_udp_gso: bool,
    /// Receive without `UDP_GRO` coalescing.
    #[arg(long)]
    pub no_udp_gro: bool,
    /// Threads besides the data plane's event loop that share encryption and decryption
    /// (default: half the cores minus one, at most 7, so none on 1-3 cores; 0 keeps it all
    /// on one thread).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=64))]
    pub crypto_threads: Option<u16>,
    /// Internal: run as the spawner of data planes (started by the monitor itself).
    #[arg(long, hide = true)]
    pub spawner: bool,
    /// Interface name (at most 15 bytes).
    #[arg(value_name = "IFNAME", required_unless_present = "spawner")]
    pub interface: Option<String>,
}

impl Cli {
    /// The key process's user: `--keyd-user`, else `--user`, else the default.
    pub fn keyd_user(&self) -> String {
        self.keyd_user
            .clone()
            .or_else(|| self.user.clone())
            .unwrap_or_else(|| wg_sandbox::DEFAULT_KEYD_USER.to_owned())
    }

    /// The data plane's user: `--datad-user`, else `--user`, else the default.
    pub fn datad_user(&self) -> String {
        self.datad_user
            .clone()
            .or_else(|| self.user.clone())
            .unwrap_or_else(|| wg_sandbox::DEFAULT_DATAD_USER.to_owned())
    }

    /// The sandbox options of a worker that runs as `user`.
    pub fn options(&self, user: String) -> wg_sandbox::Options {
        wg_sandbox::Options {
            enabled: !self.no_sandbox,
            user,
            low_ports: self.allow_low_ports,
        }
    }
}
