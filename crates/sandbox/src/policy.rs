//! The seccomp allow-lists, one per role, kept as data next to the code that needs them
//! (as Firecracker and Cloud Hypervisor do). Anything not listed raises `SIGSYS`.
//!
//! Why each group is there:
//! - every role: memory, futexes, signals, time, the epoll loop, reading and writing
//!   descriptors it already holds, IPC (`sendmsg`/`recvmsg`, and `getsockopt` `SO_TYPE`:
//!   whether a channel handed over is a stream or a seqpacket socket), `getrandom`,
//!   exiting, and `tgkill` only of itself (`abort`), `ioctl` only `FIONBIO`;
//! - keyd: `accept4`, `getsockopt` also for `SO_PEERCRED` (the UAPI client's credentials):
//!   no `socket`, `open*`, `exec*` at all;
//! - datad: `recvmmsg`/`sendmmsg` and the TUN's `TUNGETIFF` (deletion check): no `socket`,
//!   `open*`, `exec*`;
//! - monitor: new UDP sockets (`socket` for `AF_INET`/`AF_INET6` only, `bind`, and only
//!   the socket options it sets), `socketpair` for `AF_UNIX` (a restarted data plane's
//!   channel), children (`wait4`, `waitid`, `pidfd_open`; `kill` and
//!   `pidfd_send_signal` with `SIGKILL` only), `statx` (watching its socket file),
//!   `unlink` (the file at exit), and `ioctl` `TUNGETIFF` (the TUN's deletion check) and
//!   `SIOCGIFMTU` (reading the TUN's MTU, on a throwaway `AF_INET` datagram socket, which
//!   the `socket` rule above already allows): it reads the MTU, it never sets it. No
//!   `exec*`: it never starts a program after start-up;
//! - spawner: what `fork`+`exec` of a data plane needs, and what the data plane's own
//!   start needs until it installs its own filter (filters survive `exec`; see
//!   [`rules`]).
//!
//! Arguments are checked where a syscall's power lies in them:
//! - `fcntl` (every role): only `F_GETFD`, `F_SETFD`, `F_GETFL`, `F_DUPFD_CLOEXEC`
//!   (std's `try_clone`) and `F_SETFL` without `O_ASYNC`. Never `F_SETOWN(_EX)`,
//!   `F_SETSIG`, `F_SETLEASE`, `F_NOTIFY`, locks or pipe sizes: with `O_ASYNC` and an owner
//!   a descriptor's readiness makes the kernel send any signal (`SIGKILL`, `SIGSTOP`) to
//!   any process of the same user, and leases and directory notifications deliver signals
//!   too. (`FIOASYNC`/`FIOSETOWN` are `ioctl`s, allowed to nobody.)
//! - `mmap`/`mprotect`: never `PROT_EXEC` for the monitor, keyd and datad, so an exploit
//!   cannot map code of its own. The spawner must map executable pages (the data plane's
//!   dynamic loader runs under its filter) but never writable and executable at once.
//!   `pkey_mprotect` is allowed to no role.
//! - monitor: `setsockopt` only for the (level, option) pairs of `wg_monitor::sockets`
//!   (`SO_MARK`, the four buffer sizes, `UDP_GRO`, `IPV6_V6ONLY`), `getsockopt` also
//!   for the `UDP_SEGMENT` probe.
//! - spawner: `socket`/`socketpair` only `AF_UNIX`, `openat` only read-only, `ioctl` only
//!   the TUN adoption's requests, `prctl` only the options of a start and lock-down,
//!   `prlimit64` only on itself, `kill` only with `SIGKILL`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::{Role, SandboxError};

/// `TUNGETIFF`: `_IOR('T', 210, unsigned int)`.
const TUNGETIFF: u64 = 0x8004_54d2;
/// `TUNGETVNETHDRSZ`: `_IOR('T', 215, int)`.
const TUNGETVNETHDRSZ: u64 = 0x8004_54d7;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn seccomp_error(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Seccomp(e.to_string())
}

/// A condition on argument `index`, compared as 32 bits (every argument checked here is an
/// `int` or a flag word whose bits fit in 32).
fn arg(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value).map_err(seccomp_error)
}

/// A rule matching when all of `conditions` hold.
fn all_of(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conditions).map_err(seccomp_error)
}

