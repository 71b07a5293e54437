//! The C ABI (`wg-ffi`, `crates/ffi/include/wireguard_rs.h`) from C, against wireguard-go:
//! the C program `crates/ffi/examples/c/tunnel.c`, compiled here by the system C compiler
//! against the static library, runs in namespace A, creates its TUN interface
//! (`TUNSETIFF`) and drives a tunnel with `wgTurnOn`; namespace B runs wireguard-go. The
//! test passes traffic both ways (pings, TCP transfers checked by length and hash), then
//! drives the program's phases over its stdin/stdout: a run-time `wgSetConfig` checked
//! with `wgGetConfig` and by the traffic, `wgBumpSockets`, the refusals (NULL, garbage,
//! unknown handles, use after turn-off), `wgTurnOff`, and a clean exit. A second run
//! does the same under valgrind (smaller transfers) and requires no error and no
//! definite or indirect leak.
// Linux only: network namespaces and the Linux daemon.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use wg_e2e::env::workspace_root;
use wg_e2e::net::tcp_transfer;
use wg_e2e::topo::{PORTS, TUN4, TUN6, UNDER4, address_tunnel, two_hosts};
use wg_e2e::wgtool::base64_to_hex;
use wg_e2e::{Env, cmd, link_exists, ping_fails, ping_ok, wait_until};

/// The two runs share two cores: one at a time (valgrind is slow enough alone).
static SERIAL: Mutex<()> = Mutex::new(());

/// Cargo, as the test harness was started with.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Builds `libwireguard_rs.a` (debug; cargo does not hold its lock while tests run) and
/// compiles the C program against it and the checked-in header; the program's path.
fn build_program(env: &Env) -> Result<PathBuf> {
    let root = workspace_root();
    let mut build = cmd::command(&cargo(), &["build", "-p", "wg-ffi"]);
    build.current_dir(&root);
    let out = cmd::output(&mut build, Duration::from_secs(30 * 60))?;
    cmd::ensure_success(&build, &out).context("building wg-ffi")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_relative() { root.join(t) } else { t })
        .unwrap_or_else(|| root.join("target"));
    let lib = target.join("debug").join("libwireguard_rs.a");
    ensure!(lib.is_file(), "{} was not built", lib.display());
    let program = env.dir.path().join("tunnel");
    let source = root.join("crates/ffi/examples/c/tunnel.c");
    let include = root.join("crates/ffi/include");
    let args: Vec<&std::ffi::OsStr> = vec![
        "-std=c11".as_ref(),
        "-Wall".as_ref(),
        "-Wextra".as_ref(),
        "-Werror".as_ref(),
        "-g".as_ref(),
        "-I".as_ref(),
        include.as_os_str(),
        source.as_os_str(),
        lib.as_os_str(),
        // What the static library needs from the system (`cargo rustc -p wg-ffi --
        // --print native-static-libs`).
        "-lpthread".as_ref(),
        "-ldl".as_ref(),
        "-lm".as_ref(),
        "-o".as_ref(),
        program.as_os_str(),
    ];
    let mut cc = Command::new("cc");
    cc.args(&args);
    let out = cmd::output(&mut cc, Duration::from_secs(5 * 60))
        .context("running the C compiler `cc` (Debian: gcc, libc6-dev; `cargo xtask setup`)")?;
    cmd::ensure_success(&cc, &out).context("compiling tunnel.c")?;
    Ok(program)
}

/// The C program, running: its stdin, its stdout lines, its stderr in a log file. On
/// drop it is stopped (SIGTERM, then SIGKILL, to the process group we started).
struct CProgram {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    log: PathBuf,
    timeout: Duration,
}

