//! The lock-down of macOS, FreeBSD and NetBSD: the steps every Unix shares (no core
//! dumps, not traceable, keyd's empty root, the worker's own user and group), then the OS's
//! own confinement as `wg-platform` applies it from its policy tables. Compiled for these
//! systems by CI; never run (no such machine here).

#[cfg(target_os = "freebsd")]
use std::os::fd::BorrowedFd;
use std::os::fd::RawFd;

use nix::sys::resource::{Resource, getrlimit, rlim_t, setrlimit};
use nix::unistd::{Gid, Uid};
use wg_platform::policy::rlimits;

use crate::{Options, PARENT_PID_ENV, Role, SandboxError, expected_parent, lookup_user, step};

/// Where a refused system call would be reported. Only Linux's seccomp filters report
/// one; the type is here so the workers start the same way everywhere.
#[derive(Debug, Clone, Copy)]
pub struct SyscallReport {
    /// The IPC socket to the supervising process.
    pub fd: RawFd,
    /// First 8 bytes of a report.
    pub prefix: [u8; 8],
}

/// Most descriptor numbers looked at when closing or classifying descriptors: the workers
/// are started with few, and a limit of millions would make the scan slow.
const MAX_FD_SCAN: u64 = 65_536;

/// The descriptor numbers worth looking at: below the process's limit, at most
/// [`MAX_FD_SCAN`].
fn fd_scan_end() -> RawFd {
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    // rlim_t is signed on FreeBSD (RLIM_INFINITY is its largest value), unsigned elsewhere.
    #[allow(clippy::useless_conversion)]
    let soft = u64::try_from(soft).unwrap_or(MAX_FD_SCAN);
    RawFd::try_from(soft.min(MAX_FD_SCAN)).unwrap_or(1024)
}

/// Closes every descriptor except stdin, stdout, stderr and `keep`: whatever a parent
/// leaked must not reach a sandboxed process. Call first thing in `main`. (These systems
/// have no `/proc/self/fd` to list, so every number below the limit is tried.)
pub fn close_inherited_fds(keep: &[RawFd]) -> Result<(), SandboxError> {
    for fd in 3..fd_scan_end() {
        if !keep.contains(&fd) {
            // Most numbers are not open: EBADF is the expected answer.
            let _ = nix::unistd::close(fd);
        }
    }
    Ok(())
}

/// Nothing to settle: the transient exec group is Linux's (its spawner's) device.
pub fn settle_exec_credentials() -> Result<(), SandboxError> {
    Ok(())
}

/// Makes this process die with its parent where the OS can (FreeBSD's
/// `PROC_PDEATHSIG_CTL`), and checks that the parent is still the one that started it.
/// Where it cannot (macOS, NetBSD), the worker still ends when its channel to the monitor
/// closes, which the monitor's death does.
pub fn die_with_parent() -> Result<(), SandboxError> {
    let named = std::env::var(PARENT_PID_ENV).ok();
    let parent = expected_parent(named.as_deref(), nix::unistd::getppid());
    #[cfg(target_os = "freebsd")]
    set_parent_death_signal()?;
    if nix::unistd::getppid() != parent {
        return Err(SandboxError::Step {
            step: "checking the parent",
            source: std::io::Error::other("the parent process already exited"),
        });
    }
    Ok(())
}