/// A rule matching when argument `index` equals `value`.
fn arg_eq(index: u8, value: u64) -> Result<SeccompRule, SandboxError> {
    all_of(vec![arg(index, SeccompCmpOp::Eq, value)?])
}

/// A rule matching when argument `index` has none of the bits of `mask`.
fn arg_without(index: u8, mask: u64) -> Result<SeccompRule, SandboxError> {
    all_of(vec![arg(index, SeccompCmpOp::MaskedEq(mask), 0)?])
}

fn allow(rules: &mut Rules, syscalls: &[libc::c_long]) {
    for &nr in syscalls {
        rules.insert(nr, Vec::new());
    }
}

/// Allows `nr` only when one of `conditions` (argument index, value) holds.
fn allow_if(
    rules: &mut Rules,
    nr: libc::c_long,
    conditions: &[(u8, u64)],
) -> Result<(), SandboxError> {
    let list = conditions
        .iter()
        .map(|&(i, v)| arg_eq(i, v))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(nr, list);
    Ok(())
}

/// A `c_int` constant as a 32-bit filter value: its bits, as the kernel reads the
/// argument.
fn int(value: libc::c_int) -> u64 {
    u64::from(value as u32)
}

/// `fcntl` commands every role uses (std, tokio, nix, `wg_ipc`): descriptor flags, status
/// flags without `O_ASYNC`, and `F_DUPFD_CLOEXEC`.
fn fcntl_rules() -> Result<Vec<SeccompRule>, SandboxError> {
    let mut list = [
        libc::F_GETFD,
        libc::F_SETFD,
        libc::F_GETFL,
        libc::F_DUPFD_CLOEXEC,
    ]
    .into_iter()
    .map(|cmd| arg_eq(1, int(cmd)))
    .collect::<Result<Vec<_>, _>>()?;
    list.push(all_of(vec![
        arg(1, SeccompCmpOp::Eq, int(libc::F_SETFL))?,
        arg(2, SeccompCmpOp::MaskedEq(int(libc::O_ASYNC)), 0)?,
    ])?);
    Ok(list)
}

