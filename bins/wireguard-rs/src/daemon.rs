//! `wireguard-rs [-f|--foreground] IFNAME`: creates the TUN interface IFNAME and its UAPI
//! socket, starts the key process and the data plane, and supervises them. Without `-f`
//! it starts itself again in the background and returns once that process says the
//! interface is configurable (`wg show` answers), as wireguard-go does, so `wg-quick` can
//! configure it right away; a failure during that start is printed here and the status is
//! non-zero. Under systemd (`NOTIFY_SOCKET`) it sends `READY=1` and `STOPPING=1`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use wg_ipc::worker::{INTERFACE_ENV, LogLevel};
use wg_monitor::device;
use wg_monitor::notify::{self, Lifecycle, Notifier, READY_FD_ENV, Report};
use wg_monitor::{Prepared, Stopped, Supervisor};
use wireguard_rs::cli::Cli;

/// wireguard-go's variable: `1` means foreground (also set in our background child).
const FOREGROUND_ENV: &str = "WG_PROCESS_FOREGROUND";
/// How long the command waits for its background child to be ready. The child's own
/// checks end sooner (its UAPI probe gives up after 10 s), so this is a last resort.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The git commit this binary was built from (`build.rs`).
const COMMIT: &str = env!("WG_RS_GIT_COMMIT");

/// The daemon's entry point (Linux, macOS, FreeBSD, NetBSD).
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.spawner {
        return run_spawner(&cli);
    }
    if cli.version {
        print_version(&cli);
        return ExitCode::SUCCESS;
    }
    // The readiness pipe: set when this is the background child of our own start.
    // Adopted first, before any thread starts.
    let pipe = match wg_ipc::inherited_fd(READY_FD_ENV) {
        Ok(fd) => fd.map(std::fs::File::from),
        Err(e) => return fail(&mut Lifecycle::default(), &e.to_string()),
    };
    let background_child = pipe.is_some();
    // An unknown LOG_LEVEL is warned about once, by the command that was run.
    let level = wg_ipc::worker::init_logging(None, cli.interface.as_deref(), !background_child);
    let mut life = Lifecycle::new(pipe);
    match start(&cli, &mut life, level) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&mut life, &message),
    }
}

/// Reports a failure: to the waiting command when there is one (it prints it), else on
/// standard error.
fn fail(life: &mut Lifecycle, message: &str) -> ExitCode {
    if !life.fail(message) {
        wg_ipc::worker::print_error_line(&format!("wireguard-rs: {message}"));
    }
    ExitCode::FAILURE
}