#[cfg(target_os = "freebsd")]
#[allow(unsafe_code)]
fn set_parent_death_signal() -> Result<(), SandboxError> {
    let mut signal: libc::c_int = libc::SIGKILL;
    // `procctl` reads one `int` through the pointer, which points at a live local; id 0
    // with P_PID means this process.
    // SAFETY: upheld as the lines above say.
    let rc = unsafe {
        libc::procctl(
            libc::P_PID,
            0,
            libc::PROC_PDEATHSIG_CTL,
            std::ptr::from_mut(&mut signal).cast(),
        )
    };
    if rc != 0 {
        return Err(SandboxError::Step {
            step: "setting the parent-death signal (procctl)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The role as `wg-platform`'s policy tables name it; the monitor has no table.
fn platform_role(role: Role) -> Option<wg_platform::Role> {
    match role {
        Role::Keyd => Some(wg_platform::Role::Keyd),
        Role::Datad => Some(wg_platform::Role::Datad),
        Role::Spawner => Some(wg_platform::Role::Spawner),
        Role::Monitor => None,
    }
}

/// Gives up privileges for `role`, in a fixed order: core dumps off, not traceable, then
/// (when started as root) keyd's empty root and the worker's own user and group, last the
/// OS's confinement: the macOS sandbox profile with its resource limits; FreeBSD's
/// Capsicum rights on every descriptor the worker was handed (and capability mode for
/// keyd) with the resource limits; NetBSD's resource limits. `_report` is unused: only
/// Linux's filters report a refused call.
pub fn lock_down(
    role: Role,
    options: &Options,
    _report: Option<SyscallReport>,
) -> Result<(), SandboxError> {
    if !crate::lock_down_starts(role, options)? {
        return Ok(());
    }
    deny_tracing()?;
    let Some(confined) = platform_role(role) else {
        // The monitor keeps root here (no capabilities to keep instead): nothing more.
        return Ok(());
    };
    if Uid::effective().is_root() {
        let user = lookup_user(&options.user)?;
        if role == Role::Keyd {
            crate::enter_empty_root()?;
        }
        switch_user(user.uid, user.gid)?;
    }
    ignore_file_size_signal()?;
    confine(confined)?;
    tracing::info!("{role:?} sandboxed");
    Ok(())
}

/// The resource limits forbid growing any file (`RLIMIT_FSIZE` 0); a write past it raises
/// `SIGXFSZ`, which would kill a worker whose standard error is a regular file (launchd's
/// `StandardErrorPath`, `2>>log`) at its first log line. Ignored, the write fails with
/// `EFBIG` instead: such a worker's lines are lost, the worker lives. (Give the daemon a
/// pipe or terminal as standard error: the README says so.)
#[allow(unsafe_code)]
fn ignore_file_size_signal() -> Result<(), SandboxError> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SIG_IGN runs no code in the process; it only changes how the kernel delivers it.
    // SAFETY: upheld as the line above says.
    step("ignoring SIGXFSZ", unsafe {
        sigaction(Signal::SIGXFSZ, &ignore)
    })?;
    Ok(())
}

/// Only the worker's own group, then its user; root must be out of reach afterwards.
/// (`setgid`/`setuid` as root set the real, effective and saved ids on these systems.)
fn switch_user(uid: Uid, gid: Gid) -> Result<(), SandboxError> {
    set_only_group(gid)?;
    step("switching group", nix::unistd::setgid(gid))?;
    step("switching user", nix::unistd::setuid(uid))?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(SandboxError::Step {
            step: "verifying the user switch",
            source: std::io::Error::other("could regain root"),
        });
    }
    Ok(())
}

/// Makes `gid` the only supplementary group (nix has no `setgroups` for macOS).
#[allow(unsafe_code)]
fn set_only_group(gid: Gid) -> Result<(), SandboxError> {
    let groups = [gid.as_raw()];
    // The pointer and length describe the live one-element array above, which the kernel
    // only reads.
    // SAFETY: upheld as the lines above say.
    let rc = unsafe { libc::setgroups(1, groups.as_ptr()) };
    if rc != 0 {
        return Err(SandboxError::Step {
            step: "dropping supplementary groups",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// No debugger may attach: macOS's `PT_DENY_ATTACH`, FreeBSD's `PROC_TRACE_CTL`. NetBSD
/// has no per-process switch; a worker that changed its user is marked set-id there, which
/// keeps unprivileged tracers out.
#[allow(unsafe_code)]
fn deny_tracing() -> Result<(), SandboxError> {
    #[cfg(target_os = "macos")]
    {
        // Takes no pointer (null address, zero data); it only marks this process.
        // SAFETY: upheld as the line above says.
        let rc = unsafe { libc::ptrace(libc::PT_DENY_ATTACH, 0, std::ptr::null_mut(), 0) };
        if rc != 0 {
            return Err(SandboxError::Step {
                step: "denying debuggers (ptrace PT_DENY_ATTACH)",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    #[cfg(target_os = "freebsd")]
    {
        let mut disable: libc::c_int = libc::PROC_TRACE_CTL_DISABLE;
        // `procctl` reads one `int` through the pointer, which points at a live local.
        // SAFETY: upheld as the line above says.
        let rc = unsafe {
            libc::procctl(
                libc::P_PID,
                0,
                libc::PROC_TRACE_CTL,
                std::ptr::from_mut(&mut disable).cast(),
            )
        };
        if rc != 0 {
            return Err(SandboxError::Step {
                step: "denying debuggers (procctl PROC_TRACE_CTL)",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// The OS's confinement of `role`: its sandbox profile and resource limits; for the
/// spawner the resource limits only. A macOS process can enter a sandbox profile once, and
/// its children inherit it: a second `sandbox_init` (the data plane's own, after the
/// spawner starts it) is refused as `forbidden-sandbox-reinit` and the process is killed.
/// So the data plane must start from an unsandboxed parent, and the spawner, which only
/// starts it, is confined by its own user and its resource limits.
#[cfg(target_os = "macos")]
fn confine(role: wg_platform::Role) -> Result<(), SandboxError> {
    if role == wg_platform::Role::Spawner {
        return set_rlimits(role);
    }
    wg_platform::macos::enter_sandbox(role, None).map_err(|e| SandboxError::Step {
        step: "entering the macOS sandbox",
        source: std::io::Error::other(e.to_string()),
    })
}

/// The OS's confinement of `role`.
#[cfg(target_os = "freebsd")]
#[allow(unsafe_code)]
fn confine(role: wg_platform::Role) -> Result<(), SandboxError> {
    let fds = handed_descriptors(role);
    let borrowed: Vec<(BorrowedFd<'_>, wg_platform::policy::DescriptorKind)> = fds
        .iter()
        .map(|&(fd, kind)| {
            // Each number was open a moment ago in this single-threaded start-up and
            // nothing closes it while the rights are limited.
            // SAFETY: upheld as the line above says.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            (fd, kind)
        })
        .collect();
    set_rlimits(role)?;
    wg_platform::bsd::enter_capsicum(role, &borrowed).map_err(|e| SandboxError::Step {
        step: "entering Capsicum",
        source: std::io::Error::other(e.to_string()),
    })
}

/// The OS's confinement of `role`: NetBSD has no syscall filter, so the resource limits
/// are all (say so in the README's platform table).
#[cfg(target_os = "netbsd")]
fn confine(role: wg_platform::Role) -> Result<(), SandboxError> {
    set_rlimits(role)
}

/// A limit from the policy table as this OS's `rlim_t` (signed on FreeBSD): the table's
/// limits are small, so the conversion never saturates in practice.
fn rlim(value: u64) -> rlim_t {
    rlim_t::try_from(value).unwrap_or(rlim_t::MAX)
}

/// The role's resource limits, soft and hard, so they cannot be raised again.
fn set_rlimits(role: wg_platform::Role) -> Result<(), SandboxError> {
    let limits = rlimits(role);
    let (fsize, nofile) = (rlim(limits.fsize), rlim(limits.nofile));
    step(
        "limiting file sizes (RLIMIT_FSIZE)",
        setrlimit(Resource::RLIMIT_FSIZE, fsize, fsize),
    )?;
    step(
        "limiting descriptors (RLIMIT_NOFILE)",
        setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile),
    )?;
    // On macOS only the spawner comes here, which forks (no process limit in its table);
    // keyd's and datad's limits are set by `wg_platform::macos::enter_sandbox`.
    #[cfg(not(target_os = "macos"))]
    if let Some(nproc) = limits.nproc.map(rlim) {
        step(
            "forbidding new processes (RLIMIT_NPROC)",
            setrlimit(Resource::RLIMIT_NPROC, nproc, nproc),
        )?;
    }
    Ok(())
}

/// The descriptors above the standard streams whose kind `role`'s table lists, found by
/// asking the kernel what each open descriptor is.
#[cfg(target_os = "freebsd")]
fn handed_descriptors(
    role: wg_platform::Role,
) -> Vec<(RawFd, wg_platform::policy::DescriptorKind)> {
    use wg_platform::policy::{capsicum_descriptors, descriptor_kind};
    (3..fd_scan_end())
        .filter_map(|fd| Some((fd, descriptor_kind(facts(fd)?)?)))
        .filter(|(_, kind)| capsicum_descriptors(role).contains(kind))
        .collect()
}

/// What the kernel says descriptor `fd` is; `None` if it is not open.
#[cfg(target_os = "freebsd")]
#[allow(unsafe_code)]
fn facts(fd: RawFd) -> Option<wg_platform::policy::DescriptorFacts> {
    use nix::sys::socket::{SockType, SockaddrLike, getsockname, getsockopt, sockopt};
    use nix::sys::stat::{SFlag, fstat};
    use wg_platform::policy::{DescriptorFacts, SocketFamily, SocketKind};
    // Only borrowed for the queries below, which fail harmlessly (EBADF) for a number
    // that is not open.
    // SAFETY: upheld as the lines above say.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = fstat(borrowed).ok()?;
    let format = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if format == SFlag::S_IFCHR {
        return Some(DescriptorFacts::CharDevice);
    }
    if format != SFlag::S_IFSOCK {
        return Some(DescriptorFacts::Other);
    }
    let kind = match getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::Stream) => SocketKind::Stream,
        Ok(SockType::Datagram) => SocketKind::Datagram,
        Ok(SockType::SeqPacket) => SocketKind::SeqPacket,
        _ => SocketKind::Other,
    };
    let family = match getsockname::<nix::sys::socket::SockaddrStorage>(fd)
        .ok()
        .and_then(|address| address.family())
    {
        Some(nix::sys::socket::AddressFamily::Unix) => SocketFamily::Unix,
        Some(nix::sys::socket::AddressFamily::Inet | nix::sys::socket::AddressFamily::Inet6) => {
            SocketFamily::Inet
        }
        _ => SocketFamily::Other,
    };
    let listening = getsockopt(&borrowed, sockopt::AcceptConn).unwrap_or(false);
    Some(DescriptorFacts::Socket {
        kind,
        family,
        listening,
    })
}
