//! Reusable network-namespace plumbing for the demo, the self-test and the end-to-end
//! tests: unique names, a [`Namespace`] RAII type and a [`VethPair`] helper.
//!
//! Everything goes through `ip` from iproute2 and is bounded in time. Names carry a
//! per-run prefix (`<tag><pid>`), so parallel runs never collide and leftovers of a run
//! are recognisable.

use std::fmt;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Bound for one `ip` invocation.
const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// Linux IFNAMSIZ minus the terminating NUL.
pub const IFNAME_MAX: usize = 15;

/// The names used by one run: `<tag><pid>` followed by a role suffix.
#[derive(Clone, Debug)]
pub struct RunNames {
    prefix: String,
}

impl RunNames {
    /// Names for this process: `tag` must be short letters (e.g. `wgrsd`).
    pub fn new(tag: &str) -> Result<Self> {
        let prefix = format!("{tag}{}", std::process::id());
        // Longest name we hand out is prefix + 2 characters.
        if prefix.len() + 2 > IFNAME_MAX {
            bail!("name prefix {prefix:?} is too long for interface names (max {IFNAME_MAX})");
        }
        Ok(Self { prefix })
    }

    /// The per-run prefix, e.g. `wgrsd4242`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A name `<prefix><suffix>`, checked against IFNAMSIZ.
    pub fn name(&self, suffix: &str) -> Result<String> {
        let n = format!("{}{suffix}", self.prefix);
        if n.len() > IFNAME_MAX {
            bail!("interface name {n:?} is longer than {IFNAME_MAX} characters");
        }
        Ok(n)
    }

    /// Whether `name` belongs to this run: the prefix followed by a non-digit, so that
    /// `wgrsd12a` is not mistaken for a name of run `wgrsd1`.
    pub fn owns(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.chars().next().is_some_and(|c| !c.is_ascii_digit()))
    }
}

/// `ip netns add` was refused: not root, or no CAP_SYS_ADMIN (e.g. an unprivileged
/// container). The self-test and the end-to-end tests skip on this error rather than fail.
#[derive(Debug)]
pub struct NotPermitted(pub String);

impl fmt::Display for NotPermitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "creating a network namespace is not permitted here ({}); run as root on a host \
             or a privileged container",
            self.0
        )
    }
}

impl std::error::Error for NotPermitted {}

/// A network namespace that exists for as long as this value does.
#[derive(Debug)]
pub struct Namespace {
    name: String,
    live: bool,
}

impl Namespace {
    /// `ip netns add NAME`, then `lo` up inside.
    pub fn create(name: &str) -> Result<Self> {
        let mut c = cmd::command("ip", &["netns", "add", name]);
        let out = cmd::output(&mut c, IP_TIMEOUT)?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if err.contains("Operation not permitted") || err.contains("Permission denied") {
                return Err(NotPermitted(err).into());
            }
            bail!("`ip netns add {name}` failed: {err}");
        }
        let ns = Self {
            name: name.to_owned(),
            live: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that runs `program args…` inside the namespace (`ip netns exec`).
    /// `ip netns exec` execs the program, so the PID of the spawned child is the
    /// program's own.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, program: &str, args: &[S]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c.args(args);
        c
    }