/// Everything from the checks to the end of supervision; `Err` carries the one line that
/// says what went wrong.
fn start(cli: &Cli, life: &mut Lifecycle, level: LogLevel) -> Result<(), String> {
    let options = cli.options(String::new());
    let Some(interface) = cli.interface.clone() else {
        return Err("an interface name is required".into());
    };
    device::check_name(&interface)?;
    if options.enabled && wg_sandbox::running_as_root() {
        match wg_sandbox::check_worker_users(
            &cli.keyd_user(),
            &cli.datad_user(),
            cli.user.is_some(),
        ) {
            Ok(Some(warning)) => tracing::warn!("{warning}"),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        #[cfg(target_os = "linux")]
        wg_sandbox::check_start_capabilities().map_err(|e| e.to_string())?;
    }
    let worker_dir = wg_monitor::worker_dir(cli.libexec_dir.as_deref());
    wg_monitor::check_worker_binaries(&worker_dir).map_err(|e| e.to_string())?;
    if cli.no_sandbox {
        tracing::warn!("--no-sandbox: running WITHOUT seccomp, capability limits or user switch");
    }
    // Descriptors inherited from a parent (our own background start, or a caller that
    // opened them, as wireguard-go allows). Adopted before any thread starts.
    let inherited_tun = wg_ipc::inherited_fd("WG_TUN_FD").map_err(|e| e.to_string())?;
    let inherited_uapi = wg_ipc::inherited_fd("WG_UAPI_FD").map_err(|e| e.to_string())?;
    let foreground = cli.foreground
        || life.has_pipe()
        || std::env::var_os(FOREGROUND_ENV).is_some_and(|v| v == "1");

    // Elsewhere than on Linux the background child creates the interface itself: their
    // TUN descriptors cannot be adopted by name (the BSDs') or are not passed on here.
    #[cfg(not(target_os = "linux"))]
    if !foreground {
        if inherited_tun.is_some() || inherited_uapi.is_some() {
            return Err("WG_TUN_FD and WG_UAPI_FD are supported on Linux only; unset them".into());
        }
        return daemonize(cli, &interface, None, level);
    }
    #[cfg(target_os = "linux")]
    let tun = match inherited_tun {
        Some(fd) => wg_tun::Tun::from_fd(fd).map_err(|e| e.to_string()),
        None => device::create(&interface, !cli.no_tun_offload),
    }?;
    #[cfg(not(target_os = "linux"))]
    let tun = match (inherited_tun, inherited_uapi.as_ref()) {
        (None, None) => device::create(&interface, !cli.no_tun_offload),
        _ => Err("WG_TUN_FD and WG_UAPI_FD are supported on Linux only; unset them".into()),
    }?;
    // The kernel's name: on macOS `utunN`, whatever was asked for. The UAPI socket, the
    // log lines and `wg` go by it, as with wireguard-go.
    let interface = device::name(&tun).to_owned();
    // From here on, however this ends, a BSD tun interface is destroyed with the daemon
    // (the background start hands the interface to its child first, on Linux only).
    let _interface_guard = InterfaceGuard(interface.clone());
    write_name_file(&interface)?;
    let uapi = match inherited_uapi {
        Some(fd) => Ok(UnixListener::from(fd)),
        None => wg_uapi::server::bind_listener(&interface),
    }
    .map_err(|e| e.to_string())?;
    let socket_path =
        wg_uapi::server::socket_path(Path::new(wg_uapi::server::DEFAULT_SOCKET_DIR), &interface);

    #[cfg(target_os = "linux")]
    if !foreground {
        // The background child owns the interface and the socket file from here on.
        return match daemonize(cli, &interface, Some((tun.into_fd(), uapi)), level) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&socket_path);
                Err(e)
            }
        };
    }
    let socket_file = wg_uapi::server::SocketFileGuard::new(socket_path);
    // systemd's socket, connected now: the monitor's sandbox allows no new connection.
    match Notifier::from_env() {
        Ok(n) => life.notifier = n,
        Err(e) => tracing::warn!("not notifying systemd: {e}"),
    }
    life.status = format!("serving {interface}");

    let udp_offload = wg_monitor::sockets::UdpOffload {
        gso: !cli.no_udp_gso,
        gro: !cli.no_udp_gro,
    };
    #[cfg(target_os = "linux")]
    tracing::debug!(tun_offloads = ?tun.offloads(), vnet_hdr = tun.vnet_hdr(), "TUN device ready");
    let sockets = wg_monitor::sockets::bind(0, 0, udp_offload)
        .map_err(|e| format!("cannot open UDP sockets: {e}"))?;
    let prepared = Prepared {
        interface: interface.clone(),
        tun,
        uapi,
        sockets,
        udp_offload,
        crypto_threads: cli
            .crypto_threads
            .unwrap_or_else(wg_ipc::worker::default_crypto_threads),
        worker_dir,
        keyd_args: cli.options(cli.keyd_user()).to_worker_args(),
        datad_args: cli.options(cli.datad_user()).to_worker_args(),
        socket_file: Some(socket_file.path().to_path_buf()),
        low_ports: !cli.no_low_ports,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let result = runtime.block_on(Supervisor::new(prepared).run(
        || {
            wg_sandbox::lock_down(wg_sandbox::Role::Monitor, &options, None)
                .map_err(|e| e.to_string())
        },
        life,
    ));
    drop(socket_file);
    match result.map_err(|e| e.to_string())? {
        Stopped::InterfaceGone => tracing::info!("interface {interface} is gone; shutting down"),
        Stopped::Signal => tracing::info!("shutting down on signal"),
        Stopped::SocketGone => {
            tracing::info!("UAPI socket of {interface} was removed; shutting down");
        }
    }
    Ok(())
}

/// Removes the interface when the daemon's start or supervision ends
/// ([`device::remove_on_stop`]: the BSDs' tun interfaces outlive their descriptor).
struct InterfaceGuard(String);

impl Drop for InterfaceGuard {
    fn drop(&mut self) {
        device::remove_on_stop(&self.0);
    }
}

