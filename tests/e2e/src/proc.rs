//! The sandbox of running processes as `/proc` shows it: which wireguard-rs process is
//! which (by command line), `/proc/PID/status` fields (seccomp mode, `no_new_privs`,
//! capability sets, user and group ids), the root directory, open sockets and the socket
//! tables of the process's network namespace, and a search of a process's readable memory
//! for given byte strings (`/proc/PID/mem`, as root).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::daemon::Daemon;

/// Bit of `CAP_NET_ADMIN` in the capability masks of `/proc/PID/status`.
pub const CAP_NET_ADMIN: u64 = 1 << 12;
/// Bit of `CAP_KILL`: the monitor keeps it so its children's parent-death signal reaches
/// them although they run as other users.
pub const CAP_KILL: u64 = 1 << 5;
/// Bit of `CAP_NET_BIND_SERVICE`: kept by default so listen ports below 1024 work, as
/// with wireguard-go (`--no-low-ports` drops it).
pub const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
/// What the monitor keeps by default.
pub const MONITOR_CAPS: u64 = CAP_NET_ADMIN | CAP_KILL | CAP_NET_BIND_SERVICE;

/// The five capability sets of `/proc/PID/status`.
pub const CAP_SETS: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

/// Which wireguard-rs process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `wireguard-rs` (the launcher and supervisor).
    Monitor,
    /// `wireguard-rs-keyd`.
    Keyd,
    /// `wireguard-rs --spawner`.
    Spawner,
    /// `wireguard-rs-datad`.
    Datad,
}

impl Role {
    /// All four, in the order of the process tree.
    pub const ALL: [Role; 4] = [Role::Monitor, Role::Keyd, Role::Spawner, Role::Datad];

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Monitor => "monitor",
            Role::Keyd => "keyd",
            Role::Spawner => "spawner",
            Role::Datad => "datad",
        }
    }
}

/// The state of `pid` (`R`, `S`, `T`, `Z`, …) from `/proc/PID/stat`; `None` once it is
/// gone (reaped).
pub fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

/// Whether `pid` exists and is neither a zombie nor dead.
pub fn alive(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// `kill -9 PID`.
pub fn sigkill(pid: u32) -> Result<()> {
    let pid_t = i32::try_from(pid).context("pid out of range")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_t),
        nix::sys::signal::Signal::SIGKILL,
    )
    .with_context(|| format!("kill -9 {pid}"))
}

/// The arguments of `pid` (empty for a kernel thread or a process that is gone).
pub fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The role of `pid` judged by its command line: the file name of `argv[0]`
/// (`wireguard-rs-keyd`, `wireguard-rs-datad`, or `wireguard-rs` with or without
/// `--spawner`). `None` for anything else, including a process gone meanwhile.
pub fn role_of(pid: u32) -> Option<Role> {
    let args = cmdline(pid);
    let prog = Path::new(args.first()?).file_name()?.to_str()?.to_owned();
    match prog.as_str() {
        "wireguard-rs-keyd" => Some(Role::Keyd),
        "wireguard-rs-datad" => Some(Role::Datad),
        "wireguard-rs" if args.iter().any(|a| a == "--spawner") => Some(Role::Spawner),
        "wireguard-rs" => Some(Role::Monitor),
        _ => None,
    }
}

/// The four processes of one wireguard-rs daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RsProcesses {
    /// The monitor (the PID the test started).
    pub monitor: u32,
    /// The key process.
    pub keyd: u32,
    /// The spawner.
    pub spawner: u32,
    /// The data plane.
    pub datad: u32,
}

impl RsProcesses {
    /// The processes of `d` as they are now: exactly one of each role in its process tree.
    pub fn of(d: &Daemon) -> Result<Self> {
        let tree = d.process_tree();
        let mut by_role: BTreeMap<Role, Vec<u32>> = BTreeMap::new();
        for &pid in &tree {
            if let Some(role) = role_of(pid) {
                by_role.entry(role).or_default().push(pid);
            }
        }
        let one = |role: Role| -> Result<u32> {
            match by_role.get(&role).map(Vec::as_slice) {
                Some([pid]) => Ok(*pid),
                other => bail!(
                    "expected one {} process in the tree of {} (pid {}), found {other:?}; tree: {}",
                    role.name(),
                    d.ifname,
                    d.pid(),
                    describe_tree(&tree)
                ),
            }
        };
        let p = Self {
            monitor: one(Role::Monitor)?,
            keyd: one(Role::Keyd)?,
            spawner: one(Role::Spawner)?,
            datad: one(Role::Datad)?,
        };
        ensure!(
            p.monitor == d.pid(),
            "the monitor is pid {}, but we started {}",
            p.monitor,
            d.pid()
        );
        Ok(p)
    }

