//! Sandboxing of the wireguard-rs processes: what each may do once it has started.
//!
//! **Owns:** the fixed order in which a process gives up its privileges
//! ([`lock_down`]): core dumps off and not dumpable (so a same-uid process cannot ptrace it
//! or read its memory), key memory locked (keyd), an empty root (keyd), an unprivileged
//! user and group, capabilities reduced to the role's ([`Role::kept_capabilities`]) in
//! every set including bounding and ambient, `no_new_privs`, and last a seccomp allow-list
//! per role ([`policy`]). A refused syscall raises `SIGSYS`; the handler reports the
//! syscall number to the supervisor over the process's IPC socket and exits, so the
//! monitor can log the syscall by name.
//!
//! **Trusts:** its caller for the role and options. **May depend on:** seccompiler, caps,
//! nix, libc. This crate calls the OS directly: `unsafe` is allowed on single functions,
//! each block with a `// SAFETY:` comment.
#![deny(unsafe_code)]

pub mod policy;
mod sigsys;
mod syscalls;

use std::collections::HashSet;
use std::os::fd::RawFd;
use std::path::Path;

use caps::{CapSet, Capability};
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid, User};

pub use sigsys::{SIGSYS_EXIT_CODE, SyscallReport};
pub use syscalls::syscall_name;

/// The user the workers run as unless told otherwise: present on every Debian system.
/// Packagers should create a dedicated user (see `docs/packaging.md`).
pub const DEFAULT_USER: &str = "nobody";
/// keyd's root after start-up: an empty, root-owned, read-only directory.
pub const EMPTY_ROOT: &str = "/run/wireguard-rs/empty";
/// Memory keyd may lock (all of it is locked, so its secrets never reach swap).
const KEYD_MEMLOCK_BYTES: u64 = 256 * 1024 * 1024;

/// Which process is being locked down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The launcher: keeps `CAP_NET_ADMIN` for the sockets it rebinds and marks.
    Monitor,
    /// The key process: no network, no files, no exec.
    Keyd,
    /// The data plane: no files, no exec, no capabilities.
    Datad,
    /// Starts data planes (the only process allowed to exec after start-up).
    Spawner,
}

impl Role {
    /// Capabilities the role keeps in its permitted, effective and bounding sets:
    /// `CAP_NET_ADMIN` for the monitor (socket marks), plus `CAP_NET_BIND_SERVICE` if
    /// the administrator asked for listen ports below 1024 ([`Options::low_ports`]);
    /// nothing for the others.
    pub fn kept_capabilities(self, options: &Options) -> HashSet<Capability> {
        match self {
            Role::Monitor if options.low_ports => {
                [Capability::CAP_NET_ADMIN, Capability::CAP_NET_BIND_SERVICE].into()
            }
            Role::Monitor => [Capability::CAP_NET_ADMIN].into(),
            Role::Keyd | Role::Datad | Role::Spawner => HashSet::new(),
        }
    }

    fn switches_user(self) -> bool {
        !matches!(self, Role::Monitor)
    }
}

/// How to sandbox.
#[derive(Debug, Clone)]
pub struct Options {
    /// `false` with `--no-sandbox`: nothing is restricted (debugging only).
    pub enabled: bool,
    /// The unprivileged user for keyd, datad and the spawner.
    pub user: String,
    /// The monitor keeps `CAP_NET_BIND_SERVICE`, so `listen_port` may be below 1024.
    pub low_ports: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            enabled: true,
            user: DEFAULT_USER.to_owned(),
            low_ports: false,
        }
    }
}

/// Why locking down failed. The process must not continue: it exits instead of running
/// with more privilege than intended.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The configured user does not exist.
    #[error("user {0:?} does not exist; create it or pass --user")]
    NoSuchUser(String),
    /// A step failed.
    #[error("sandbox step '{step}' failed: {source}")]
    Step {
        /// Which step.
        step: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The seccomp filter could not be built or installed.
    #[error("seccomp filter: {0}")]
    Seccomp(String),
}

fn step<T, E: Into<std::io::Error>>(
    step: &'static str,
    r: Result<T, E>,
) -> Result<T, SandboxError> {
    r.map_err(|e| SandboxError::Step {
        step,
        source: e.into(),
    })
}

