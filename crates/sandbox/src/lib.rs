//! Sandboxing of the wireguard-rs processes: what each may do once it has started.
//!
//! **Owns:** the workers' deafness to stop signals ([`ignore_stop_signals`]), the checks of
//! the workers' users ([`check_worker_users`]), the options the monitor passes its workers
//! ([`Options`]), and the fixed order in which a process gives up its privileges
//! ([`lock_down`]), per OS:
//! - **Linux** (`linux`): before anything starts, the check that the capabilities the
//!   lock-down needs are there ([`check_start_capabilities`], naming the missing one); core
//!   dumps off and not dumpable (so a same-uid process cannot ptrace it or read its
//!   memory), key memory locked (keyd), an empty root (keyd), an unprivileged user and
//!   group, capabilities reduced to the role's ([`Role::kept_capabilities`]) in every set
//!   including bounding and ambient, `no_new_privs`, and last a seccomp allow-list per role
//!   ([`policy`]). A refused syscall raises `SIGSYS`; the handler reports the syscall
//!   number to the supervisor over the process's IPC socket and exits, so the monitor can
//!   log the syscall by name.
//! - **macOS, FreeBSD, NetBSD** (`macos_bsd`): core dumps off, an empty root (keyd), the
//!   worker's own user and group, then the OS's confinement from `wg-platform`'s policy
//!   tables: the macOS sandbox profile and resource limits; on FreeBSD each descriptor
//!   limited to its kind's Capsicum rights and, for keyd, capability mode; on NetBSD
//!   (which has neither) the resource limits only. These have been compiled here, never
//!   run (see the platform table in the README).
//!
//! **Trusts:** its caller for the role and options. **May depend on:** nix, libc,
//! `tracing`, `thiserror`; on Linux seccompiler and caps; elsewhere `wg-platform` (the
//! policies and their entry points). This crate calls the OS directly: `unsafe` is allowed
//! on single functions, each block with a `// SAFETY:` comment.
//!
//! **Platforms:** Linux, macOS, FreeBSD, NetBSD. On every other OS this crate compiles to
//! an empty library (see the platform table in the README).
#![cfg(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
))]
#![deny(unsafe_code)]

#[cfg(target_os = "linux")]
mod linux;
#[cfg(not(target_os = "linux"))]
mod macos_bsd;
#[cfg(target_os = "linux")]
pub mod policy;
#[cfg(target_os = "linux")]
mod sigsys;
#[cfg(target_os = "linux")]
mod syscalls;

use std::path::Path;

use nix::unistd::{Uid, User};

#[cfg(target_os = "linux")]
pub use linux::*;
#[cfg(not(target_os = "linux"))]
pub use macos_bsd::*;
#[cfg(target_os = "linux")]
pub use sigsys::{SIGSYS_EXIT_CODE, SyscallReport};
#[cfg(target_os = "linux")]
pub use syscalls::syscall_name;

/// The key process's user unless told otherwise: a dedicated system user that no other
/// service shares (created by the package, or `cargo xtask setup`; see `docs/packaging.md`).
pub const DEFAULT_KEYD_USER: &str = "wireguard-rs-keyd";
/// The data plane's (and the spawner's) user unless told otherwise: another dedicated
/// system user, so the data plane can neither signal nor trace the key process.
pub const DEFAULT_DATAD_USER: &str = "wireguard-rs-datad";
/// The group a data plane is executed with as its real group, its own group being the
/// effective one. A real and effective group that differ make the kernel treat the exec as
/// privileged: the new program starts not dumpable (`fs.suid_dumpable`), and no process
/// can pass the ptrace check against it (which needs one gid equal to all three of its
/// gids) — from its first instruction until its first step settles the groups
/// ([`settle_exec_credentials`]). The overflow group owns no files by convention.
pub const TRANSIENT_EXEC_GID: u32 = 65534;
/// keyd's root after start-up: an empty, root-owned, read-only directory.
#[cfg(target_os = "linux")]
pub const EMPTY_ROOT: &str = "/run/wireguard-rs/empty";
/// keyd's root after start-up: the empty, root-owned directory macOS and the BSDs keep for
/// privilege-separated daemons (OpenSSH's `sshd` uses it the same way).
#[cfg(not(target_os = "linux"))]
pub const EMPTY_ROOT: &str = "/var/empty";
/// Memory keyd may lock (all of it is locked, so its secrets never reach swap).
#[cfg(target_os = "linux")]
const KEYD_MEMLOCK_BYTES: u64 = 256 * 1024 * 1024;

/// Which process is being locked down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The launcher: keeps `CAP_NET_ADMIN` for the sockets it rebinds and marks,
    /// `CAP_KILL`, and `CAP_NET_BIND_SERVICE` unless told otherwise (see
    /// [`Role::kept_capabilities`]).
    Monitor,
    /// The key process: no network, no files, no exec.
    Keyd,
    /// The data plane: no files, no exec, no capabilities.
    Datad,
    /// Starts data planes (the only process allowed to exec after start-up).
    Spawner,
}