    /// [`RsProcesses::of`] once the daemon is ready (the monitor logs `ready:` after it has
    /// sandboxed itself: before, its capabilities and filter are not yet what they will
    /// be), retried for up to `timeout` (while a data plane is being started, its process
    /// briefly runs the spawner's program).
    pub fn wait(d: &Daemon, timeout: Duration) -> Result<Self> {
        let start = Instant::now();
        while !d.log().contains("ready: ") && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(20));
        }
        loop {
            match Self::of(d) {
                Ok(p) => return Ok(p),
                Err(e) if start.elapsed() >= timeout => {
                    return Err(e.context(format!(
                        "the processes of {} were not all there within {} s; log:\n{}",
                        d.ifname,
                        timeout.as_secs(),
                        d.log_tail(20)
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The PID of `role`.
    pub fn pid(&self, role: Role) -> u32 {
        match role {
            Role::Monitor => self.monitor,
            Role::Keyd => self.keyd,
            Role::Spawner => self.spawner,
            Role::Datad => self.datad,
        }
    }

    /// (role, pid) of all four.
    pub fn all(&self) -> [(Role, u32); 4] {
        Role::ALL.map(|r| (r, self.pid(r)))
    }
}

/// `pid (role or argv)` for each PID, for messages.
pub fn describe_tree(pids: &[u32]) -> String {
    pids.iter()
        .map(|&p| format!("{p} {:?}", cmdline(p)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `/proc/PID/status`, parsed into its `Key:\tvalue` fields.
#[derive(Clone, Debug)]
pub struct Status {
    /// The PID it was read from.
    pub pid: u32,
    /// Field name → value (trimmed).
    pub fields: BTreeMap<String, String>,
}

impl Status {
    /// Reads `/proc/PID/status`.
    pub fn read(pid: u32) -> Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let fields = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Ok(Self { pid, fields })
    }

    /// The value of field `key`.
    pub fn get(&self, key: &str) -> Result<&str> {
        self.fields
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("no {key} in /proc/{}/status", self.pid))
    }

    /// A capability set (`CapEff`, …) as a bit mask.
    pub fn cap(&self, set: &str) -> Result<u64> {
        let v = self.get(set)?;
        u64::from_str_radix(v, 16).with_context(|| format!("{set} {v:?} of pid {}", self.pid))
    }

    /// The four ids of `Uid` or `Gid` (real, effective, saved, file system).
    pub fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let v = self.get(key)?;
        let ids = v
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<Vec<u32>, _>>()
            .with_context(|| format!("{key} {v:?} of pid {}", self.pid))?;
        ensure!(
            ids.len() == 4,
            "{key} {v:?} of pid {} has not 4 ids",
            self.pid
        );
        Ok(ids)
    }

    /// The sandbox-relevant fields on one line, for the test output.
    pub fn summary(&self) -> String {
        [
            "Uid",
            "Gid",
            "Groups",
            "Seccomp",
            "Seccomp_filters",
            "NoNewPrivs",
            "CapInh",
            "CapPrm",
            "CapEff",
            "CapBnd",
            "CapAmb",
        ]
        .iter()
        .map(|k| format!("{k}={}", self.fields.get(*k).map_or("?", String::as_str)))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// The root directory of `pid` (`readlink /proc/PID/root`).
pub fn root_dir(pid: u32) -> Result<PathBuf> {
    fs::read_link(format!("/proc/{pid}/root")).with_context(|| format!("readlink /proc/{pid}/root"))
}

/// Inodes of the sockets `pid` has open (`socket:[INODE]` links in `/proc/PID/fd`).
pub fn socket_inodes(pid: u32) -> Result<BTreeSet<u64>> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?;
    Ok(dir
        .filter_map(Result::ok)
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect())
}

/// The IP socket tables of `/proc/PID/net`.
pub const INET_TABLES: [&str; 6] = ["udp", "udp6", "tcp", "tcp6", "raw", "raw6"];

/// One line of an IP socket table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InetSocket {
    /// Which table (`udp`, `tcp6`, …).
    pub table: &'static str,
    /// Local port (for raw sockets: the protocol).
    pub local_port: u16,
    /// Socket inode.
    pub inode: u64,
}

/// Every socket of the IP tables of the network namespace of `pid` (`/proc/PID/net/…`).
pub fn inet_sockets(pid: u32) -> Result<Vec<InetSocket>> {
    let mut all = Vec::new();
    for table in INET_TABLES {
        let path = format!("/proc/{pid}/net/{table}");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            // No IPv6 in the namespace: no udp6/tcp6/raw6 tables.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {path}")),
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let parsed = (|| {
                let port = f.get(1)?.rsplit_once(':')?.1;
                Some(InetSocket {
                    table,
                    local_port: u16::from_str_radix(port, 16).ok()?,
                    inode: f.get(9)?.parse().ok()?,
                })
            })();
            all.push(parsed.with_context(|| format!("unparsable line in {path}: {line:?}"))?);
        }
    }
    Ok(all)
}

/// One line of `/proc/PID/net/unix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixSocket {
    /// Socket inode.
    pub inode: u64,
    /// A listening socket (`__SO_ACCEPTCON` in the flags).
    pub listening: bool,
    /// The bound path (an accepted connection shows its listener's path too).
    pub path: Option<String>,
}

/// Every AF_UNIX socket of the network namespace of `pid`.
pub fn unix_sockets(pid: u32) -> Result<Vec<UnixSocket>> {
    let path = format!("/proc/{pid}/net/unix");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let parsed = (|| {
                Some(UnixSocket {
                    inode: f.get(6)?.parse().ok()?,
                    listening: u32::from_str_radix(f.get(3)?, 16).ok()? & 0x0001_0000 != 0,
                    path: f.get(7).map(|p| (*p).to_owned()),
                })
            })();
            parsed.with_context(|| format!("unparsable line in {path}: {line:?}"))
        })
        .collect()
}

/// What a search of a process's memory found.
#[derive(Clone, Debug, Default)]
pub struct MemScan {
    /// For each needle, whether it occurs.
    pub found: Vec<bool>,
    /// Readable regions read completely.
    pub regions_read: usize,
    /// Bytes read.
    pub bytes_read: u64,
    /// Regions (or their rest) that could not be read: `maps line: error`.
    pub unreadable: Vec<String>,
}

/// Regions never searched: kernel-provided pages that cannot be read through
/// `/proc/PID/mem` (or need not be).
const SKIPPED_REGIONS: [&str; 3] = ["[vvar]", "[vvar_vclock]", "[vsyscall]"];
/// How much is read at a time.
const CHUNK: usize = 4 << 20;

/// Searches every readable region of `pid`'s memory (`/proc/PID/maps`, read through
/// `/proc/PID/mem`) for each of `needles`. Needs root (`CAP_SYS_PTRACE` reaches processes
/// that are not dumpable). A region that fails to read is recorded and skipped; failing to
/// open `/proc/PID/mem` at all is an error.
pub fn scan_memory(pid: u32, needles: &[&[u8]]) -> Result<MemScan> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    let mem = fs::File::open(format!("/proc/{pid}/mem"))
        .with_context(|| format!("opening /proc/{pid}/mem"))?;
    let longest = needles.iter().map(|n| n.len()).max().unwrap_or(1).max(1);
    let mut scan = MemScan {
        found: vec![false; needles.len()],
        ..MemScan::default()
    };
    let mut buf = vec![0u8; CHUNK + longest];
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(perms)) = (f.first(), f.get(1)) else {
            continue;
        };
        if !perms.starts_with('r') || f.get(5).is_some_and(|p| SKIPPED_REGIONS.contains(p)) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        // Bytes carried over from the previous chunk, so a needle across a chunk
        // boundary is found.
        let mut carry = 0usize;
        let mut at = start;
        let mut complete = true;
        while at < end {
            let want = usize::try_from((end - at).min(CHUNK as u64)).unwrap_or(CHUNK);
            match mem.read_at(&mut buf[carry..carry + want], at) {
                Ok(0) => {
                    scan.unreadable
                        .push(format!("{line}: end of file at {at:#x}"));
                    complete = false;
                    break;
                }
                Ok(n) => {
                    let have = carry + n;
                    for (i, needle) in needles.iter().enumerate() {
                        if !scan.found[i] && contains(&buf[..have], needle) {
                            scan.found[i] = true;
                        }
                    }
                    scan.bytes_read += n as u64;
                    at += n as u64;
                    carry = (longest - 1).min(have);
                    buf.copy_within(have - carry..have, 0);
                }
                Err(e) => {
                    scan.unreadable.push(format!("{line}: {e} at {at:#x}"));
                    complete = false;
                    break;
                }
            }
        }
        if complete {
            scan.regions_read += 1;
        }
    }
    Ok(scan)
}

