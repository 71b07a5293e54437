//! The Linux lock-down: capabilities, `prctl`, seccomp, `/proc`.

use std::collections::HashSet;
use std::os::fd::RawFd;

use caps::{CapSet, Capability};
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid};

use crate::sigsys::{self, SyscallReport};
use crate::{
    CAPABILITY_HINT, KEYD_MEMLOCK_BYTES, Options, PARENT_PID_ENV, Role, SandboxError,
    TRANSIENT_EXEC_GID, enter_empty_root, expected_parent, lookup_user, policy, step, step_needing,
};

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
    if !crate::lock_down_starts(role, options)? {
        return Ok(());
    }
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

/// Asks the kernel to kill this process when its parent dies, so no worker outlives its
/// supervisor (fail closed). Returns an error if the parent is already gone.
pub fn die_with_parent() -> Result<(), SandboxError> {
    let named = std::env::var(PARENT_PID_ENV).ok();
    rearm_parent_death(expected_parent(named.as_deref(), nix::unistd::getppid()))
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
}