/// Starts this program again in the foreground, in a new process group, with the TUN
/// device and UAPI listener inherited (as `WG_TUN_FD` and `WG_UAPI_FD`) and the write end
/// of a readiness pipe (`WG_RS_READY_FD`), and waits for its verdict: `Ok` once it is
/// ready, else why not. Its standard error is ours when logging was asked for
/// (`LOG_LEVEL` set and not `silent`), else /dev/null.
fn daemonize(
    cli: &Cli,
    interface: &str,
    opened: Option<(OwnedFd, UnixListener)>,
    level: LogLevel,
) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("cannot start in the background: {what}: {e}");
    let opened = opened.map(|(tun, uapi)| (tun, OwnedFd::from(uapi)));
    let (reader, writer) = std::io::pipe().map_err(|e| io("pipe", e))?;
    let writer = OwnedFd::from(writer);
    for fd in opened
        .iter()
        .flat_map(|(tun, uapi)| [tun, uapi])
        .chain([&writer])
    {
        wg_ipc::make_inheritable(fd).map_err(|e| io("descriptor", e))?;
    }
    let exe = std::env::current_exe().map_err(|e| io("locating this program", e))?;
    let mut cmd = std::process::Command::new(exe);
    // The command line again (the environment, with any WG_RS_* settings, is inherited).
    cmd.arg("--foreground");
    if let Some(dir) = &cli.libexec_dir {
        cmd.arg("--libexec-dir").arg(dir);
    }
    for (on, flag) in [
        (cli.no_sandbox, "--no-sandbox"),
        (cli.no_low_ports, "--no-low-ports"),
        (cli.no_tun_offload, "--no-tun-offload"),
        (cli.no_udp_gso, "--no-udp-gso"),
        (cli.no_udp_gro, "--no-udp-gro"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    if let Some(n) = cli.crypto_threads {
        cmd.arg("--crypto-threads").arg(n.to_string());
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
    let logging = std::env::var_os("LOG_LEVEL").is_some() && level != LogLevel::Silent;
    if let Some((tun, uapi)) = &opened {
        cmd.env("WG_TUN_FD", tun.as_raw_fd().to_string())
            .env("WG_UAPI_FD", uapi.as_raw_fd().to_string());
    }
    cmd.arg(interface)
        .env(FOREGROUND_ENV, "1")
        .env(READY_FD_ENV, writer.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(if logging {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        });
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| io("starting it", e))?;
    // Only the child may hold the write end, or its end would never be seen.
    drop(writer);
    drop(opened);

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = std::io::Read::read_to_end(&mut { reader }, &mut text);
        let _ = tx.send(text);
    });
    let Ok(text) = rx.recv_timeout(READY_TIMEOUT) else {
        // Unreaped, so the pid is still the child's: stopping it takes the interface down.
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "the background process did not become ready within {} s and was stopped; run with -f and LOG_LEVEL=debug to see why",
            READY_TIMEOUT.as_secs()
        ));
    };
    match notify::parse_report(&text) {
        Report::Ready => {
            match Notifier::from_env() {
                Ok(Some(n)) => {
                    if let Err(e) = n.ready(&format!("serving {interface}"), Some(child.id())) {
                        tracing::warn!("cannot notify systemd of readiness: {e}");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("not notifying systemd: {e}"),
            }
            Ok(())
        }
        Report::Failed(message) => {
            let _ = wait_bounded(&mut child, Duration::from_secs(2));
            Err(message)
        }
        Report::Silent => {
            let status = wait_bounded(&mut child, Duration::from_secs(5));
            Err(format!(
                "the background process exited during start-up without saying why ({status}); run with -f and LOG_LEVEL=debug to see its log"
            ))
        }
    }
}

/// Waits up to `timeout` for `child` to exit; describes how it ended.
fn wait_bounded(child: &mut std::process::Child, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => return "still running".into(),
            Err(e) => return format!("wait failed: {e}"),
        }
    }
}

/// `--version`: this binary's version and commit, where its helpers are and what they
/// say of themselves (the data plane names its AEAD backend), and the platforms.
fn print_version(cli: &Cli) {
    let dir = wg_monitor::worker_dir(cli.libexec_dir.as_deref());
    let source = if cli.libexec_dir.is_some() {
        "--libexec-dir"
    } else if wg_monitor::BUILD_LIBEXEC_DIR.is_some() {
        "set at build time"
    } else {
        "beside this binary"
    };
    let mut text = format!(
        "wireguard-rs {} (commit {COMMIT})\nhelpers: {} ({source})\n",
        env!("CARGO_PKG_VERSION"),
        dir.display()
    );
    for binary in [wg_monitor::KEYD_BINARY, wg_monitor::DATAD_BINARY] {
        text.push_str(&format!("  {}\n", helper_version(&dir.join(binary))));
    }
    text.push_str(&format!("platform: {}\n", platform_line()));
    // One write, and a reader that went away (`| head -1`) is no reason to panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
}

