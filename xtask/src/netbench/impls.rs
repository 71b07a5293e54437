//! The implementations under test and their daemons: finding them, turning a command
//! template into a process in a namespace, waiting for the UAPI socket, configuring it
//! with `wg setconf` and stopping it by PID.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, Background};
use crate::netns::Namespace;

/// Where userspace implementations put their UAPI sockets (a path, so shared by every
/// namespace: interface names must be unique on the machine).
pub(crate) const SOCKET_DIR: &str = "/var/run/wireguard";
/// How long a daemon gets to answer on its UAPI socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
/// Bound for `wg setconf` (10,000 peers take about a second).
const SETCONF_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for `ip` commands.
const SHORT: Duration = Duration::from_secs(10);
/// Label of the reference implementation (ratios are relative to it).
pub(crate) const OURS: &str = "wireguard-rs";
/// Label of the no-tunnel ceiling.
pub(crate) const PLAIN: &str = "plain";

/// What is measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A userspace daemon started from a command template (`{if}` = interface name).
    Daemon(String),
    /// No tunnel: the tests run over the veth addresses.
    Plain,
}

/// One column of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Impl {
    pub(crate) label: String,
    pub(crate) kind: Kind,
}

/// Parses `--impl LABEL=CMD_TEMPLATE`.
pub(crate) fn parse_impl_arg(arg: &str) -> Result<Impl> {
    let Some((label, template)) = arg.split_once('=') else {
        bail!("--impl {arg:?}: expected LABEL=CMD_TEMPLATE, e.g. 'go2=wireguard-go -f {{if}}'");
    };
    let label = label.trim();
    if label.is_empty()
        || !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
    {
        bail!("--impl {arg:?}: the label must be letters, digits, '-', '_', '.' or '+'");
    }
    if !template.contains("{if}") {
        bail!("--impl {arg:?}: the template must contain {{if}} (the interface name)");
    }
    Ok(Impl {
        label: label.to_owned(),
        kind: Kind::Daemon(template.trim().to_owned()),
    })
}

/// `boringtun-cli` on PATH, else in `$CARGO_HOME/bin` or `~/.cargo/bin` (where
/// `cargo xtask setup` installs it).
pub(crate) fn find_boringtun() -> Option<PathBuf> {
    if let Some(p) = cmd::find_on_path("boringtun-cli") {
        return Some(p);
    }
    let mut dirs = Vec::new();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/root/.cargo/bin"));
    dirs.into_iter()
        .map(|d| d.join("boringtun-cli"))
        .find(|p| p.is_file())
}

/// Quotes `s` for a command template or `sh -c` (the demo's `{bin}`).
pub(crate) fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=,@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A command line split for exec: leading `VAR=value` words become environment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CommandLine {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) argv: Vec<String>,
}