/// How to sandbox.
#[derive(Debug, Clone)]
pub struct Options {
    /// `false` with `--no-sandbox`: nothing is restricted (debugging only).
    pub enabled: bool,
    /// The unprivileged user of this worker: the keyd user for keyd, the datad user for
    /// the spawner and datad.
    pub user: String,
    /// The monitor keeps `CAP_NET_BIND_SERVICE` (if it has it), so `listen_port` may be
    /// below 1024, as with wireguard-go. On by default; `--no-low-ports` turns it off.
    pub low_ports: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            enabled: true,
            user: DEFAULT_DATAD_USER.to_owned(),
            low_ports: true,
        }
    }
}

/// Why locking down failed. The process must not continue: it exits instead of running
/// with more privilege than intended.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The configured user does not exist.
    #[error(
        "user {0:?} does not exist; create the system users with `useradd --system --no-create-home --shell /usr/sbin/nologin {keyd}` and `... {datad}` (see docs/packaging.md), or name existing dedicated users with --keyd-user and --datad-user",
        keyd = DEFAULT_KEYD_USER,
        datad = DEFAULT_DATAD_USER
    )]
    NoSuchUser(String),
    /// A worker's user is unfit: root, or shared between the two workers.
    #[error("{0}")]
    BadUser(String),
    /// The process cannot be sandboxed as started (a capability it needs is missing).
    #[error("{0}")]
    Unfit(String),
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
    /// A step was refused because the process lacks a capability.
    #[error("{step} needs {capability}, which this process does not have ({source}); {hint}")]
    MissingCapability {
        /// What was attempted.
        step: &'static str,
        /// The capability it needs, e.g. `CAP_SETPCAP`.
        capability: &'static str,
        /// What to do about it.
        hint: &'static str,
        /// The refusal.
        source: std::io::Error,
    },
}

/// What to do about a missing capability the sandbox needs.
#[cfg(target_os = "linux")]
const CAPABILITY_HINT: &str = "start wireguard-rs as root with its full capability bounding set (systemd: keep it in CapabilityBoundingSet=; capsh/setpriv: do not drop it), or run with --no-sandbox for debugging only";

/// `step`'s failure, naming `capability` when the kernel said EPERM (the only reason it
/// refuses these steps to a process that lacks the capability).
#[cfg(target_os = "linux")]
fn step_needing<T, E: Into<std::io::Error>>(
    step: &'static str,
    capability: &'static str,
    r: Result<T, E>,
) -> Result<T, SandboxError> {
    r.map_err(|e| {
        let source: std::io::Error = e.into();
        if source.raw_os_error() == Some(libc::EPERM) {
            SandboxError::MissingCapability {
                step,
                capability,
                hint: CAPABILITY_HINT,
                source,
            }
        } else {
            SandboxError::Step { step, source }
        }
    })
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

/// The first steps of every lock-down: with `--no-sandbox` nothing at all (said loudly),
/// else core dumps off. Whether the lock-down goes on.
fn lock_down_starts(role: Role, options: &Options) -> Result<bool, SandboxError> {
    use nix::sys::resource::{Resource, setrlimit};
    if !options.enabled {
        tracing::warn!(
            "SANDBOX DISABLED (--no-sandbox): {role:?} runs with every privilege it started with"
        );
        return Ok(false);
    }
    step(
        "disabling core dumps",
        setrlimit(Resource::RLIMIT_CORE, 0, 0),
    )?;
    Ok(true)
}

/// Makes an empty, root-owned directory the process's root. Not optional: a key process
/// that could still open files by path would be one bug away from writing its keys out.
fn enter_empty_root() -> Result<(), SandboxError> {
    let dir = Path::new(EMPTY_ROOT);
    let prepared = (|| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // Only a directory made here is given its mode: an existing one is checked, not
        // changed (FreeBSD's /var/empty is immutable, `schg`, so even root cannot chmod it).
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))?;
        }
        let meta = std::fs::metadata(dir)?;
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 || !empty {
            return Err(std::io::Error::other(
                "exists but is not an empty root-owned directory that only root may write",
            ));
        }
        Ok(())
    })();
    let step_name = "entering keyd's empty root directory (it must be an empty, root-owned directory: /run/wireguard-rs/empty on Linux, /var/empty elsewhere)";
    prepared.map_err(|e| SandboxError::Step {
        step: step_name,
        source: e,
    })?;
    #[cfg(target_os = "linux")]
    step_needing(
        "entering the empty root directory /run/wireguard-rs/empty (chroot)",
        "CAP_SYS_CHROOT",
        nix::unistd::chroot(dir),
    )?;
    #[cfg(not(target_os = "linux"))]
    step(
        "entering the empty root directory /var/empty (chroot; needs root)",
        nix::unistd::chroot(dir),
    )?;
    step(step_name, nix::unistd::chdir("/"))
}

