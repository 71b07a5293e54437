//! The command line of `wireguard-rs`, in a library so that the man page and the shell
//! completions are generated from this very definition (`cargo xtask install`) and never
//! drift from it. Every flag can also be given as an environment variable
//! (`WG_RS_<FLAG>`), because `wg-quick` can only set the environment of the
//! implementation it starts, and service files prefer it too.

use std::path::PathBuf;

use clap::Parser;
use clap::builder::BoolishValueParser;

/// The long description: what the program does (the man page's DESCRIPTION).
const LONG_ABOUT: &str = "\
Userspace WireGuard, a drop-in replacement for wireguard-go. Creates the TUN interface \
IFNAME and its UAPI socket /var/run/wireguard/IFNAME.sock; configure it with wg(8) or \
wg-quick(8) (WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-rs).

Without --foreground it returns once the interface is configurable (`wg show IFNAME` \
answers), with status 0, and keeps running in the background; a failure during start-up \
is printed and the status is non-zero. It stops when the interface is deleted, when its \
UAPI socket file is removed, or on SIGTERM, SIGINT or SIGHUP (with status 0).

It runs as four sandboxed processes: the monitor (this command; keeps CAP_NET_ADMIN, \
CAP_KILL and, unless --no-low-ports, CAP_NET_BIND_SERVICE), the key process \
wireguard-rs-keyd (the only one that holds the private key; no network), the spawner and \
the data plane wireguard-rs-datad. The key process and the data plane run as the \
dedicated system users wireguard-rs-keyd and wireguard-rs-datad, which must exist.";

/// The man page's extra sections: environment and exit status.
const AFTER_HELP: &str = "\
Environment:
  Every option above can be given as the environment variable shown with it; a flag's \
variable takes 1/0, true/false, yes/no or on/off. The command line wins over the \
environment.
  LOG_LEVEL             silent, error, warn (default), info, verbose (= info), debug or \