/// `setsockopt`/`getsockopt` only for these (level, option) pairs.
fn allow_sockopts(
    rules: &mut Rules,
    nr: libc::c_long,
    pairs: &[(libc::c_int, libc::c_int)],
) -> Result<(), SandboxError> {
    let list = pairs
        .iter()
        .map(|&(level, name)| {
            all_of(vec![
                arg(1, SeccompCmpOp::Eq, int(level))?,
                arg(2, SeccompCmpOp::Eq, int(name))?,
            ])
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Added to what the role already allows for the call (the base allows `SO_TYPE`).
    match rules.get_mut(&nr) {
        // Already allowed whatever the arguments: nothing to narrow.
        Some(existing) if existing.is_empty() => {}
        Some(existing) => existing.extend(list),
        None => {
            rules.insert(nr, list);
        }
    }
    Ok(())
}

/// Syscalls of every role's steady state.
fn base(rules: &mut Rules) -> Result<(), SandboxError> {
    allow(
        rules,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_fstat,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_brk,
            libc::SYS_futex,
            libc::SYS_getrandom,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigaction,
            libc::SYS_sigaltstack,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_sched_yield,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_getuid,
            libc::SYS_geteuid,
            libc::SYS_getgid,
            libc::SYS_getegid,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_create1,
            libc::SYS_eventfd2,
            libc::SYS_ppoll,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_restart_syscall,
        ],
    );
    // A channel's type, which `wg_ipc::Channel::from_fd` asks of every channel it is
    // handed (a stream or a seqpacket socket): a read of one integer, nothing more.
    allow_sockopts(
        rules,
        libc::SYS_getsockopt,
        &[(libc::SOL_SOCKET, libc::SO_TYPE)],
    )?;
    #[cfg(target_arch = "x86_64")]
    allow(rules, &[libc::SYS_epoll_wait, libc::SYS_poll]);
    let own_pid = u64::from(std::process::id());
    allow_if(rules, libc::SYS_tgkill, &[(0, own_pid)])?;
    allow_if(
        rules,
        libc::SYS_ioctl,
        &[(1, u64::from(libc::FIONBIO as u32))],
    )?;
    rules.insert(libc::SYS_fcntl, fcntl_rules()?);
    // Memory, never executable (the spawner replaces these).
    let no_exec = int(libc::PROT_EXEC);
    rules.insert(libc::SYS_mmap, vec![arg_without(2, no_exec)?]);
    rules.insert(libc::SYS_mprotect, vec![arg_without(2, no_exec)?]);
    Ok(())
}

/// The rules for `role`.
///
/// Filters stack and survive `exec`: a data plane runs its whole start (dynamic loader,
/// std and tokio set-up, the crypto threads, its own lock-down) under the spawner's
/// filter, and afterwards every syscall must pass both the spawner's filter and its own.
/// So the spawner's list is the union of what spawning needs and what a data plane needs
/// until it is locked down, and it also holds the data plane's steady-state syscalls.
pub fn rules(role: Role) -> Result<Rules, SandboxError> {
    let mut r = Rules::new();
    base(&mut r)?;
    match role {
        Role::Keyd => {
            allow(&mut r, &[libc::SYS_accept4, libc::SYS_shutdown]);
            // The UAPI client's credentials (`wg_uapi::server`).
            allow_sockopts(
                &mut r,
                libc::SYS_getsockopt,
                &[(libc::SOL_SOCKET, libc::SO_PEERCRED)],
            )?;
        }
        Role::Datad => {
            allow(&mut r, &[libc::SYS_recvmmsg, libc::SYS_sendmmsg]);
            allow_if(
                &mut r,
                libc::SYS_ioctl,
                &[(1, u64::from(libc::FIONBIO as u32)), (1, TUNGETIFF)],
            )?;
        }
        Role::Monitor => monitor(&mut r)?,
        Role::Spawner => spawner(&mut r)?,
    }
    Ok(r)
}

fn monitor(r: &mut Rules) -> Result<(), SandboxError> {
    allow(
        r,
        &[
            libc::SYS_bind,
            libc::SYS_getsockname,
            libc::SYS_shutdown,
            libc::SYS_wait4,
            libc::SYS_waitid,
            libc::SYS_pidfd_open,
            libc::SYS_unlinkat,
            // Watching the UAPI socket file (deleting it stops the daemon).
            libc::SYS_statx,
            libc::SYS_newfstatat,
        ],
    );
    // The monitor keeps CAP_KILL (for its children's parent-death signal, which the kernel
    // sends without a syscall); the syscalls may only send SIGKILL, as killing a child
    // on exit does.
    let sigkill = int(libc::SIGKILL);
    allow_if(r, libc::SYS_kill, &[(1, sigkill)])?;
    allow_if(r, libc::SYS_pidfd_send_signal, &[(1, sigkill)])?;
    #[cfg(target_arch = "x86_64")]
    allow(r, &[libc::SYS_unlink, libc::SYS_lstat]);
    allow_if(
        r,
        libc::SYS_socket,
        &[(0, int(libc::AF_INET)), (0, int(libc::AF_INET6))],
    )?;
    allow_if(r, libc::SYS_socketpair, &[(0, int(libc::AF_UNIX))])?;
    // Non-blocking descriptors, the TUN's deletion check, and reading its MTU for the data
    // plane (`wg_tun::Tun::mtu`, every poll): never `SIOCSIFMTU` or any other `SIOCSIF*`.
    allow_if(
        r,
        libc::SYS_ioctl,
        &[
            (1, u64::from(libc::FIONBIO as u32)),
            (1, TUNGETIFF),
            (1, u64::from(libc::SIOCGIFMTU as u32)),
        ],
    )?;
    // The listen sockets as `wg_monitor::sockets` makes them (again on every port change)
    // and re-marks them: the mark, 7 MiB buffers (the *FORCE options, or the capped plain
    // ones without CAP_NET_ADMIN), receive coalescing, and v6-only for the IPv6 socket.
    allow_sockopts(
        r,
        libc::SYS_setsockopt,
        &[
            (libc::SOL_SOCKET, libc::SO_MARK),
            (libc::SOL_SOCKET, libc::SO_RCVBUFFORCE),
            (libc::SOL_SOCKET, libc::SO_RCVBUF),
            (libc::SOL_SOCKET, libc::SO_SNDBUFFORCE),
            (libc::SOL_SOCKET, libc::SO_SNDBUF),
            (libc::SOL_UDP, libc::UDP_GRO),
            (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
        ],
    )?;
    // The segmentation probe.
    allow_sockopts(
        r,
        libc::SYS_getsockopt,
        &[(libc::SOL_UDP, libc::UDP_SEGMENT)],
    )?;
    Ok(())
}

fn spawner(r: &mut Rules) -> Result<(), SandboxError> {
    allow(
        r,
        &[
            // Starting a data plane (`std::process::Command` through tokio): `clone` for
            // the fork (the pre-exec hook below forces one), `clone3` for glibc's
            // posix_spawn (no hook) and the data plane's threads; the error channel from
            // the child (a socketpair, a pipe in older std); `execve`.
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_pipe2,
            libc::SYS_execve,
            // Reaping it: tokio's pidfd reaper, `wait4` (`kill` below: SIGKILL only).
            libc::SYS_pidfd_open,
            libc::SYS_wait4,
            // `abort` in a data plane: this filter's own-pid rule would name the spawner.
            libc::SYS_tgkill,
            // The exec with a transient real group (the forked child's pre-exec hook), and
            // the data plane's first step that settles it
            // (`wg_sandbox::settle_exec_credentials`).
            libc::SYS_setresgid,
            libc::SYS_getresgid,
            libc::SYS_getresuid,
            // The data plane's start: the dynamic loader (`openat` is restricted below),
            // std's and tokio's set-up (stack guard from /proc/self/maps, CPU count),
            // closing inherited descriptors (/proc/self/fd), the crypto threads.
            libc::SYS_newfstatat,
            libc::SYS_pread64,
            libc::SYS_set_tid_address,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_sched_getaffinity,
            libc::SYS_getdents64,
            // Its lock-down: the parent check, capabilities, the filter.
            libc::SYS_getppid,
            libc::SYS_capget,
            libc::SYS_capset,
            libc::SYS_seccomp,
            // Its steady state, which must pass this filter too.
            libc::SYS_recvmmsg,
            libc::SYS_sendmmsg,
        ],
    );
    // The same operations under their x86_64 names: the child's stdio `dup2`, the loader's
    // `access` (/etc/ld.so.preload, /etc/suid-debug) and TLS set-up.
    #[cfg(target_arch = "x86_64")]
    allow(r, &[libc::SYS_dup2, libc::SYS_access, libc::SYS_arch_prctl]);
    #[cfg(target_arch = "aarch64")]
    allow(r, &[libc::SYS_dup3, libc::SYS_faccessat]);

    // The loader maps the data plane's libraries executable; never writable as well.
    let w = int(libc::PROT_WRITE);
    let x = int(libc::PROT_EXEC);
    let w_xor_x = || -> Result<Vec<SeccompRule>, SandboxError> {
        [0, w, x]
            .into_iter()
            .map(|v| all_of(vec![arg(2, SeccompCmpOp::MaskedEq(w | x), v)?]))
            .collect()
    };
    r.insert(libc::SYS_mmap, w_xor_x()?);
    r.insert(libc::SYS_mprotect, w_xor_x()?);
    // Read-only opens: the loader's libraries, /dev/null for the child's stdin,
    // /proc/self/maps and /proc/self/fd.
    let write_or_create = int(libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND);
    r.insert(libc::SYS_openat, vec![arg_without(2, write_or_create)?]);
    // `if_nametoindex` (the TUN's index) opens an AF_UNIX datagram socket; tokio's signal
    // driver and std's exec-error channel are AF_UNIX socketpairs.
    allow_if(r, libc::SYS_socket, &[(0, int(libc::AF_UNIX))])?;
    allow_if(r, libc::SYS_socketpair, &[(0, int(libc::AF_UNIX))])?;
    // Killing a data plane at the monitor's request (`MonitorToSpawner::KillDatad`).
    allow_if(r, libc::SYS_kill, &[(1, int(libc::SIGKILL))])?;
    // Adopting the TUN (`wg_tun::Tun::from_fd`: flags, header size, index) and making
    // descriptors non-blocking (std's `set_nonblocking`).
    allow_if(
        r,
        libc::SYS_ioctl,
        &[
            (1, u64::from(libc::FIONBIO as u32)),
            (1, TUNGETIFF),
            (1, TUNGETVNETHDRSZ),
            (1, u64::from(libc::SIOCGIFINDEX as u32)),
        ],
    )?;
    // The data plane's first step and lock-down (`wg_sandbox::lock_down`, the `caps`
    // crate, seccompiler) and its crypto threads' names.
    let mut prctl = [
        libc::PR_SET_PDEATHSIG,
        libc::PR_SET_DUMPABLE,
        libc::PR_SET_NAME,
        libc::PR_CAPBSET_READ,
        libc::PR_CAPBSET_DROP,
        libc::PR_SET_NO_NEW_PRIVS,
    ]
    .into_iter()
    .map(|option| arg_eq(0, int(option)))
    .collect::<Result<Vec<_>, _>>()?;
    prctl.push(all_of(vec![
        arg(0, SeccompCmpOp::Eq, int(libc::PR_CAP_AMBIENT))?,
        arg(1, SeccompCmpOp::Eq, int(libc::PR_CAP_AMBIENT_CLEAR_ALL))?,
    ])?);
    r.insert(libc::SYS_prctl, prctl);
    // Reading the stack limit, and `RLIMIT_CORE` = 0: its own limits only.
    allow_if(r, libc::SYS_prlimit64, &[(0, 0)])?;
    Ok(())
}

fn target_arch() -> Result<TargetArch, SandboxError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SandboxError::Seccomp(
            "no seccomp policy for this architecture; run with --no-sandbox".into(),
        ))
    }
}

