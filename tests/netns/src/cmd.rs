//! Running external commands: every one bounded in time, every one interruptible (see
//! [`request_interrupt`]; cleanup commands excepted), and background processes stopped by
//! the PID we started.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Set by [`request_interrupt`] (a Ctrl-C/SIGTERM/SIGHUP handler); polled by every wait loop.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Records that a termination signal arrived (call it from a signal handler, e.g. a
/// `ctrlc` handler): every running command is killed, every wait loop returns an error, and
/// the RAII guards clean up while the errors propagate. Returns whether it was already set.
pub fn request_interrupt() -> bool {
    INTERRUPTED.swap(true, Ordering::SeqCst)
}

/// Whether a termination signal arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with a clear error once a termination signal arrived.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted by a signal");
    }
    Ok(())
}

/// Sleeps up to `d`, returning early with an error on interruption.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// `program arg1 arg2 …` for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
            s.push('\'');
            s.push_str(&a.replace('\'', r"'\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Whether `program` is found on `PATH` (an executable file).
pub fn on_path(program: &str) -> bool {
    find_on_path(program).is_some()
}

/// The full path of `program` on `PATH`, if any.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// How to run one command.
#[derive(Clone, Copy)]
enum Mode {
    /// Capture stdout and stderr.
    Capture,
    /// Let the command write to our terminal.
    Inherit,
}

/// Runs `cmd` to completion within `timeout`, capturing its output. A non-zero exit is
/// not an error here (see [`checked`]); failing to start, a timeout and an interruption
/// are.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    run(cmd, timeout, None, Mode::Capture, true)
}

/// Like [`output`] but feeds `input` on stdin.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8], timeout: Duration) -> Result<Output> {
    run(cmd, timeout, Some(input), Mode::Capture, true)
}

/// Like [`output`] but not cut short by Ctrl-C: for cleanup after an interruption.
pub fn cleanup_output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    run(cmd, timeout, None, Mode::Capture, false)
}

/// Runs `cmd` with the terminal as its stdout/stderr, within `timeout`.
pub fn status_inherit(cmd: &mut Command, timeout: Duration) -> Result<ExitStatus> {
    run(cmd, timeout, None, Mode::Inherit, true).map(|o| o.status)
}

/// Runs `cmd`, requiring exit status 0; returns its stdout. The error names the command
/// and quotes its stderr.
pub fn checked(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let out = output(cmd, timeout)?;
    ensure_success(cmd, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Turns a non-zero exit into an error quoting stderr (or stdout if stderr is empty).
pub fn ensure_success(cmd: &Command, out: &Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = if stderr.trim().is_empty() {
        stdout.trim()
    } else {
        stderr.trim()
    };
    bail!("`{}` failed ({}): {}", describe(cmd), out.status, text)
}

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> Option<mpsc::Receiver<Vec<u8>>> {
    let mut pipe = pipe?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    Some(rx)
}

fn run(
    cmd: &mut Command,
    timeout: Duration,
    input: Option<&[u8]>,
    mode: Mode,
    interruptible: bool,
) -> Result<Output> {
    if interruptible {
        check_interrupted()?;
    }
    let what = describe(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    match mode {
        Mode::Capture => cmd.stdout(Stdio::piped()).stderr(Stdio::piped()),
        Mode::Inherit => cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit()),
    };
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!(
                "`{what}`: program not found; install it (as root: `cargo xtask setup`) or fix PATH"
            )
        } else {
            anyhow!("could not start `{what}`: {e}")
        }
    })?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let out_rx = collect(child.stdout.take());
    let err_rx = collect(child.stderr.take());

    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{what}`"))?
        {
            break status;
        }
        if interruptible && interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted by a signal while running `{what}`");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{what}` did not finish within {} s and was killed",
                timeout.as_secs()
            );
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    // A grandchild may keep the pipes open (a daemonizing program): don't wait forever.
    let grace = Duration::from_secs(2);
    let take = |rx: Option<mpsc::Receiver<Vec<u8>>>| {
        rx.and_then(|rx| rx.recv_timeout(grace).ok())
            .unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: take(out_rx),
        stderr: take(err_rx),
    })
}