fn caps_error(step_name: &'static str) -> impl Fn(caps::errors::CapsError) -> SandboxError {
    move |e| SandboxError::Step {
        step: step_name,
        source: std::io::Error::other(e.to_string()),
    }
}

/// Closes every descriptor except stdin, stdout, stderr and `keep`: whatever a parent
/// leaked must not reach a sandboxed process. Call first thing in `main`.
pub fn close_inherited_fds(keep: &[RawFd]) -> Result<(), SandboxError> {
    let entries = step("listing /proc/self/fd", std::fs::read_dir("/proc/self/fd"))?;
    let fds: Vec<RawFd> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|&fd| fd > 2 && !keep.contains(&fd))
        .collect();
    for fd in fds {
        // The directory's own descriptor is in the list and already closed: EBADF is fine.
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

/// Gives up privileges for `role`, in a fixed order, then installs the seccomp filter.
/// `report` is where a refused syscall is reported (the process's IPC socket).
pub fn lock_down(
    role: Role,
    options: &Options,
    report: Option<SyscallReport>,
) -> Result<(), SandboxError> {
    if !options.enabled {
        tracing::warn!(
            "SANDBOX DISABLED (--no-sandbox): {role:?} runs with every privilege it started with"
        );
        return Ok(());
    }
    step(
        "disabling core dumps",
        setrlimit(Resource::RLIMIT_CORE, 0, 0),
    )?;
    if role == Role::Keyd {
        lock_memory()?;
    }
    // Not dumpable: no core dump, and no ptrace or /proc/PID/mem access by the same uid.
    step(
        "marking the process not dumpable",
        nix::sys::prctl::set_dumpable(false),
    )?;

    // The bounding set first: dropping from it needs CAP_SETPCAP, gone after the switch.
    drop_bounding(&role.kept_capabilities(options))?;
    let running_as_root = Uid::effective().is_root();
    if role.switches_user() && running_as_root {
        let user = User::from_name(&options.user)
            .ok()
            .flatten()
            .ok_or_else(|| SandboxError::NoSuchUser(options.user.clone()))?;
        if role == Role::Keyd {
            enter_empty_root();
        }
        switch_user(user.uid, user.gid)?;
    }
    limit_capabilities(&role.kept_capabilities(options))?;
    step("setting no_new_privs", nix::sys::prctl::set_no_new_privs())?;
    if let Some(report) = report {
        sigsys::install(report)?;
    }
    policy::install(role)?;
    tracing::info!("{role:?} sandboxed");
    Ok(())
}

/// Locks all of keyd's memory, present and future, so keys never reach swap.
fn lock_memory() -> Result<(), SandboxError> {
    use nix::sys::mman::{MlockAllFlags, mlockall};
    // Raising the limit needs CAP_SYS_RESOURCE. Without it, future allocations are not
    // locked: under a small RLIMIT_MEMLOCK they would fail and take keyd down.
    let flags = match setrlimit(
        Resource::RLIMIT_MEMLOCK,
        KEYD_MEMLOCK_BYTES,
        KEYD_MEMLOCK_BYTES,
    ) {
        Ok(()) => MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE,
        Err(e) => {
            tracing::warn!(
                "cannot raise RLIMIT_MEMLOCK ({e}); locking present memory only (grant CAP_SYS_RESOURCE to lock all)"
            );
            MlockAllFlags::MCL_CURRENT
        }
    };
    step("locking memory (mlockall)", mlockall(flags))
}

/// Makes an empty, root-owned directory the process's root, if possible.
fn enter_empty_root() {
    let dir = Path::new(EMPTY_ROOT);
    let prepared = std::fs::create_dir_all(dir).and_then(|()| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))?;
        let meta = std::fs::metadata(dir)?;
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if meta.uid() != 0 || !empty {
            return Err(std::io::Error::other(
                "exists but is not an empty root-owned directory",
            ));
        }
        Ok(())
    });
    let entered = prepared.and_then(|()| {
        nix::unistd::chroot(dir)?;
        nix::unistd::chdir("/")?;
        Ok(())
    });
    if let Err(e) = entered {
        tracing::warn!(
            "cannot use {EMPTY_ROOT} as an empty root ({e}); keeping the file system view"
        );
    }
}