/// Splits a template line into words (single and double quotes group, no escapes inside
/// single quotes, `\` escapes elsewhere). A line with shell syntax (`; & | < > ( ) $ \``)
/// is run by `sh -c` instead.
pub(crate) fn split_command(line: &str) -> Result<CommandLine> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    let mut shell = false;
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => bail!("unterminated ' in {line:?}"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => cur.extend(chars.next()),
                        Some(x) => cur.push(x),
                        None => bail!("unterminated \" in {line:?}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                if ";&|<>()$`\n".contains(c) {
                    shell = true;
                }
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if shell {
        return Ok(CommandLine {
            env: Vec::new(),
            argv: vec!["sh".into(), "-c".into(), line.to_owned()],
        });
    }
    let mut env = Vec::new();
    let mut rest = words.into_iter().peekable();
    while let Some(w) = rest.peek() {
        let Some((k, v)) = w.split_once('=') else {
            break;
        };
        let valid = !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            break;
        }
        env.push((k.to_owned(), v.to_owned()));
        rest.next();
    }
    let argv: Vec<String> = rest.collect();
    if argv.is_empty() {
        bail!("command template {line:?} names no program");
    }
    Ok(CommandLine { env, argv })
}

/// A running daemon: stopped by PID (SIGTERM to its process group, then SIGKILL), then
/// any leftover descendant killed by PID and start time, and its socket file removed, on
/// drop.
pub(crate) struct Daemon {
    /// Fields drop in order: the process goes before the socket file is removed.
    proc: Background,
    pub(crate) ifname: String,
    pub(crate) sock: PathBuf,
    pub(crate) log: PathBuf,
    /// Spawn until the UAPI socket answered `get=1`.
    pub(crate) startup: Duration,
    ns: String,
}

impl Daemon {
    /// Starts `template` with `{if}` = `ifname` in `ns`, logging to `log`, and waits until
    /// its UAPI socket answers.
    pub(crate) fn start(ns: &Namespace, template: &str, ifname: &str, log: &Path) -> Result<Self> {
        let sock = Path::new(SOCKET_DIR).join(format!("{ifname}.sock"));
        if sock.exists() {
            if uapi_get(&sock).is_ok() {
                bail!(
                    "{} is served by a running process: another run uses interface name {ifname}",
                    sock.display()
                );
            }
            fs::remove_file(&sock)
                .with_context(|| format!("could not remove stale socket {}", sock.display()))?;
        }
        let line = template.replace("{if}", ifname);
        let parsed = split_command(&line)?;
        let mut c = ns.command(&parsed.argv[0], &parsed.argv[1..]);
        for (k, v) in &parsed.env {
            c.env(k, v);
        }
        let t0 = Instant::now();
        let mut proc = Background::spawn(&format!("daemon {ifname}"), &mut c, Some(log))?;
        loop {
            if sock.exists() && uapi_get(&sock).is_ok() {
                break;
            }
            if let Some(status) = proc.poll_exit()? {
                let hint = if status.success() {
                    " (exit 0 usually means it went to the background: give it its foreground \
                     flag, e.g. -f)"
                } else {
                    ""
                };
                bail!(
                    "`{line}` exited ({status}) before its UAPI socket {} answered{hint}; its \
                     output ({}):\n{}",
                    sock.display(),
                    log.display(),
                    proc.log_tail(20)
                );
            }
            if t0.elapsed() > SOCKET_WAIT {
                bail!(
                    "`{line}` (pid {}) did not answer on {} within {} s; its output ({}):\n{}",
                    proc.pid(),
                    sock.display(),
                    SOCKET_WAIT.as_secs(),
                    log.display(),
                    proc.log_tail(20)
                );
            }
            cmd::sleep(Duration::from_millis(5))?;
        }
        let startup = t0.elapsed();
        Ok(Self {
            proc,
            ifname: ifname.to_owned(),
            sock,
            log: log.to_path_buf(),
            startup,
            ns: ns.name().to_owned(),
        })
    }

    /// The PID we started (the root of the daemon's process tree).
    pub(crate) fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Fails if the daemon has exited.
    pub(crate) fn check_alive(&mut self, during: &str) -> Result<()> {
        if let Some(status) = self.proc.poll_exit()? {
            bail!(
                "daemon {} exited ({status}) during {during}; its output ({}):\n{}",
                self.ifname,
                self.log.display(),
                self.proc.log_tail(20)
            );
        }
        Ok(())
    }

    /// The last lines of its log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// `wg setconf IFNAME FILE` inside its namespace; returns how long it took.
    pub(crate) fn setconf(&self, ns: &Namespace, file: &Path) -> Result<Duration> {
        let t0 = Instant::now();
        let f = file.to_string_lossy();
        ns.exec("wg", &["setconf", &self.ifname, &f], SETCONF_TIMEOUT)
            .with_context(|| format!("configuring {} with wg setconf", self.ifname))?;
        Ok(t0.elapsed())
    }

    /// MTU 1420, `addr` (CIDR) and link up.
    pub(crate) fn link_up(&self, ns: &Namespace, addr: Option<&str>) -> Result<()> {
        ns.ip(&["link", "set", &self.ifname, "mtu", "1420"])?;
        if let Some(addr) = addr {
            ns.ip(&["addr", "add", addr, "dev", &self.ifname])?;
        }
        ns.ip(&["link", "set", &self.ifname, "up"])?;
        Ok(())
    }

    /// Number of peers the daemon reports over UAPI.
    pub(crate) fn peer_count(&self) -> Result<usize> {
        let text = uapi_get(&self.sock)?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("public_key="))
            .count())
    }

    /// `wg show IFNAME` (best effort, for diagnostics).
    pub(crate) fn show(&self) -> String {
        let mut c = cmd::command(
            "ip",
            &["netns", "exec", &self.ns, "wg", "show", &self.ifname],
        );
        match cmd::cleanup_output(&mut c, SHORT) {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("{e:#}"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Descendants that are not in the process group (a daemon that calls setsid)
        // would survive the group signal: note them first, kill them by PID afterwards.
        let tree = super::measure::daemon_tree(self.proc.pid());
        self.proc.stop(Duration::from_secs(3));
        // Workers outside the group end by themselves once the monitor is gone: give them
        // a moment, then kill what is left by PID (checked against its start time).
        let ours = |p: &super::measure::ProcStat| {
            tree.iter()
                .any(|(t, _)| t.pid == p.pid && t.starttime == p.starttime)
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        let still = loop {
            let still: Vec<_> = super::measure::all_processes()
                .into_iter()
                .filter(|p| ours(p) && p.state != 'Z')
                .collect();
            if still.is_empty() || Instant::now() >= deadline {
                break still;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for p in still {
            eprintln!(
                "bench: {} (pid {}) of daemon {} outlived it by 3 s; killing it",
                p.comm, p.pid, self.ifname
            );
            if let Ok(pid) = i32::try_from(p.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if self.sock.exists() {
            let _ = fs::remove_file(&self.sock);
        }
    }
}

/// Sends `get=1` on a UAPI socket and returns the answer; fails unless it ends with
/// `errno=0`.
pub(crate) fn uapi_get(sock: &Path) -> Result<String> {
    let mut s = UnixStream::connect(sock)
        .with_context(|| format!("could not connect to {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"get=1\n\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = s
            .read(&mut chunk)
            .with_context(|| format!("reading from {}", sock.display()))?;
        buf.extend_from_slice(&chunk[..n]);
        if n == 0 || buf.ends_with(b"\n\n") {
            break;
        }
        if Instant::now() > deadline {
            bail!("{} did not finish its answer within 10 s", sock.display());
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    if !text.contains("errno=0") {
        bail!("{} answered get=1 with {:?}", sock.display(), text.trim());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impl_arguments() {
        let i = parse_impl_arg("go2=wireguard-go -f {if}").unwrap();
        assert_eq!(i.label, "go2");
        assert_eq!(i.kind, Kind::Daemon("wireguard-go -f {if}".into()));
        let i = parse_impl_arg("bt=WG_THREADS=2 boringtun-cli -f {if}").unwrap();
        assert_eq!(
            i.kind,
            Kind::Daemon("WG_THREADS=2 boringtun-cli -f {if}".into())
        );
        assert!(parse_impl_arg("wireguard-go -f {if}").is_err());
        assert!(parse_impl_arg("x=wireguard-go").is_err());
        assert!(parse_impl_arg("a b=x {if}").is_err());
    }

    #[test]
    fn splits_templates() {
        let c =
            split_command("WG_THREADS=2 A_B='x y' /bin/prog -f 'my if' \"q\\\"\" last").unwrap();
        assert_eq!(
            c.env,
            vec![
                ("WG_THREADS".into(), "2".into()),
                ("A_B".into(), "x y".into())
            ]
        );
        assert_eq!(c.argv, vec!["/bin/prog", "-f", "my if", "q\"", "last"]);
        let c = split_command("prog --opt=1 x").unwrap();
        assert!(c.env.is_empty());
        assert_eq!(c.argv, vec!["prog", "--opt=1", "x"]);
        let c = split_command("prog x 2>/dev/null").unwrap();
        assert_eq!(c.argv, vec!["sh", "-c", "prog x 2>/dev/null"]);
        assert!(split_command("A=1").is_err());
        assert!(split_command("prog 'open").is_err());
    }

    #[test]
    fn quotes_for_templates() {
        assert_eq!(
            quote("/work/target/release/wireguard-rs"),
            "/work/target/release/wireguard-rs"
        );
        assert_eq!(quote("/a b/it's"), r"'/a b/it'\''s'");
        let c = split_command(&format!("{} -f x", quote("/a b/it's"))).unwrap();
        assert_eq!(c.argv[0], "/a b/it's");
    }
}