    /// Runs `program args…` inside the namespace, requiring success; returns stdout.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(
        &self,
        program: &str,
        args: &[S],
        timeout: Duration,
    ) -> Result<String> {
        cmd::checked(&mut self.command(program, args), timeout)
    }

    /// `ip -n NAME args…`, requiring success.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args);
        cmd::checked(&mut c, IP_TIMEOUT)
    }

    /// `ip addr add CIDR dev DEV` and `ip link set DEV up`.
    pub fn address_up(&self, dev: &str, cidr: &str) -> Result<()> {
        self.ip(&["addr", "add", cidr, "dev", dev])?;
        self.ip(&["link", "set", dev, "up"])?;
        Ok(())
    }

    /// Pings `addr` from inside the namespace: `count` echo requests 0.2 s apart, each
    /// waiting at most `wait_s` seconds. Returns the parsed statistics; a ping with no
    /// reply is not an error here (see [`PingStats::ok`]).
    pub fn ping(&self, addr: &str, count: u32, wait_s: u32) -> Result<PingStats> {
        let count_s = count.to_string();
        let wait = wait_s.to_string();
        let mut c = self.command(
            "ping",
            &["-n", "-c", &count_s, "-i", "0.2", "-W", &wait, addr],
        );
        let timeout = Duration::from_secs(u64::from(count * (wait_s + 1) + 10));
        let out = cmd::output(&mut c, timeout)?;
        let text = String::from_utf8_lossy(&out.stdout);
        PingStats::parse(&text).with_context(|| {
            format!(
                "could not read ping statistics from `{}`: {}{}",
                cmd::describe(&c),
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }

    /// Deletes the namespace now, reporting failure (drop only warns).
    pub fn delete(mut self) -> Result<()> {
        self.live = false;
        delete_netns(&self.name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if self.live {
            self.live = false;
            if let Err(e) = delete_netns(&self.name) {
                eprintln!("netns: warning: {e:#}");
            }
        }
    }
}

fn delete_netns(name: &str) -> Result<()> {
    let mut c = cmd::command("ip", &["netns", "del", name]);
    let out = cmd::cleanup_output(&mut c, IP_TIMEOUT)?;
    cmd::ensure_success(&c, &out)
        .with_context(|| format!("could not delete namespace {name}: run `ip netns del {name}`"))
}

/// A veth pair with one end in each of two namespaces. Deleting either namespace removes
/// the pair; dropping this value deletes it explicitly first (quietly if already gone).
#[derive(Debug)]
pub struct VethPair {
    ns_a: String,
    end_a: String,
    live: bool,
}

impl VethPair {
    /// `ip link add END_A netns NS_A type veth peer name END_B netns NS_B`: created
    /// directly in place, so nothing is ever left in the root namespace.
    pub fn create(ns_a: &Namespace, end_a: &str, ns_b: &Namespace, end_b: &str) -> Result<Self> {
        for n in [end_a, end_b] {
            if n.len() > IFNAME_MAX {
                bail!("veth name {n:?} is longer than {IFNAME_MAX} characters");
            }
        }
        let mut c = cmd::command(
            "ip",
            &[
                "link",
                "add",
                end_a,
                "netns",
                ns_a.name(),
                "type",
                "veth",
                "peer",
                "name",
                end_b,
                "netns",
                ns_b.name(),
            ],
        );
        cmd::checked(&mut c, IP_TIMEOUT)?;
        Ok(Self {
            ns_a: ns_a.name().to_owned(),
            end_a: end_a.to_owned(),
            live: true,
        })
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        if self.live {
            self.live = false;
            let mut c = cmd::command("ip", &["-n", &self.ns_a, "link", "del", &self.end_a]);
            // Quiet: the namespace may already be gone, which removed the pair.
            let _ = cmd::cleanup_output(&mut c, IP_TIMEOUT);
        }
    }
}

/// Underlay address of host A on the veth link.
pub const UNDERLAY_A: &str = "10.203.0.1";
/// Underlay address of host B on the veth link.
pub const UNDERLAY_B: &str = "10.203.0.2";

/// Two namespaces `<prefix>a` and `<prefix>b` joined by a veth pair `<prefix>va` /
/// `<prefix>vb` with 10.203.0.1/24 and 10.203.0.2/24, `lo` up in both. Dropping it
/// deletes everything (fields drop in declaration order: the veth, then the namespaces).
#[derive(Debug)]
pub struct TwoHosts {
    /// Held for its `Drop`.
    _veth: VethPair,
    /// Host A (10.203.0.1).
    pub a: Namespace,
    /// Host B (10.203.0.2).
    pub b: Namespace,
}

impl TwoHosts {
    /// Builds the two hosts and checks the underlay with one ping (three tries).
    pub fn create(names: &RunNames) -> Result<Self> {
        let a = Namespace::create(&names.name("a")?)?;
        let b = Namespace::create(&names.name("b")?)?;
        let (va, vb) = (names.name("va")?, names.name("vb")?);
        let veth = VethPair::create(&a, &va, &b, &vb)?;
        a.address_up(&va, &format!("{UNDERLAY_A}/24"))?;
        b.address_up(&vb, &format!("{UNDERLAY_B}/24"))?;
        let hosts = Self { _veth: veth, a, b };
        let mut last = None;
        for _ in 0..3 {
            let stats = hosts.a.ping(UNDERLAY_B, 1, 2)?;
            if stats.ok() {
                return Ok(hosts);
            }
            last = Some(stats);
        }
        bail!(
            "underlay ping {UNDERLAY_A} -> {UNDERLAY_B} over veth failed ({}); check that the \
             kernel has veth support (`modprobe veth`) and no firewall drops it",
            last.map(|s| s.to_string()).unwrap_or_default()
        )
    }
}

/// Summary of a `ping` run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PingStats {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Average round-trip time in milliseconds, if any reply came.
    pub avg_rtt_ms: Option<f64>,
}

impl PingStats {
    /// Parses iputils ping's summary lines.
    pub fn parse(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.contains("packets transmitted"))?;
        let mut nums = line.split(',').map(|part| {
            part.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u32>().ok())
        });
        let transmitted = nums.next().flatten()?;
        let received = nums.next().flatten()?;
        let avg_rtt_ms = text
            .lines()
            .find(|l| l.starts_with("rtt ") || l.starts_with("round-trip"))
            .and_then(|l| l.split('=').nth(1))
            .and_then(|v| v.trim().split('/').nth(1))
            .and_then(|v| v.parse::<f64>().ok());
        Some(Self {
            transmitted,
            received,
            avg_rtt_ms,
        })
    }

    /// At least one reply.
    pub fn ok(&self) -> bool {
        self.received > 0
    }

    /// Packet loss in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.transmitted == 0 {
            return 100.0;
        }
        100.0 * f64::from(self.transmitted - self.received.min(self.transmitted))
            / f64::from(self.transmitted)
    }
}