fn lookup_user(name: &str) -> Result<User, SandboxError> {
    let user = User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| SandboxError::NoSuchUser(name.to_owned()))?;
    if user.uid.is_root() || user.gid.as_raw() == 0 {
        return Err(SandboxError::BadUser(format!(
            "user {name:?} has uid {} / gid {}: a sandboxed process must not run as root",
            user.uid, user.gid
        )));
    }
    Ok(user)
}

/// Whether this process runs as root: only then do the workers switch users.
pub fn running_as_root() -> bool {
    Uid::effective().is_root()
}

/// Checks the workers' users before anything starts, so a mistake is reported by the
/// command the administrator ran: both exist, neither is root, and they differ unless
/// `shared_on_purpose` (the old `--user` flag). Returns a warning to log, if any.
pub fn check_worker_users(
    keyd: &str,
    datad: &str,
    shared_on_purpose: bool,
) -> Result<Option<String>, SandboxError> {
    let k = lookup_user(keyd)?;
    let d = lookup_user(datad)?;
    if k.uid == d.uid {
        if !shared_on_purpose {
            return Err(SandboxError::BadUser(format!(
                "the key process and the data plane must run as different users, but {keyd:?} and {datad:?} are both uid {}; pass distinct --keyd-user and --datad-user",
                k.uid
            )));
        }
        return Ok(Some(format!(
            "--user {keyd}: the key process and the data plane share uid {}; only seccomp then keeps a compromised data plane from signalling the key process (use --keyd-user and --datad-user)",
            k.uid
        )));
    }
    if k.uid.as_raw() == 65534 || d.uid.as_raw() == 65534 {
        return Ok(Some(
            "a worker runs as nobody, which other services share; use dedicated users".into(),
        ));
    }
    Ok(None)
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

/// Makes this process ignore `SIGTERM`, `SIGINT` and `SIGHUP`: the workers' first step,
/// so a signal to the whole process group (`systemctl stop`, Ctrl-C) reaches only the
/// monitor, which then stops them in order; they die with it (parent-death signal) or when
/// their channel to it closes. The ignored dispositions survive `exec`, so a data plane
/// the spawner starts ignores them from its first instruction too.
#[allow(unsafe_code)]
pub fn ignore_stop_signals() -> Result<(), SandboxError> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: SIG_IGN runs no code in the process; it only changes how the kernel
        // delivers this signal, and nothing in this process relies on handling it.
        step("ignoring stop signals", unsafe {
            sigaction(signal, &ignore)
        })?;
    }
    Ok(())
}

/// Environment variable in which a process names itself to the worker it starts, so the
/// worker can tell whether its parent died before it armed its parent-death signal (then
/// `getppid()` already names whoever adopted it).
pub const PARENT_PID_ENV: &str = "WG_RS_PARENT_PID";

/// The parent a worker must have: the one named in [`PARENT_PID_ENV`], else (started by
/// hand, or by an older parent) whoever is the parent now.
fn expected_parent(named: Option<&str>, current: nix::unistd::Pid) -> nix::unistd::Pid {
    named
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|&pid| pid > 0)
        .map_or(current, nix::unistd::Pid::from_raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_parent_is_the_one_that_named_itself() {
        use nix::unistd::Pid;
        let now = Pid::from_raw(4242);
        // A parent that died before the worker armed its signal: the worker was adopted
        // (by 1 or a subreaper), and the named pid tells it so.
        assert_eq!(
            expected_parent(Some("17"), Pid::from_raw(1)),
            Pid::from_raw(17)
        );
        assert_eq!(expected_parent(None, now), now);
        assert_eq!(expected_parent(Some("garbage"), now), now);
        assert_eq!(expected_parent(Some("0"), now), now);
        assert_eq!(expected_parent(Some("-5"), now), now);
    }

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

    #[test]
    fn root_and_missing_users_are_refused() {
        assert!(matches!(
            check_worker_users("root", "root", true),
            Err(SandboxError::BadUser(_))
        ));
        assert!(matches!(
            check_worker_users("no-such-user-wgrs-test", "root", false),
            Err(SandboxError::NoSuchUser(_))
        ));
        let msg = SandboxError::NoSuchUser("x".into()).to_string();
        assert!(
            msg.contains("--keyd-user") && msg.contains("useradd"),
            "{msg}"
        );
    }

    #[test]
    fn one_user_for_both_workers_needs_the_old_flag() {
        // `nobody` exists on every Debian system.
        assert!(matches!(
            check_worker_users("nobody", "nobody", false),
            Err(SandboxError::BadUser(_))
        ));
        assert!(
            check_worker_users("nobody", "nobody", true)
                .unwrap()
                .is_some()
        );
    }
}