trace, as for wireguard-go (case-insensitive; an unknown value is warned about and the \
default used). Log lines go to standard error, each naming the interface and the process, \
e.g. `wireguard-rs[wg0] keyd: ...`. In the background, the daemon keeps standard error \
when LOG_LEVEL is set and not silent, else its output goes to /dev/null.
  WG_PROCESS_FOREGROUND=1  as --foreground (wireguard-go's variable).
  WG_TUN_FD, WG_UAPI_FD  an already open TUN device and UAPI listening socket to use, as \
for wireguard-go.
  NOTIFY_SOCKET         set by systemd for Type=notify services: READY=1 is sent once \
`wg show` works (with MAINPID= when the daemon went to the background), STOPPING=1 when it \
stops.

Exit status:
  0  started (in the background), or stopped cleanly: interface deleted, UAPI socket file \
removed, SIGTERM/SIGINT/SIGHUP.
  1  failed: during start-up (the message says why, naming a missing capability or user), \
or later (the key process died, the data plane kept dying, ...).
  2  invalid command line.";

/// The `wireguard-rs` command line.
#[derive(Parser, Debug)]
#[command(
    name = "wireguard-rs",
    version,
    about = "Userspace WireGuard: creates interface IFNAME and its UAPI socket; configure it with wg(8)",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    disable_version_flag = true
)]
pub struct Cli {
    /// Print the version, the git commit, the helper directory and the helpers' versions,
    /// the features built in and the supported platforms, then exit.
    #[arg(short = 'V', long)]
    pub version: bool,
    /// Stay in the foreground instead of returning once the interface is configurable.
    /// Also set by WG_PROCESS_FOREGROUND=1 (wireguard-go's variable).
    #[arg(short = 'f', long = "foreground", env = "WG_RS_FOREGROUND", value_parser = BoolishValueParser::new())]
    pub foreground: bool,
    /// Directory holding wireguard-rs-keyd and wireguard-rs-datad (default: the
    /// packager's build-time setting, else beside this binary; `--version` shows it).
    #[arg(long, value_name = "DIR", env = "WG_RS_LIBEXEC_DIR")]
    pub libexec_dir: Option<PathBuf>,
    /// Run every process without seccomp, capability limits or user switch. For
    /// debugging only: a bug in packet handling could then reach the static key.
    #[arg(long, env = "WG_RS_NO_SANDBOX", value_parser = BoolishValueParser::new())]
    pub no_sandbox: bool,
    /// Dedicated user of the key process (default: wireguard-rs-keyd); no other process
    /// or service may share it.
    #[arg(long, value_name = "USER", env = "WG_RS_KEYD_USER")]
    pub keyd_user: Option<String>,
    /// Dedicated user of the data plane and of the spawner that starts it (default:
    /// wireguard-rs-datad).
    #[arg(long, value_name = "USER", env = "WG_RS_DATAD_USER")]
    pub datad_user: Option<String>,
    /// One user for both the key process and the data plane (as before dedicated users;
    /// weaker: only seccomp then keeps a compromised data plane from signalling the key
    /// process). --keyd-user and --datad-user override it.
    #[arg(long, value_name = "USER", env = "WG_RS_USER")]
    pub user: Option<String>,
    /// Drop CAP_NET_BIND_SERVICE at start-up, so listen ports below 1024 are refused
    /// (with "Permission denied"). By default the monitor keeps it when it has it, so
    /// `ListenPort = 443` works as with wireguard-go.
    #[arg(long, env = "WG_RS_NO_LOW_PORTS", value_parser = BoolishValueParser::new(), conflicts_with = "allow_low_ports")]
    pub no_low_ports: bool,
    /// Allow listen ports below 1024: the default; accepted for compatibility.
    #[arg(long, env = "WG_RS_ALLOW_LOW_PORTS", value_parser = BoolishValueParser::new())]
    pub allow_low_ports: bool,
    /// Read and write the TUN device one packet at a time, without a virtio-net header and
    /// segmentation offloads (TSO/USO). Slower; for kernels or setups where they misbehave.
    #[arg(long, env = "WG_RS_NO_TUN_OFFLOAD", value_parser = BoolishValueParser::new())]
    pub no_tun_offload: bool,
    /// Send one UDP datagram per system call instead of batches with `UDP_SEGMENT`.
    #[arg(long, env = "WG_RS_NO_UDP_GSO", value_parser = BoolishValueParser::new())]
    pub no_udp_gso: bool,
    /// Receive without `UDP_GRO` coalescing.
    #[arg(long, env = "WG_RS_NO_UDP_GRO", value_parser = BoolishValueParser::new())]
    pub no_udp_gro: bool,
    /// Threads besides the data plane's event loop that share encryption and decryption
    /// (default: half the cores minus one, at most 7, so none on 1-3 cores; 0 keeps it all
    /// on one thread).
    #[arg(long, value_name = "N", env = "WG_RS_CRYPTO_THREADS", value_parser = clap::value_parser!(u16).range(0..=64))]
    pub crypto_threads: Option<u16>,
    /// Internal: run as the spawner of data planes (started by the monitor itself).
    #[arg(long, hide = true)]
    pub spawner: bool,
    /// Interface name (at most 15 bytes).
    #[arg(value_name = "IFNAME", required_unless_present_any = ["spawner", "version"])]
    pub interface: Option<String>,
}

// The workers' users and sandbox (wg-sandbox): Linux, macOS, FreeBSD, NetBSD.
#[cfg(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
))]
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
            low_ports: !self.no_low_ports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_visible_flag_has_an_environment_variable() {
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if arg.is_hide_set() || arg.is_positional() || id == "version" || id == "help" {
                continue;
            }
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{id} has no environment variable"));
            let want = format!("WG_RS_{}", id.to_ascii_uppercase());
            assert_eq!(env.to_string_lossy(), want, "--{id}");
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn low_ports_are_allowed_unless_turned_off() {
        let cli = Cli::try_parse_from(["wireguard-rs", "wg0"]).unwrap();
        assert!(cli.options(String::new()).low_ports);
        let cli = Cli::try_parse_from(["wireguard-rs", "--allow-low-ports", "wg0"]).unwrap();
        assert!(cli.options(String::new()).low_ports);
        let cli = Cli::try_parse_from(["wireguard-rs", "--no-low-ports", "wg0"]).unwrap();
        assert!(!cli.options(String::new()).low_ports);
    }

    #[test]
    fn an_interface_is_required_unless_asking_for_the_version() {
        assert!(Cli::try_parse_from(["wireguard-rs", "--version"]).is_ok());
        assert!(Cli::try_parse_from(["wireguard-rs"]).is_err());
    }
}