impl fmt::Display for PingStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} replies, {:.0}% loss",
            self.received,
            self.transmitted,
            self.loss_percent()
        )?;
        if let Some(avg) = self.avg_rtt_ms {
            write!(f, ", avg RTT {avg:.3} ms")?;
        }
        Ok(())
    }
}

/// Network namespaces currently present (`ip netns list`).
pub fn list_namespaces() -> Result<Vec<String>> {
    let mut c = cmd::command("ip", &["netns", "list"]);
    let out = cmd::cleanup_output(&mut c, IP_TIMEOUT)?;
    cmd::ensure_success(&c, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Interfaces in the root namespace (`ip -o link show`), without the `@peer` suffix.
pub fn list_root_links() -> Result<Vec<String>> {
    let mut c = cmd::command("ip", &["-o", "link", "show"]);
    let out = cmd::cleanup_output(&mut c, IP_TIMEOUT)?;
    cmd::ensure_success(&c, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
        .collect())
}

/// Names of namespaces and root-namespace links left behind by this run.
pub fn leftovers(names: &RunNames) -> Result<Vec<String>> {
    let mut left: Vec<String> = list_namespaces()?
        .into_iter()
        .filter(|n| names.owns(n))
        .map(|n| format!("namespace {n}"))
        .collect();
    left.extend(
        list_root_links()?
            .into_iter()
            .filter(|n| names.owns(n))
            .map(|n| format!("link {n}")),
    );
    Ok(left)
}

/// Checks, after every guard of a run was dropped, that nothing named by `names` is left,
/// and prints the verdict prefixed by `who` (`cleanup`, `bench`): OK, what is left and how
/// to remove it, or why it could not be checked.
pub fn report_leftovers(names: &RunNames, who: &str) {
    match leftovers(names) {
        Ok(left) if left.is_empty() => {
            println!(
                "{who}: cleanup OK (no namespace or link named {}* left)",
                names.prefix()
            );
        }
        Ok(left) => eprintln!(
            "{who}: cleanup WARNING: left behind: {}; remove with `ip netns del NAME`",
            left.join(", ")
        ),
        Err(e) => eprintln!("{who}: cleanup could not be verified: {e:#}"),
    }
}

/// Warns about namespaces named `<tag><pid>…` whose run (that pid) is gone, e.g. after
/// a SIGKILL, and says how to remove them. Never deletes anything itself.
pub fn warn_stale(tags: &[&str]) {
    let Ok(all) = list_namespaces() else {
        return;
    };
    for ns in all {
        for tag in tags {
            let Some(rest) = ns.strip_prefix(tag) else {
                continue;
            };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if digits.is_empty() || digits.len() == rest.len() {
                continue;
            }
            if !std::path::Path::new("/proc").join(&digits).exists() {
                eprintln!(
                    "netns: note: namespace {ns} is left over from an earlier run (pid {digits} \
                     is gone); remove it with `ip netns del {ns}`"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iputils_summary() {
        let text = "PING 10.204.0.2 (10.204.0.2) 56(84) bytes of data.\n\
            64 bytes from 10.204.0.2: icmp_seq=1 ttl=64 time=0.512 ms\n\
            \n--- 10.204.0.2 ping statistics ---\n\
            5 packets transmitted, 4 received, 20% packet loss, time 803ms\n\
            rtt min/avg/max/mdev = 0.301/0.412/0.512/0.070 ms\n";
        let s = PingStats::parse(text).unwrap();
        assert_eq!(s.transmitted, 5);
        assert_eq!(s.received, 4);
        assert_eq!(s.avg_rtt_ms, Some(0.412));
        assert!(s.ok());
        assert!((s.loss_percent() - 20.0).abs() < 1e-9);
    }

    #[test]
    fn parses_total_loss() {
        let text = "--- 10.204.0.2 ping statistics ---\n\
            5 packets transmitted, 0 received, +5 errors, 100% packet loss, time 4100ms\n";
        let s = PingStats::parse(text).unwrap();
        assert_eq!((s.transmitted, s.received, s.avg_rtt_ms), (5, 0, None));
        assert!(!s.ok());
    }

    #[test]
    fn owns_only_its_own_names() {
        let n = RunNames {
            prefix: "wgrsd12".into(),
        };
        assert!(n.owns("wgrsd12a"));
        assert!(n.owns("wgrsd12va"));
        assert!(!n.owns("wgrsd123a"));
        assert!(!n.owns("wgrsd12"));
        assert!(!n.owns("wgrsd1a"));
    }
}
