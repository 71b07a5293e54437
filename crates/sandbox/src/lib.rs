//! Sandboxing of the wireguard-rs processes: what each may do once it has started.
//!
//! **Owns:** the check, before anything starts, that the capabilities the lock-down needs
//! are there ([`check_start_capabilities`], naming the missing one), the workers' deafness
//! to stop signals ([`ignore_stop_signals`]), and the fixed order in which a process gives
//! up its privileges
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
//!
//! **Linux only:** seccomp, Linux capabilities and `prctl`. On every other OS this crate
//! compiles to an empty library (see the platform table in the README).
#![cfg(target_os = "linux")]
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
pub const EMPTY_ROOT: &str = "/run/wireguard-rs/empty";
/// Memory keyd may lock (all of it is locked, so its secrets never reach swap).
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

impl Role {
    /// Capabilities the role keeps in its permitted, effective and bounding sets:
    /// `CAP_NET_ADMIN` for the monitor (socket marks) and `CAP_KILL`, plus
    /// `CAP_NET_BIND_SERVICE` for listen ports below 1024 unless the administrator turned
    /// them off ([`Options::low_ports`], `--no-low-ports`); nothing for the others. A
    /// capability the process does not have is not gained: only kept if present.
    ///
    /// `CAP_KILL`: when the monitor dies, the kernel sends its children their parent-death
    /// signal with the monitor's credentials; keyd and the spawner run as other users, so
    /// without it the signal is refused silently and a stopped or stuck worker would
    /// outlive the monitor. The monitor's filter lets it send SIGKILL and nothing else.
    pub fn kept_capabilities(self, options: &Options) -> HashSet<Capability> {
        match self {
            Role::Monitor if options.low_ports => [
                Capability::CAP_NET_ADMIN,
                Capability::CAP_KILL,
                Capability::CAP_NET_BIND_SERVICE,
            ]
            .into(),
            Role::Monitor => [Capability::CAP_NET_ADMIN, Capability::CAP_KILL].into(),
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
const CAPABILITY_HINT: &str = "start wireguard-rs as root with its full capability bounding set (systemd: keep it in CapabilityBoundingSet=; capsh/setpriv: do not drop it), or run with --no-sandbox for debugging only";

/// `step`'s failure, naming `capability` when the kernel said EPERM (the only reason it
/// refuses these steps to a process that lacks the capability).
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
    let parent = nix::unistd::getppid();

    // The bounding set first: dropping from it needs CAP_SETPCAP, gone after the switch.
    drop_bounding(&role.kept_capabilities(options))?;
    let running_as_root = Uid::effective().is_root();
    if role.switches_user() && running_as_root {
        let user = lookup_user(&options.user)?;
        if role == Role::Keyd {
            enter_empty_root()?;
        }
        // The spawner keeps the transient group as its saved group, to exec data planes
        // with it (see [`TRANSIENT_EXEC_GID`]); nobody else holds a second group.
        let saved_gid = if role == Role::Spawner {
            Gid::from_raw(TRANSIENT_EXEC_GID)
        } else {
            user.gid
        };
        switch_user(user.uid, user.gid, saved_gid)?;
        // A change of credentials resets both of these: set them again, and make sure the
        // parent did not die in between (its death signal would have been lost).
        step(
            "marking the process not dumpable after the user switch",
            nix::sys::prctl::set_dumpable(false),
        )?;
        rearm_parent_death(parent)?;
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

/// How much of keyd's memory can be locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLock {
    /// Present and future memory: the limit is (or was raised to) at least keyd's budget.
    All,
    /// Only what exists now: the limit is below keyd's budget and cannot be raised
    /// (no `CAP_SYS_RESOURCE`). Locking future memory would make keyd's allocations fail
    /// past the limit, which would take the daemon down; keys loaded later can then reach
    /// swap, so the administrator is told how to fix it.
    PresentOnly,
}

/// Decides how to lock keyd's memory: `raised` is whether the limit could be raised to
/// `budget`, `hard` the hard limit otherwise (`RLIM_INFINITY` is `u64::MAX`).
pub fn memory_lock_plan(raised: bool, hard: u64, budget: u64) -> MemoryLock {
    if raised || hard >= budget {
        MemoryLock::All
    } else {
        MemoryLock::PresentOnly
    }
}

/// Locks keyd's memory so keys never reach swap: all of it, present and future, when
/// `RLIMIT_MEMLOCK` allows keyd's budget (raised with `CAP_SYS_RESOURCE`, or already set
/// high enough, e.g. `LimitMEMLOCK=` in a systemd unit); else what exists now, with a
/// warning saying how to get the rest.
fn lock_memory() -> Result<(), SandboxError> {
    use nix::sys::mman::{MlockAllFlags, mlockall};
    use nix::sys::resource::getrlimit;
    let raised = setrlimit(
        Resource::RLIMIT_MEMLOCK,
        KEYD_MEMLOCK_BYTES,
        KEYD_MEMLOCK_BYTES,
    )
    .is_ok();
    let (_, hard) = step(
        "reading RLIMIT_MEMLOCK",
        getrlimit(Resource::RLIMIT_MEMLOCK),
    )?;
    // MCL_ONFAULT: a page is locked when it is first touched, rather than every mapped
    // page (all of libc, all of keyd's binary) being read in and locked at once. Keys live
    // only in touched pages, so they stay out of swap all the same; keyd's resident set
    // and locked memory shrink to what it uses (6.2 -> 3.3 MiB idle, docs/benchmarks.md),
    // which also leaves a small memlock limit for the keys themselves.
    let lock_on_fault = MlockAllFlags::from_bits_retain(libc::MCL_ONFAULT);
    let flags = match memory_lock_plan(raised, hard, KEYD_MEMLOCK_BYTES) {
        MemoryLock::All => {
            if !raised {
                step(
                    "raising the RLIMIT_MEMLOCK soft limit to the hard limit",
                    setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard),
                )?;
            }
            MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE | lock_on_fault
        }
        MemoryLock::PresentOnly => {
            if hard == 0 {
                return Err(SandboxError::Unfit(format!(
                    "RLIMIT_MEMLOCK is 0 and cannot be raised (no CAP_SYS_RESOURCE): the key process cannot keep its keys out of swap; start it with a memlock limit of at least {} MiB (systemd: LimitMEMLOCK=) or with CAP_SYS_RESOURCE",
                    KEYD_MEMLOCK_BYTES >> 20
                )));
            }
            // The soft limit may be below the hard one (a container's default can be 0,
            // which makes mlockall fail with EPERM): any process may raise it that far.
            step(
                "raising the RLIMIT_MEMLOCK soft limit to the hard limit",
                setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard),
            )?;
            tracing::warn!(
                "RLIMIT_MEMLOCK is {} KiB and cannot be raised (no CAP_SYS_RESOURCE): keyd locks only its present memory, so keys set later may reach swap; start it with CAP_SYS_RESOURCE or a memlock limit of at least {} MiB (systemd: LimitMEMLOCK=)",
                hard / 1024,
                KEYD_MEMLOCK_BYTES >> 20
            );
            MlockAllFlags::MCL_CURRENT | lock_on_fault
        }
    };
    match mlockall(flags) {
        Err(nix::errno::Errno::EPERM) => Err(SandboxError::Unfit(
            "locking the key process's memory (mlockall) was refused with EPERM: a container's \
             seccomp filter forbids it without CAP_IPC_LOCK (systemd-nspawn: \
             --capability=CAP_IPC_LOCK), or the memlock limit is 0; \
             keyd does not run with keys that could be swapped out"
                .to_owned(),
        )),
        other => step("locking memory (mlockall)", other),
    }
}

/// Makes an empty, root-owned directory the process's root. Not optional: a key process
/// that could still open files by path would be one bug away from writing its keys out.
fn enter_empty_root() -> Result<(), SandboxError> {
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
    let step_name = "entering the empty root directory /run/wireguard-rs/empty (it must be an empty, root-owned directory)";
    prepared.map_err(|e| SandboxError::Step {
        step: step_name,
        source: e,
    })?;
    step_needing(
        "entering the empty root directory /run/wireguard-rs/empty (chroot)",
        "CAP_SYS_CHROOT",
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

/// Capabilities the sandbox needs at start-up, besides those a role keeps, with the step
/// that needs each: every process drops its bounding set, and the workers, which start as
/// root with the monitor's bounding set as their capabilities, switch users and keyd enters
/// its empty root.
const START_CAPABILITIES: [(Capability, &str, &str); 4] = [
    (
        Capability::CAP_SETPCAP,
        "CAP_SETPCAP",
        "every process drops the capabilities it does not need from its bounding set, for good",
    ),
    (
        Capability::CAP_SETUID,
        "CAP_SETUID",
        "the key process and the data plane switch to their dedicated users",
    ),
    (
        Capability::CAP_SETGID,
        "CAP_SETGID",
        "the key process and the data plane switch to their dedicated groups",
    ),
    (
        Capability::CAP_SYS_CHROOT,
        "CAP_SYS_CHROOT",
        "the key process enters an empty root directory",
    ),
];

/// Before anything starts, as root with the sandbox on: checks that this process and the
/// workers it will start have the capabilities the lock-down needs, so a reduced bounding
/// set (`capsh --drop=…`, `setpriv --bounding-set`, systemd's `CapabilityBoundingSet=`) is
/// reported by the command the administrator ran, naming the capability, instead of as a
/// worker that died during start-up. Workers start as root by `exec`, so they get this
/// process's bounding set: a capability must be in both the effective and bounding sets.
pub fn check_start_capabilities() -> Result<(), SandboxError> {
    let effective =
        caps::read(None, CapSet::Effective).map_err(caps_error("reading effective set"))?;
    let bounding =
        caps::read(None, CapSet::Bounding).map_err(caps_error("reading bounding set"))?;
    for (cap, name, why) in START_CAPABILITIES {
        let missing_in = match (effective.contains(&cap), bounding.contains(&cap)) {
            (true, true) => continue,
            (false, true) => "effective set",
            (true, false) => "bounding set",
            (false, false) => "effective and bounding sets",
        };
        return Err(SandboxError::Unfit(format!(
            "{name} is missing from this process's {missing_in}, but {why}; {CAPABILITY_HINT}"
        )));
    }
    Ok(())
}

/// The first step of a program the spawner executed (the data plane): if it was started
/// with a transient real group ([`TRANSIENT_EXEC_GID`]), makes its effective group its only
/// group. Before anything else runs; a no-op for processes started otherwise.
pub fn settle_exec_credentials() -> Result<(), SandboxError> {
    let ids = step("reading group ids", nix::unistd::getresgid())?;
    if ids.real != ids.effective || ids.saved != ids.effective {
        let gid = ids.effective;
        step(
            "settling the group ids",
            nix::unistd::setresgid(gid, gid, gid),
        )?;
    }
    step(
        "marking the process not dumpable",
        nix::sys::prctl::set_dumpable(false),
    )
}

/// Prepares `command` (run by the spawner) so the program starts with the transient real
/// group and its own effective group: not dumpable, not traceable, from its first
/// instruction. Does nothing unless this process holds the transient group as its saved
/// group (the sandboxed spawner does; an unsandboxed or unprivileged one does not).
#[allow(unsafe_code)]
pub fn exec_with_transient_group(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let Ok(ids) = nix::unistd::getresgid() else {
        return;
    };
    let transient = Gid::from_raw(TRANSIENT_EXEC_GID);
    if ids.saved != transient || ids.effective == transient {
        return;
    }
    let own = ids.effective;
    // The closure runs in the forked child before exec and makes one async-signal-safe
    // system call on values computed before the fork; it allocates nothing, takes no lock.
    // SAFETY: a pre-exec closure must be async-signal-safe, and this one is (see above).
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setresgid(transient, own, own).map_err(std::io::Error::from)
        });
    }
}

