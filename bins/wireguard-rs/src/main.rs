//! `wireguard-rs [-f|--foreground] IFNAME`: creates the TUN interface IFNAME and its UAPI
//! socket, starts the key process and the data plane, and supervises them. Without `-f`
//! it returns once the interface and socket exist and keeps running in the background, as
//! wireguard-go does, so `wg-quick` can configure it right away.
#![forbid(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wg_monitor::{Prepared, Stopped, Supervisor};
use wg_tun::Tun;

/// Default MTU, as wireguard-go sets it at creation.
const DEFAULT_MTU: u32 = 1420;
/// Set in the background child, as wireguard-go does.
const FOREGROUND_ENV: &str = "WG_PROCESS_FOREGROUND";

#[derive(Parser, Debug)]
#[command(
    name = "wireguard-rs",
    version,
    about = "Userspace WireGuard: creates interface IFNAME and its UAPI socket; configure it with wg(8)"
)]
struct Cli {
    /// Stay in the foreground instead of returning once the interface exists.
    #[arg(short = 'f', long = "foreground")]
    foreground: bool,
    /// Directory holding wireguard-rs-keyd and wireguard-rs-datad (default: beside this
    /// binary, or the packager's build-time setting).
    #[arg(long, value_name = "DIR")]
    libexec_dir: Option<PathBuf>,
    /// Run every process without seccomp, capability limits or user switch. For
    /// debugging only: a bug in packet handling could then reach the static key.
    #[arg(long)]
    no_sandbox: bool,
    /// Dedicated user of the key process; no other process or service may share it.
    #[arg(long, value_name = "USER")]
    keyd_user: Option<String>,
    /// Dedicated user of the data plane (and of the spawner that starts it).
    #[arg(long, value_name = "USER")]
    datad_user: Option<String>,
    /// One user for both the key process and the data plane (as before dedicated users;
    /// weaker: only seccomp then keeps a compromised data plane from signalling the key
    /// process). --keyd-user and --datad-user override it.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Keep CAP_NET_BIND_SERVICE in the monitor so `wg set ... listen-port` may pick a
    /// port below 1024 (e.g. 53 or 443). Off by default: the capability is dropped.
    #[arg(long)]
    allow_low_ports: bool,
    /// Read and write the TUN device one packet at a time, without a virtio-net header and
    /// segmentation offloads (TSO/USO). Slower; for kernels or setups where they misbehave.
    #[arg(long)]
    no_tun_offload: bool,
    /// Send one UDP datagram per system call instead of batches with `UDP_SEGMENT`.
    #[arg(long)]
    no_udp_gso: bool,
    /// Receive without `UDP_GRO` coalescing.
    #[arg(long)]
    no_udp_gro: bool,
    /// Threads besides the data plane's event loop that share encryption and decryption
    /// (default: half the cores minus one, at most 7, so none on 1-3 cores; 0 keeps it all
    /// on one thread).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=64))]
    crypto_threads: Option<u16>,
    /// Internal: run as the spawner of data planes (started by the monitor itself).
    #[arg(long, hide = true)]
    spawner: bool,
    /// Interface name (at most 15 bytes).
    #[arg(value_name = "IFNAME", required_unless_present = "spawner")]
    interface: Option<String>,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("wireguard-rs: {message}");
    ExitCode::FAILURE
}

impl Cli {
    fn keyd_user(&self) -> String {
        self.keyd_user
            .clone()
            .or_else(|| self.user.clone())
            .unwrap_or_else(|| wg_sandbox::DEFAULT_KEYD_USER.to_owned())
    }

    fn datad_user(&self) -> String {
        self.datad_user
            .clone()
            .or_else(|| self.user.clone())
            .unwrap_or_else(|| wg_sandbox::DEFAULT_DATAD_USER.to_owned())
    }