/// Compiles `role`'s filter.
pub fn compile(role: Role) -> Result<BpfProgram, SandboxError> {
    let filter = SeccompFilter::new(
        rules(role)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        target_arch()?,
    )
    .map_err(seccomp_error)?;
    filter.try_into().map_err(seccomp_error)
}

/// Installs `role`'s filter on every thread of the process.
pub(crate) fn install(role: Role) -> Result<(), SandboxError> {
    let program = compile(role)?;
    seccompiler::apply_filter_all_threads(&program).map_err(seccomp_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_compiles() {
        for role in [Role::Monitor, Role::Keyd, Role::Datad, Role::Spawner] {
            compile(role).unwrap();
        }
    }

    #[test]
    fn keyd_and_datad_cannot_open_files_exec_or_make_sockets() {
        for role in [Role::Keyd, Role::Datad] {
            let r = rules(role).unwrap();
            for nr in [
                libc::SYS_openat,
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_socket,
                libc::SYS_ptrace,
                libc::SYS_process_vm_readv,
                libc::SYS_clone3,
            ] {
                assert!(!r.contains_key(&nr), "{role:?} allows syscall {nr}");
            }
        }
    }

    #[test]
    fn the_spawner_has_only_what_spawning_and_a_data_plane_start_need() {
        let r = rules(Role::Spawner).unwrap();
        for nr in [
            libc::SYS_execveat,
            libc::SYS_bind,
            libc::SYS_connect,
            libc::SYS_setsockopt,
            libc::SYS_getsockname,
            libc::SYS_uname,
            libc::SYS_getcwd,
            libc::SYS_readlinkat,
            libc::SYS_statx,
            libc::SYS_faccessat2,
            libc::SYS_close_range,
            libc::SYS_setpgid,
            libc::SYS_waitid,
            libc::SYS_pidfd_send_signal,
            libc::SYS_pkey_mprotect,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_unshare,
            libc::SYS_setns,
        ] {
            assert!(!r.contains_key(&nr), "the spawner allows syscall {nr}");
        }
        for nr in [
            libc::SYS_socket,
            libc::SYS_socketpair,
            libc::SYS_openat,
            libc::SYS_ioctl,
            libc::SYS_prctl,
            libc::SYS_prlimit64,
            libc::SYS_mmap,
            libc::SYS_mprotect,
            libc::SYS_fcntl,
            // Only `SO_TYPE`: the data plane's start asks its keyd channel's type.
            libc::SYS_getsockopt,
        ] {
            assert!(
                r.get(&nr).is_some_and(|rules| !rules.is_empty()),
                "the spawner allows syscall {nr} without checking its arguments"
            );
        }
    }

    #[test]
    fn the_monitor_cannot_exec() {
        let r = rules(Role::Monitor).unwrap();
        assert!(!r.contains_key(&libc::SYS_execve));
        assert!(!r.contains_key(&libc::SYS_openat));
    }
}
