//! A WireGuard userspace daemon under test, running in the foreground inside a namespace.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use wg_netns::cmd::{self, Background};
use wg_netns::netns::Namespace;

use crate::env::{Env, SHORT};
use crate::wgtool::{Conf, Dump};

/// Where userspace WireGuard implementations put their UAPI sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// How long a daemon gets to create its UAPI socket.
const SOCKET_WAIT: Duration = Duration::from_secs(15);

/// An implementation under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// Ours: `wireguard-rs -f IFNAME`.
    Rs,
    /// Ours on its fallback paths: one packet per TUN read and write, one datagram per
    /// UDP call, all crypto on the event loop.
    RsPlain,
    /// Ours with three crypto helper threads whatever the machine (the default on small
    /// machines is none).
    RsThreads,
    /// Ours with the portable data plane of macOS and the BSDs (one packet per TUN read,
    /// one datagram per UDP call, no crypto threads) in its data-plane process, with the
    /// real monitor, keyd and spawner: the test-hook build ([`crate::env::test_hooks_bin_dir`])
    /// with `WG_RS_TEST_PORTABLE_PLANE` set, on a TUN without offloads.
    RsPortable,
    /// What macOS runs: [`Impl::RsPortable`] with every channel between the processes a
    /// framed `SOCK_STREAM` pair (`WG_RS_TEST_STREAM_IPC`), macOS's IPC transport.
    RsPortableStream,
    /// `wireguard-go -f IFNAME` (Debian's package).
    Go,
    /// `boringtun-cli -f --disable-drop-privileges IFNAME`.
    Boringtun,
}

impl Impl {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs => "wireguard-rs",
            Self::RsPlain => "wireguard-rs (no offloads)",
            Self::RsThreads => "wireguard-rs (3 crypto threads)",
            Self::RsPortable => "wireguard-rs (portable data plane)",
            Self::RsPortableStream => "wireguard-rs (portable data plane, stream IPC)",
            Self::Go => "wireguard-go",
            Self::Boringtun => "boringtun",
        }
    }

    /// The program and its arguments for interface `ifname`.
    fn command_line(self, env: &Env, ifname: &str) -> Result<(OsString, Vec<String>)> {
        Ok(match self {
            Self::Rs => (
                env.rs_bin().into_os_string(),
                vec!["-f".into(), ifname.into()],
            ),
            Self::RsPlain => (
                env.rs_bin().into_os_string(),
                [
                    "-f",
                    "--no-tun-offload",
                    "--no-udp-gso",
                    "--no-udp-gro",
                    "--crypto-threads",
                    "0",
                    ifname,
                ]
                .map(String::from)
                .to_vec(),
            ),
            Self::RsThreads => (
                env.rs_bin().into_os_string(),
                ["-f", "--crypto-threads", "3", ifname]
                    .map(String::from)
                    .to_vec(),
            ),
            Self::RsPortable | Self::RsPortableStream => (
                crate::env::test_hooks_bin_dir()?
                    .join("wireguard-rs")
                    .into_os_string(),
                ["-f", "--no-tun-offload", ifname]
                    .map(String::from)
                    .to_vec(),
            ),
            Self::Go => (
                find_program("WG_E2E_WIREGUARD_GO", "wireguard-go")?,
                vec!["-f".into(), ifname.into()],
            ),
            Self::Boringtun => (
                find_program("WG_E2E_BORINGTUN", "boringtun-cli")?,
                vec![
                    "-f".into(),
                    "--disable-drop-privileges".into(),
                    ifname.into(),
                ],
            ),
        })
    }
}

/// `$ENV_VAR`, else `program` on PATH, else in `$CARGO_HOME/bin` or `~/.cargo/bin`.
fn find_program(env_var: &str, program: &str) -> Result<OsString> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(p);
    }
    if let Some(p) = cmd::find_on_path(program) {
        return Ok(p.into_os_string());
    }
    let homes = [
        std::env::var_os("CARGO_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")),
    ];
    for home in homes.into_iter().flatten() {
        let p = home.join("bin").join(program);
        if p.is_file() {
            return Ok(p.into_os_string());
        }
    }
    bail!(
        "{program} not found (PATH, ~/.cargo/bin, or ${env_var}); install it with `cargo xtask setup` (as root)"
    )
}