    /// The sandbox options of a worker that runs as `user`.
    fn options(&self, user: String) -> wg_sandbox::Options {
        wg_sandbox::Options {
            enabled: !self.no_sandbox,
            user,
            low_ports: self.allow_low_ports,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.spawner {
        wg_ipc::worker::init_logging("spawner");
        // The monitor passes the data plane's user as `--user`.
        let options = cli.options(cli.user.clone().unwrap_or_else(|| cli.datad_user()));
        return run_spawner(&cli, &options);
    }
    let options = cli.options(String::new());
    wg_ipc::worker::init_logging("wireguard-rs");
    if options.enabled && wg_sandbox::running_as_root() {
        match wg_sandbox::check_worker_users(
            &cli.keyd_user(),
            &cli.datad_user(),
            cli.user.is_some(),
        ) {
            Ok(Some(warning)) => tracing::warn!("{warning}"),
            Ok(None) => {}
            Err(e) => return fail(e),
        }
    }
    let Some(interface) = cli.interface.clone() else {
        return fail("an interface name is required");
    };
    if let Err(e) = wg_tun::validate_interface_name(&interface) {
        return fail(e);
    }
    if cli.no_sandbox {
        tracing::warn!("--no-sandbox: running WITHOUT seccomp, capability limits or user switch");
    }
    // Descriptors inherited from a parent (our own daemonizing step, or a caller that
    // opened them, as wireguard-go allows). Adopted before any thread starts.
    let inherited_tun = match wg_ipc::inherited_fd("WG_TUN_FD") {
        Ok(fd) => fd,
        Err(e) => return fail(e),
    };
    let inherited_uapi = match wg_ipc::inherited_fd("WG_UAPI_FD") {
        Ok(fd) => fd,
        Err(e) => return fail(e),
    };
    let foreground = cli.foreground || std::env::var_os(FOREGROUND_ENV).is_some();

    let tun = match inherited_tun {
        Some(fd) => Tun::from_fd(fd),
        None if cli.no_tun_offload => Tun::create(&interface, DEFAULT_MTU),
        None => Tun::create_offloaded(&interface, DEFAULT_MTU),
    };
    let tun = match tun {
        Ok(tun) => tun,
        Err(e) => return fail(e),
    };
    let uapi = match inherited_uapi {
        Some(fd) => Ok(UnixListener::from(fd)),
        None => wg_uapi::server::bind_listener(&interface),
    };
    let uapi = match uapi {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let socket_path = wg_uapi::server::socket_path(
        std::path::Path::new(wg_uapi::server::DEFAULT_SOCKET_DIR),
        &interface,
    );

    if !foreground {
        // The background child owns the interface and the socket file from here on.
        return match daemonize(&cli, &interface, tun.into_fd(), uapi) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let _ = std::fs::remove_file(&socket_path);
                fail(format!("cannot start in the background: {e}"))
            }
        };
    }
    let socket_file = wg_uapi::server::SocketFileGuard::new(socket_path);

    let udp_offload = wg_monitor::sockets::UdpOffload {
        gso: !cli.no_udp_gso,
        gro: !cli.no_udp_gro,
    };
    tracing::debug!(tun_offloads = ?tun.offloads(), vnet_hdr = tun.vnet_hdr(), "TUN device ready");
    let sockets = match wg_monitor::sockets::bind(0, 0, udp_offload) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot open UDP sockets: {e}")),
    };
    let prepared = Prepared {
        interface: interface.clone(),
        tun,
        uapi,
        sockets,
        udp_offload,
        crypto_threads: cli
            .crypto_threads
            .unwrap_or_else(wg_ipc::worker::default_crypto_threads),
        worker_dir: wg_monitor::worker_dir(cli.libexec_dir.as_deref()),
        keyd_args: cli.options(cli.keyd_user()).to_worker_args(),
        datad_args: cli.options(cli.datad_user()).to_worker_args(),
        socket_file: Some(socket_file.path().to_path_buf()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(Supervisor::new(prepared).run(|| {
        wg_sandbox::lock_down(wg_sandbox::Role::Monitor, &options, None).map_err(|e| e.to_string())
    }));
    drop(socket_file);
    match result {
        Ok(Stopped::InterfaceGone) => {
            tracing::info!("interface {interface} is gone; shutting down");
            ExitCode::SUCCESS
        }
        Ok(Stopped::Signal) => {
            tracing::info!("shutting down on signal");
            ExitCode::SUCCESS
        }
        Ok(Stopped::SocketGone) => {
            tracing::info!("UAPI socket of {interface} was removed; shutting down");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Re-runs this program in the foreground in a new process group with the TUN device and
/// UAPI listener inherited (as `WG_TUN_FD` and `WG_UAPI_FD`), and returns once it started.
fn daemonize(cli: &Cli, interface: &str, tun: OwnedFd, uapi: UnixListener) -> std::io::Result<()> {
    let uapi = OwnedFd::from(uapi);
    wg_ipc::make_inheritable(&tun)?;
    wg_ipc::make_inheritable(&uapi)?;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--foreground");
    if let Some(dir) = &cli.libexec_dir {
        cmd.arg("--libexec-dir").arg(dir);
    }
    if cli.no_sandbox {
        cmd.arg("--no-sandbox");
    }
    if cli.allow_low_ports {
        cmd.arg("--allow-low-ports");
    }
    if let Some(n) = cli.crypto_threads {
        cmd.arg("--crypto-threads").arg(n.to_string());
    }
    for (off, flag) in [
        (cli.no_tun_offload, "--no-tun-offload"),
        (cli.no_udp_gso, "--no-udp-gso"),
        (cli.no_udp_gro, "--no-udp-gro"),
    ] {
        if off {
            cmd.arg(flag);
        }
    }
    for (flag, user) in [
        ("--keyd-user", &cli.keyd_user),
        ("--datad-user", &cli.datad_user),
        ("--user", &cli.user),
    ] {
        if let Some(user) = user {
            cmd.arg(flag).arg(user);
        }
    }
    cmd.arg(interface)
        .env(FOREGROUND_ENV, "1")
        .env("WG_TUN_FD", tun.as_raw_fd().to_string())
        .env("WG_UAPI_FD", uapi.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn()?;
    Ok(())
}

/// The spawner role: started by the monitor, sandboxed as the unprivileged user, starts
/// data planes on request.
fn run_spawner(cli: &Cli, options: &wg_sandbox::Options) -> ExitCode {
    use wg_sandbox::{Role, SyscallReport};
    if let Err(e) = wg_sandbox::die_with_parent() {
        return fail(e);
    }
    let fd = match wg_ipc::inherited_fd(wg_ipc::IPC_FD_ENV) {
        Ok(Some(fd)) => fd,
        Ok(None) => return fail("--spawner is internal to wireguard-rs"),
        Err(e) => return fail(e),
    };
    let report = SyscallReport {
        fd: fd.as_raw_fd(),
        prefix: wg_ipc::SIGSYS_REPORT_PREFIX,
    };
    if let Err(e) = wg_sandbox::close_inherited_fds(&[report.fd]) {
        return fail(e);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let worker_dir = wg_monitor::worker_dir(cli.libexec_dir.as_deref());
    let result = runtime.block_on(async {
        let channel = wg_ipc::Channel::from_fd(fd)?;
        wg_sandbox::lock_down(Role::Spawner, options, Some(report))
            .map_err(|e| wg_monitor::MonitorError::Sandbox(e.to_string()))?;
        wg_monitor::spawner::run(channel, worker_dir, options.to_worker_args()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