/// Whether `needle` occurs in `haystack` (first-byte scan, then a comparison).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if haystack.len() < needle.len() {
        return false;
    }
    let last_start = haystack.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match haystack[i..=last_start].iter().position(|&b| b == first) {
            None => return false,
            Some(off) => {
                let at = i + off;
                if &haystack[at + 1..at + needle.len()] == rest {
                    return true;
                }
                i = at + 1;
            }
        }
    }
    false
}

/// Decodes a key as `wg` prints it (base64) into its raw bytes.
pub fn key_bytes(base64: &str) -> Result<Vec<u8>> {
    let hex = crate::wgtool::base64_to_hex(base64)?;
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).with_context(|| format!("bad hex {hex:?}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_needles() {
        assert!(contains(b"abcdef", b"cde"));
        assert!(contains(b"abcdef", b"abcdef"));
        assert!(contains(b"aab", b"ab"));
        assert!(!contains(b"abcdef", b"cdf"));
        assert!(!contains(b"ab", b"abc"));
        assert!(contains(b"", b""));
    }

    #[test]
    fn finds_a_secret_in_its_own_memory() -> Result<()> {
        // Built at run time, so it lives on this process's heap (not in its binary).
        let needle: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let scan = scan_memory(std::process::id(), &[&needle])?;
        assert!(scan.found[0], "{scan:?}");
        assert!(scan.regions_read > 0);
        Ok(())
    }

    #[test]
    fn decodes_keys() -> Result<()> {
        assert_eq!(key_bytes("AAECAw==")?, [0, 1, 2, 3]);
        Ok(())
    }
}