/// A process started in the background in its own process group (so a terminal Ctrl-C
/// reaches us first and we decide the teardown order). On drop it is stopped: SIGTERM to
/// the group whose id is the PID we started, then SIGKILL after a grace period.
pub struct Background {
    label: String,
    child: Child,
    /// The exit status, once we have reaped the process.
    exited: Option<ExitStatus>,
    log: Option<PathBuf>,
}

impl Background {
    /// Starts `cmd` with stdin closed and stdout+stderr appended to `log` (or discarded).
    pub fn spawn(label: &str, cmd: &mut Command, log: Option<&Path>) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        check_interrupted()?;
        let what = describe(cmd);
        cmd.stdin(Stdio::null());
        match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("could not open log file {}", path.display()))?;
                let file2 = file
                    .try_clone()
                    .with_context(|| format!("could not open log file {}", path.display()))?;
                cmd.stdout(file).stderr(file2);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        cmd.process_group(0);
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!("`{what}`: program not found; install it (as root: `cargo xtask setup`)")
            } else {
                anyhow!("could not start `{what}`: {e}")
            }
        })?;
        Ok(Self {
            label: label.to_owned(),
            child,
            exited: None,
            log: log.map(Path::to_path_buf),
        })
    }

    /// The PID we started (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn poll_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.label))?;
        }
        Ok(self.exited)
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.poll_exit()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log file given to [`Background::spawn`], if any.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The last `lines` lines of the log file, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        if all.is_empty() {
            return "(no output)".to_owned();
        }
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the process group: SIGTERM, up to `grace` for every member to exit, then
    /// SIGKILL; finally reaps our child.
    pub fn stop(&mut self, grace: Duration) {
        // Only signal while our child is unreaped: as long as it exists (even as a
        // zombie) its PID, which is also the group id, cannot be reused by an unrelated
        // process, so the group holds only what we started.
        if self.exited.is_some() {
            return;
        }
        let pid = self.child.id();
        let pgid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        let _ = killpg(pgid, Signal::SIGTERM);
        if !wait_group_gone(pid, grace) {
            eprintln!(
                "netns: {} (process group {pid}) ignored SIGTERM for {} s; sending SIGKILL",
                self.label,
                grace.as_secs()
            );
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = wait_group_gone(pid, Duration::from_secs(2));
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }
}

/// Waits until no live (non-zombie) process is left in process group `pgid`.
fn wait_group_gone(pgid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if live_group_members(pgid) == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The `/proc/PID/stat` line of every process there is (none if `/proc` cannot be read;
/// processes that exit meanwhile are skipped).
pub fn proc_stat_lines() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .collect()
}

/// Counts processes in group `pgid` that are not zombies, from `/proc/*/stat`.
fn live_group_members(pgid: u32) -> usize {
    proc_stat_lines()
        .into_iter()
        .filter(|stat| {
            // "pid (comm) state ppid pgrp …": comm may contain spaces and parentheses.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut f = rest.split_whitespace();
            let state = f.next();
            let pgrp = f.nth(1).and_then(|g| g.parse::<u32>().ok());
            pgrp == Some(pgid) && state != Some("Z") && state != Some("X")
        })
        .count()
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("label", &self.label)
            .field("pid", &self.child.id())
            .field("exited", &self.exited)
            .field("log", &self.log)
            .finish()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Convenience: a `Command` from a program and arguments.
pub fn command<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// `wg pubkey` of a base64 private key (as `wg genkey` prints it).
pub fn wg_pubkey(private: &str) -> Result<String> {
    let out = output_with_stdin(
        &mut command::<&str>("wg", &["pubkey"]),
        private.as_bytes(),
        Duration::from_secs(10),
    )?;
    if !out.status.success() {
        anyhow::bail!(
            "`wg pubkey` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