impl CProgram {
    fn spawn(mut command: Command, log: &Path, timeout: Duration) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let stderr = std::fs::File::create(log).context("creating the program's log")?;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::describe(&command)))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            log: log.to_path_buf(),
            timeout,
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn send(&mut self, text: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to the C program: {}", self.log_tail()))
    }

    /// The program's next line, which must start with `prefix`.
    fn expect(&mut self, prefix: &str) -> Result<String> {
        match self.lines.recv_timeout(self.timeout) {
            Ok(line) if line.starts_with(prefix) => Ok(line),
            Ok(line) => bail!(
                "the C program answered {line:?}, expected {prefix:?}…; its stderr:\n{}",
                self.log_tail()
            ),
            Err(RecvTimeoutError::Timeout) => bail!(
                "no {prefix:?} from the C program within {} s; its stderr:\n{}",
                self.timeout.as_secs(),
                self.log_tail()
            ),
            Err(RecvTimeoutError::Disconnected) => bail!(
                "the C program ended before {prefix:?} ({:?}); its stderr:\n{}",
                self.child.try_wait(),
                self.log_tail()
            ),
        }
    }

    /// Sends a command line and returns the answer line.
    fn command(&mut self, command: &str, answer: &str) -> Result<String> {
        self.send(&format!("{command}\n"))?;
        self.expect(answer)
    }

    /// Closes stdin and waits for the exit status.
    fn finish(&mut self) -> Result<std::process::ExitStatus> {
        drop(self.stdin.take());
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "the C program did not exit within {} s; its stderr:\n{}",
                self.timeout.as_secs(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for CProgram {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if matches!(self.child.try_wait(), Ok(None)) {
            // Our child is unreaped, so its PID (the group id) is still ours.
            let pgid = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
            let _ = killpg(pgid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One run: `valgrind` wraps the program (and shrinks the transfers) when set.
fn run(tag: &str, valgrind: bool) -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let env = match Env::new(tag, env!("CARGO_BIN_EXE_wg-e2e-helper"))? {
        Some(env) => env,
        None => return Ok(()),
    };
    if valgrind {
        ensure!(
            cmd::on_path("valgrind"),
            "valgrind is not installed (Debian: valgrind; `cargo xtask setup`)"
        );
    }
    let program = build_program(&env)?;
    let hosts = two_hosts(&env)?;
    let (b, ka, kb) = wg_e2e::topo::go_peer_on_b(&env, &hosts)?;

    let ifname = env.name("wa")?;
    let program_s = program.to_string_lossy().into_owned();
    let (command, timeout, transfer) = if valgrind {
        let command = hosts.a.command(
            "valgrind",
            &[
                "--leak-check=full",
                "--errors-for-leak-kinds=definite,indirect",
                "--error-exitcode=99",
                &program_s,
                &ifname,
            ],
        );
        (command, Duration::from_secs(180), 256 << 10)
    } else {
        let command = hosts.a.command(&program_s, &[&ifname]);
        (command, Duration::from_secs(30), 4 << 20)
    };
    let log = env.dir.path().join(env.file_name("c-program", "log"));
    let mut c = CProgram::spawn(command, &log, timeout)?;

    let settings = format!(
        "private_key={}\nlisten_port={}\npublic_key={}\nendpoint={}:{}\n\
         allowed_ip={}/32\nallowed_ip={}/128\n.\n",
        base64_to_hex(&ka.private)?,
        PORTS[0],
        base64_to_hex(&kb.public)?,
        UNDER4[1],
        PORTS[1],
        TUN4[1],
        TUN6[1],
    );
    c.send(&settings)?;
    let steps = |c: &mut CProgram| -> Result<()> {
        c.expect("up ")?;
        hosts.a.ip(&["link", "set", &ifname, "mtu", "1420"])?;
        address_tunnel(&hosts.a, &ifname, TUN4[0], TUN6[0])?;
        ping_ok(&hosts.a, TUN4[1], &[])?;
        ping_ok(&hosts.a, TUN6[1], &[])?;
        ping_ok(&hosts.b, TUN4[0], &[])?;
        tcp_transfer(&env, &hosts.a, &hosts.b, TUN4[1], 5201, transfer)?;
        tcp_transfer(&env, &hosts.b, &hosts.a, TUN4[0], 5202, transfer)?;

        // wireguard-go's view: A's endpoint is A's underlay address and port.
        let seen = b.dump()?.peer(&ka.public)?.endpoint.clone();
        let expected = format!("{}:{}", UNDER4[0], PORTS[0]);
        ensure!(
            seen.as_deref() == Some(expected.as_str()),
            "wireguard-go sees A at {seen:?}"
        );

        // wgSetConfig at run time: B's IPv6 address leaves A's allowed IPs.
        let answer = c.command(
            &format!(
                "set\npublic_key={}\nreplace_allowed_ips=true\nallowed_ip={}/32\n.",
                base64_to_hex(&kb.public)?,
                TUN4[1]
            ),
            "set ",
        )?;
        ensure!(answer == "set 0", "wgSetConfig answered {answer:?}");
        let has4 = c.command(&format!("has allowed_ip={}/32", TUN4[1]), "has ")?;
        let has6 = c.command(&format!("has allowed_ip={}/128", TUN6[1]), "has ")?;
        ensure!(
            has4 == "has yes" && has6 == "has no",
            "wgGetConfig after the set: {has4:?}, {has6:?}"
        );
        ping_fails(&hosts.a, TUN6[1], &[])?;
        ping_ok(&hosts.a, TUN4[1], &[])?;

        // New sockets on the same port: the tunnel carries on.
        let bump = c.command("bump", "bump ")?;
        ensure!(bump.starts_with("bump ok"), "{bump}: {}", c.log_tail());
        ping_ok(&hosts.a, TUN4[1], &[])?;

        let bad = c.command("bad", "bad ")?;
        ensure!(bad == "bad ok", "{bad}: {}", c.log_tail());
        let off = c.command("off", "off ")?;
        ensure!(off == "off ok", "{off}: {}", c.log_tail());
        // wgTurnOff closed the TUN descriptor: the kernel deletes the interface.
        ensure!(
            wait_until(Duration::from_secs(5), || !link_exists(&hosts.a, &ifname)),
            "{ifname} still exists after wgTurnOff"
        );
        Ok(())
    };
    let result = steps(&mut c).with_context(|| b.diag());
    let status = c.finish();
    result?;
    let status = status?;
    let tail = c.log_tail();
    ensure!(
        status.success(),
        "the C program exited with {status}{}; its stderr:\n{tail}",
        if valgrind && status.code() == Some(99) {
            " (valgrind found errors or leaks)"
        } else {
            ""
        }
    );
    if valgrind {
        let summary: Vec<&str> = tail
            .lines()
            .filter(|l| {
                [
                    "definitely lost",
                    "indirectly lost",
                    "possibly lost",
                    "ERROR SUMMARY",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .collect();
        eprintln!("valgrind:\n{}", summary.join("\n"));
    }
    Ok(())
}

#[test]
fn a_c_program_drives_a_tunnel_to_wireguard_go() -> Result<()> {
    run("fc", false)
}

#[test]
fn the_c_program_under_valgrind_has_no_errors_and_no_leaks() -> Result<()> {
    run("fv", true)
}