/// The `platform:` line of `--version`: the OS, the architecture and the sandbox it has.
fn platform_line() -> String {
    let arch = std::env::consts::ARCH;
    if cfg!(target_os = "linux") {
        let sandbox = if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            "seccomp policies for this architecture"
        } else {
            "NO seccomp policy for this architecture: --no-sandbox only"
        };
        format!("Linux {arch} ({sandbox})")
    } else {
        let (os, sandbox) = if cfg!(target_os = "macos") {
            ("macOS", "the macOS sandbox profiles")
        } else if cfg!(target_os = "freebsd") {
            ("FreeBSD", "Capsicum")
        } else {
            (
                "NetBSD",
                "resource limits only: NetBSD has no syscall sandbox",
            )
        };
        format!("{os} {arch} ({sandbox}; built, NOT YET RUN on {os}: see the README)")
    }
}

/// On macOS, wireguard-go writes the name the kernel gave the interface (`utunN`) to the
/// file named in `WG_TUN_NAME_FILE`, which `wg-quick` reads: so do we. Elsewhere the name
/// is the one asked for, and the variable is ignored as wireguard-go ignores it.
fn write_name_file(interface: &str) -> Result<(), String> {
    if !cfg!(target_os = "macos") {
        return Ok(());
    }
    let Some(path) = std::env::var_os("WG_TUN_NAME_FILE") else {
        return Ok(());
    };
    std::fs::write(&path, format!("{interface}\n")).map_err(|e| {
        format!(
            "cannot write the interface name to WG_TUN_NAME_FILE={}: {e}",
            Path::new(&path).display()
        )
    })
}

/// What `PATH --version` prints, or why it cannot tell.
fn helper_version(path: &Path) -> String {
    match std::process::Command::new(path)
        .arg("--version")
        .env_remove(wg_ipc::IPC_FD_ENV)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => format!(
            "{}: does not answer --version ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("{}: {e}", path.display()),
    }
}

/// The spawner role: started by the monitor, sandboxed as the unprivileged user, starts
/// data planes on request. A start-up failure is sent to the monitor (which names it in
/// its own error) before the spawner exits.
fn run_spawner(cli: &Cli) -> ExitCode {
    use wg_sandbox::{Role, SyscallReport};
    let interface = std::env::var(INTERFACE_ENV).ok();
    let tag = wg_ipc::worker::log_tag(Some("spawner"), interface.as_deref());
    let fail = |message: &dyn std::fmt::Display| {
        wg_ipc::worker::print_error_line(&format!("{tag}: {message}"));
        ExitCode::FAILURE
    };
    // Deaf to the group's stop signals (the monitor stops us), and dead with it.
    if let Err(e) = wg_sandbox::ignore_stop_signals() {
        return fail(&e);
    }
    if let Err(e) = wg_sandbox::die_with_parent() {
        return fail(&e);
    }
    wg_ipc::worker::init_logging(Some("spawner"), interface.as_deref(), false);
    // The monitor passes the data plane's user as `--user`.
    let options = cli.options(cli.user.clone().unwrap_or_else(|| cli.datad_user()));
    let fd = match wg_ipc::inherited_fd(wg_ipc::IPC_FD_ENV) {
        Ok(Some(fd)) => fd,
        Ok(None) => return fail(&"--spawner is internal to wireguard-rs"),
        Err(e) => return fail(&e),
    };
    let report = SyscallReport {
        fd: fd.as_raw_fd(),
        prefix: wg_ipc::SIGSYS_REPORT_PREFIX,
    };
    if let Err(e) = wg_sandbox::close_inherited_fds(&[report.fd]) {
        return fail(&e);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let worker_dir = wg_monitor::worker_dir(cli.libexec_dir.as_deref());
    let result: Result<(), String> = runtime.block_on(async {
        let channel = wg_ipc::Channel::from_fd(fd).map_err(|e| e.to_string())?;
        if let Err(e) = wg_sandbox::lock_down(Role::Spawner, &options, Some(report)) {
            let reason = format!("the spawner cannot sandbox itself: {e}");
            let said = channel
                .send(
                    &wg_ipc::messages::SpawnerToMonitor::SpawnFailed {
                        reason: reason.clone(),
                    },
                    &[],
                )
                .await;
            return Err(if said.is_ok() { String::new() } else { reason });
        }
        wg_monitor::spawner::run(channel, worker_dir, options.to_worker_args())
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Already told the monitor, which reports it.
        Err(e) if e.is_empty() => ExitCode::FAILURE,
        Err(e) => fail(&e),
    }
}