fn switch_user(uid: Uid, gid: Gid, saved_gid: Gid) -> Result<(), SandboxError> {
    step_needing(
        "dropping supplementary groups",
        "CAP_SETGID",
        nix::unistd::setgroups(&[]),
    )?;
    step_needing(
        "switching group",
        "CAP_SETGID",
        nix::unistd::setresgid(gid, gid, saved_gid),
    )?;
    step_needing(
        "switching user",
        "CAP_SETUID",
        nix::unistd::setresuid(uid, uid, uid),
    )?;
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
    let effective =
        caps::read(None, CapSet::Effective).map_err(caps_error("reading effective set"))?;
    if bounding.difference(keep).next().is_some() && !effective.contains(&Capability::CAP_SETPCAP) {
        return Err(SandboxError::MissingCapability {
            step: "dropping capabilities from the bounding set",
            capability: "CAP_SETPCAP",
            hint: CAPABILITY_HINT,
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        });
    }
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

/// Asks the kernel to kill this process when its parent dies, so no worker outlives its
/// supervisor (fail closed). Returns an error if the parent is already gone.
pub fn die_with_parent() -> Result<(), SandboxError> {
    let named = std::env::var(PARENT_PID_ENV).ok();
    rearm_parent_death(expected_parent(named.as_deref(), nix::unistd::getppid()))
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

/// Sets the parent-death signal and checks that `parent` is still the parent (it may have
/// died before the signal was armed; then this process was re-parented).
fn rearm_parent_death(parent: nix::unistd::Pid) -> Result<(), SandboxError> {
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
    fn future_memory_is_locked_only_when_the_limit_covers_the_budget() {
        let budget = KEYD_MEMLOCK_BYTES;
        assert_eq!(memory_lock_plan(true, 0, budget), MemoryLock::All);
        assert_eq!(memory_lock_plan(false, u64::MAX, budget), MemoryLock::All);
        assert_eq!(memory_lock_plan(false, budget, budget), MemoryLock::All);
        // The usual default (8 MiB) without CAP_SYS_RESOURCE: locking future memory would
        // make keyd's allocations fail past 8 MiB.
        assert_eq!(
            memory_lock_plan(false, 8 << 20, budget),
            MemoryLock::PresentOnly
        );
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