/// A daemon running in the foreground in a namespace. Dropping it stops its process group
/// (the PID we started: SIGTERM, then SIGKILL) and removes its socket file if it is left.
#[derive(Debug)]
pub struct Daemon {
    bg: Background,
    /// Which implementation.
    pub kind: Impl,
    /// Its interface name (unique for the test run).
    pub ifname: String,
    /// The namespace it runs in.
    pub ns: String,
    socket: PathBuf,
}

impl Daemon {
    /// Starts `kind` for interface `ifname` in `ns` and waits (bounded) for its UAPI
    /// socket to answer.
    pub fn start(env: &Env, ns: &Namespace, kind: Impl, ifname: &str) -> Result<Self> {
        let (program, args) = kind.command_line(env, ifname)?;
        let extra_env: &[(&str, &str)] = match kind {
            Impl::RsPortable => &[("WG_RS_TEST_PORTABLE_PLANE", "1")],
            Impl::RsPortableStream => &[
                ("WG_RS_TEST_PORTABLE_PLANE", "1"),
                ("WG_RS_TEST_STREAM_IPC", "1"),
            ],
            _ => &[],
        };
        let mut d = Self::spawn(env, ns, kind, ifname, program, args, extra_env)?;
        d.wait_ready()?;
        Ok(d)
    }

    /// Starts `BIN_DIR/wireguard-rs -f IFNAME` in `ns` with `extra_env` added to its
    /// environment (inherited by its workers), e.g. a build with test hooks. With
    /// `wait_ready` it waits (bounded) for the UAPI socket to answer, as [`Daemon::start`];
    /// without, it returns at once (for a daemon expected to die during start-up).
    pub fn start_rs_with(
        env: &Env,
        ns: &Namespace,
        ifname: &str,
        bin_dir: &Path,
        extra_env: &[(&str, &str)],
        wait_ready: bool,
    ) -> Result<Self> {
        let program = bin_dir.join("wireguard-rs").into_os_string();
        let args = vec!["-f".to_owned(), ifname.to_owned()];
        let mut d = Self::spawn(env, ns, Impl::Rs, ifname, program, args, extra_env)?;
        if wait_ready {
            d.wait_ready()?;
        }
        Ok(d)
    }

    /// Starts our daemon (the binaries under test) with extra command-line arguments
    /// before the interface name, and waits for its UAPI socket.
    pub fn start_rs_args(env: &Env, ns: &Namespace, ifname: &str, extra: &[&str]) -> Result<Self> {
        let (program, mut args) = Impl::Rs.command_line(env, ifname)?;
        let at = args.len().saturating_sub(1);
        for (i, arg) in extra.iter().enumerate() {
            args.insert(at + i, (*arg).to_owned());
        }
        let mut d = Self::spawn(env, ns, Impl::Rs, ifname, program, args, &[])?;
        d.wait_ready()?;
        Ok(d)
    }

    fn spawn(
        env: &Env,
        ns: &Namespace,
        kind: Impl,
        ifname: &str,
        program: OsString,
        args: Vec<String>,
        extra_env: &[(&str, &str)],
    ) -> Result<Self> {
        let socket = socket_path(ifname);
        if socket.exists() {
            // Only ours can carry this run's unique name: a leftover of a killed run.
            fs::remove_file(&socket)
                .with_context(|| format!("could not remove stale {}", socket.display()))?;
        }
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", ns.name()])
            .arg(&program)
            .args(&args);
        c.env("LOG_LEVEL", "verbose").env("WG_LOG_LEVEL", "info");
        c.envs(extra_env.iter().copied());
        let log = env.dir.path().join(env.file_name(ifname, "log"));
        let bg = Background::spawn(&format!("{} {ifname}", kind.name()), &mut c, Some(&log))?;
        Ok(Self {
            bg,
            kind,
            ifname: ifname.to_owned(),
            ns: ns.name().to_owned(),
            socket,
        })
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.socket.exists() && std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self.bg.poll_exit()? {
                bail!(
                    "{} for {} exited ({status}) before its UAPI socket answered; log:\n{}",
                    self.kind.name(),
                    self.ifname,
                    self.log_tail(30)
                );
            }
            if start.elapsed() > SOCKET_WAIT {
                bail!(
                    "{} for {} did not create {} within {} s; log:\n{}",
                    self.kind.name(),
                    self.ifname,
                    self.socket.display(),
                    SOCKET_WAIT.as_secs(),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The PID we started (the daemon itself: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.bg.pid()
    }

    /// Its UAPI socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `wg ARGS…` inside the daemon's namespace, without checking the exit status.
    pub fn wg_output(&self, args: &[&str]) -> Result<Output> {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.ns, "wg"]).args(args);
        cmd::output(&mut c, SHORT)
    }

    /// `wg ARGS…` inside the daemon's namespace, requiring success; returns stdout.
    pub fn wg(&self, args: &[&str]) -> Result<String> {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.ns, "wg"]).args(args);
        let out = cmd::output(&mut c, SHORT)?;
        cmd::ensure_success(&c, &out).with_context(|| self.log_tail(20))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `wg set IFNAME ARGS…`, requiring success.
    pub fn set(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["set", self.ifname.as_str()];
        all.extend_from_slice(args);
        self.wg(&all).map(drop)
    }