fn switch_user(uid: Uid, gid: Gid) -> Result<(), SandboxError> {
    step("dropping supplementary groups", nix::unistd::setgroups(&[]))?;
    step("switching group", nix::unistd::setresgid(gid, gid, gid))?;
    step("switching user", nix::unistd::setresuid(uid, uid, uid))?;
    // Paranoia: getting root back must be impossible now.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(SandboxError::Step {
            step: "verifying the user switch",
            source: std::io::Error::other("could regain root"),
        });
    }
    Ok(())
}

/// Removes everything but the role's capabilities from the bounding set, so no exec can
/// ever grant them again. A process started without privileges has nothing to remove.
fn drop_bounding(keep: &HashSet<Capability>) -> Result<(), SandboxError> {
    let bounding =
        caps::read(None, CapSet::Bounding).map_err(caps_error("reading bounding set"))?;
    for cap in bounding.difference(keep) {
        caps::drop(None, CapSet::Bounding, *cap).map_err(caps_error(
            "dropping from the bounding set (needs CAP_SETPCAP)",
        ))?;
    }
    Ok(())
}

/// Reduces the ambient, inheritable, effective and permitted sets to the role's.
fn limit_capabilities(keep: &HashSet<Capability>) -> Result<(), SandboxError> {
    caps::clear(None, CapSet::Ambient).map_err(caps_error("clearing ambient capabilities"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(caps_error("clearing inheritable capabilities"))?;
    let permitted =
        caps::read(None, CapSet::Permitted).map_err(caps_error("reading permitted set"))?;
    let kept: HashSet<Capability> = permitted.intersection(keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(caps_error("setting effective set"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_error("setting permitted set"))?;
    Ok(())
}

/// Test builds only (feature `test-hooks`): when `WG_RS_TEST_FORBIDDEN_SYSCALL` names this
/// role (`keyd`, `datad`, or `all`), makes the process call `socket(AF_INET)` — forbidden
/// for keyd and datad — so a test can watch the filter stop it and the monitor name the
/// syscall.
pub fn attempt_forbidden_syscall_if_requested(role: Role) {
    #[cfg(feature = "test-hooks")]
    {
        let wanted = std::env::var("WG_RS_TEST_FORBIDDEN_SYSCALL").unwrap_or_default();
        let name = match role {
            Role::Keyd => "keyd",
            Role::Datad => "datad",
            Role::Monitor | Role::Spawner => "",
        };
        if !name.is_empty() && (wanted == name || wanted == "all") {
            use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
            tracing::warn!("test hook: {role:?} attempts a forbidden syscall");
            let _ = socket(
                AddressFamily::Inet,
                SockType::Datagram,
                SockFlag::empty(),
                None,
            );
        }
    }
    let _ = role;
}

impl Options {
    /// Parses the options the monitor passes to its workers: `--no-sandbox` and
    /// `--user NAME`. Anything else is an error (workers are not run by hand).
    pub fn from_worker_args(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut options = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--no-sandbox" => options.enabled = false,
                "--user" => {
                    options.user = args
                        .next()
                        .ok_or_else(|| "--user needs a user name".to_owned())?;
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(options)
    }

    /// The arguments that give a worker these options.
    pub fn to_worker_args(&self) -> Vec<String> {
        let mut args = vec!["--user".to_owned(), self.user.clone()];
        if !self.enabled {
            args.push("--no-sandbox".to_owned());
        }
        args
    }
}

/// Asks the kernel to kill this process when its parent dies, so no worker outlives its
/// supervisor (fail closed). Returns an error if the parent is already gone.
pub fn die_with_parent() -> Result<(), SandboxError> {
    let parent = nix::unistd::getppid();
    step(
        "setting the parent-death signal",
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL),
    )?;
    if nix::unistd::getppid() != parent {
        return Err(SandboxError::Step {
            step: "checking the parent",
            source: std::io::Error::other("the parent process already exited"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_args_round_trip() {
        let o = Options {
            enabled: false,
            user: "wg".into(),
            low_ports: true,
        };
        let back = Options::from_worker_args(o.to_worker_args()).unwrap();
        assert_eq!((back.enabled, back.user.as_str()), (false, "wg"));
        assert!(Options::from_worker_args(["--bogus".to_owned()]).is_err());
        assert!(Options::from_worker_args(["--user".to_owned()]).is_err());
    }
}
