//! `wireguard-rs [-f|--foreground] IFNAME`: creates the TUN interface IFNAME and its UAPI
//! socket, starts the key process and the data plane, and supervises them. Without `-f`
//! it returns once the interface and socket exist and keeps running in the background, as
//! wireguard-go does, so `wg-quick` can configure it right away.
#![forbid(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;

use clap::Parser;
use wg_monitor::{Prepared, Stopped, Supervisor};
use wg_tun::Tun;
use wireguard_rs::cli::Cli;

/// Default MTU, as wireguard-go sets it at creation.
const DEFAULT_MTU: u32 = 1420;
/// Set in the background child, as wireguard-go does.
const FOREGROUND_ENV: &str = "WG_PROCESS_FOREGROUND";

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("wireguard-rs: {message}");
    ExitCode::FAILURE
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