    /// `wg show IFNAME dump`, parsed.
    pub fn dump(&self) -> Result<Dump> {
        let text = self.wg(&["show", &self.ifname, "dump"])?;
        Dump::parse(&text)
    }

    /// `wg showconf IFNAME`, parsed.
    pub fn showconf(&self) -> Result<Conf> {
        let text = self.wg(&["showconf", &self.ifname])?;
        Conf::parse(&text).with_context(|| format!("parsing `wg showconf`:\n{text}"))
    }

    /// `wg show IFNAME` for diagnostics (never fails).
    pub fn show_text(&self) -> String {
        match self.wg(&["show", &self.ifname]) {
            Ok(t) => t,
            Err(e) => format!("(wg show failed: {e:#})"),
        }
    }

    /// `wg show` and the end of the log, for error messages.
    pub fn diag(&self) -> String {
        format!(
            "--- {} {} in {} (pid {}):\n{}--- log:\n{}\n",
            self.kind.name(),
            self.ifname,
            self.ns,
            self.pid(),
            self.show_text(),
            self.log_tail(25)
        )
    }

    /// `Ok` if `failures` is empty, else an error listing them, one a line, with the last
    /// lines of the daemon's output.
    pub fn ensure_no_failures(&self, failures: &[String]) -> Result<()> {
        ensure!(
            failures.is_empty(),
            "{}\nlog:\n{}",
            failures.join("\n"),
            self.log_tail(20)
        );
        Ok(())
    }

    /// The last `lines` lines of the daemon's output.
    pub fn log_tail(&self, lines: usize) -> String {
        self.bg.log_tail(lines)
    }

    /// The daemon's whole output so far.
    pub fn log(&self) -> String {
        self.bg
            .log_path()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// `Some(status)` once the daemon has exited.
    pub fn poll_exit(&mut self) -> Result<Option<ExitStatus>> {
        self.bg.poll_exit()
    }

    /// Waits up to `timeout` for the daemon to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.bg.wait_exit(timeout)
    }

    /// The daemon and all its descendants (wireguard-rs: the monitor, keyd and datad),
    /// sorted: a changed set after an attack means something crashed and was restarted.
    pub fn process_tree(&self) -> Vec<u32> {
        let mut tree = descendants(self.pid());
        tree.sort_unstable();
        tree
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.bg.stop(Duration::from_secs(3));
        if self.socket.exists() {
            let _ = fs::remove_file(&self.socket);
        }
    }
}

/// `/var/run/wireguard/IFNAME.sock`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// (pid, ppid) of every live process, from `/proc/*/stat`.
pub fn process_table() -> Vec<(u32, u32)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let mut f = rest.split_whitespace();
            let state = f.next()?;
            if state == "Z" || state == "X" {
                return None;
            }
            let ppid = f.next()?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// `root` and every live process below it in the process tree, parents before children.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut tree = vec![root];
    let table = process_table();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            table
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    tree
}

/// PIDs of live processes whose command line contains `word` as a whole argument and
/// whose executable is `exe` (used to find a daemon that put itself in the background).
pub fn find_processes(exe: &Path, word: &str) -> Vec<u32> {
    process_table()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| {
            let exe_ok = fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|p| fs::canonicalize(exe).is_ok_and(|e| e == p));
            let args = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            exe_ok && args.split(|b| *b == 0).any(|a| a == word.as_bytes())
        })
        .collect()
}
