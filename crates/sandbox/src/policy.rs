//! The seccomp allow-lists, one per role, kept as data next to the code that needs them
//! (as Firecracker and Cloud Hypervisor do). Anything not listed raises `SIGSYS`.
//!
//! Why each group is there:
//! - every role: memory, futexes, signals, time, the epoll loop, reading and writing
//!   descriptors it already holds, IPC (`sendmsg`/`recvmsg`), `getrandom`, exiting, and
//!   `tgkill` only of itself (`abort`), `ioctl` only `FIONBIO`;
//! - keyd: `accept4`, `getsockopt` (peer credentials of UAPI clients): no `socket`,
//!   `open*`, `exec*` at all;
//! - datad: `recvmmsg`/`sendmmsg` and the TUN's `TUNGETIFF` (deletion check): no `socket`,
//!   `open*`, `exec*`;
//! - monitor: new UDP sockets (`socket` for `AF_INET`/`AF_INET6` only, `bind`,
//!   `setsockopt` for `SO_MARK`), `socketpair` for `AF_UNIX` (a restarted data plane's
//!   channel), children (`wait4`, `waitid`, `pidfd_*`, `kill`), `unlink` (its socket file
//!   at exit). No `exec*`: it never starts a program after start-up;
//! - spawner: what `fork`+`exec` and a data plane's start need (it execs; a data plane
//!   starts under its filter and then adds its own, stricter one).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::{Role, SandboxError};

/// `TUNGETIFF`: `_IOR('T', 210, unsigned int)`.
const TUNGETIFF: u64 = 0x8004_54d2;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn seccomp_error(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Seccomp(e.to_string())
}

/// A rule matching when argument `index` (32-bit) equals `value`.
fn arg_eq(index: u8, value: u64) -> Result<SeccompRule, SandboxError> {
    let c = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(seccomp_error)?;
    SeccompRule::new(vec![c]).map_err(seccomp_error)
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
            libc::SYS_fcntl,
            libc::SYS_fstat,
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_mprotect,
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
    #[cfg(target_arch = "x86_64")]
    allow(rules, &[libc::SYS_epoll_wait, libc::SYS_poll]);
    let own_pid = u64::from(std::process::id());
    allow_if(rules, libc::SYS_tgkill, &[(0, own_pid)])?;
    allow_if(
        rules,
        libc::SYS_ioctl,
        &[(1, u64::from(libc::FIONBIO as u32))],
    )?;
    Ok(())
}

/// The rules for `role`.
pub fn rules(role: Role) -> Result<Rules, SandboxError> {
    let mut r = Rules::new();
    base(&mut r)?;
    match role {
        Role::Keyd => allow(
            &mut r,
            &[libc::SYS_accept4, libc::SYS_getsockopt, libc::SYS_shutdown],
        ),
        Role::Datad => {
            allow(&mut r, &[libc::SYS_recvmmsg, libc::SYS_sendmmsg]);
            allow_if(
                &mut r,
                libc::SYS_ioctl,
                &[(1, u64::from(libc::FIONBIO as u32)), (1, TUNGETIFF)],
            )?;
        }
        Role::Monitor => {
            allow(
                &mut r,
                &[
                    libc::SYS_bind,
                    libc::SYS_getsockname,
                    libc::SYS_setsockopt,
                    libc::SYS_getsockopt,
                    libc::SYS_shutdown,
                    libc::SYS_wait4,
                    libc::SYS_waitid,
                    libc::SYS_pidfd_open,
                    libc::SYS_pidfd_send_signal,
                    libc::SYS_kill,
                    libc::SYS_unlinkat,
                    // Watching the UAPI socket file (deleting it stops the daemon).
                    libc::SYS_statx,
                    libc::SYS_newfstatat,
                ],
            );
            #[cfg(target_arch = "x86_64")]
            allow(&mut r, &[libc::SYS_unlink, libc::SYS_lstat]);
            allow_if(
                &mut r,
                libc::SYS_socket,
                &[(0, libc::AF_INET as u64), (0, libc::AF_INET6 as u64)],
            )?;
            allow_if(&mut r, libc::SYS_socketpair, &[(0, libc::AF_UNIX as u64)])?;
            allow_if(
                &mut r,
                libc::SYS_ioctl,
                &[(1, u64::from(libc::FIONBIO as u32)), (1, TUNGETIFF)],
            )?;
        }
        Role::Spawner => {
            allow(
                &mut r,
                &[
                    // Starting children.
                    libc::SYS_clone,
                    libc::SYS_clone3,
                    libc::SYS_execve,
                    libc::SYS_execveat,
                    libc::SYS_wait4,
                    libc::SYS_waitid,
                    libc::SYS_pidfd_open,
                    libc::SYS_pidfd_send_signal,
                    libc::SYS_kill,
                    libc::SYS_tgkill,
                    libc::SYS_dup3,
                    libc::SYS_pipe2,
                    libc::SYS_close_range,
                    libc::SYS_setpgid,
                    libc::SYS_prctl,
                    libc::SYS_getppid,
                    // The exec with a transient real group, and the data plane's first
                    // step that settles it (`wg_sandbox::settle_exec_credentials`).
                    libc::SYS_setresgid,
                    libc::SYS_getresgid,
                    libc::SYS_getresuid,
                    // A data plane's start, and its own lock-down (capabilities, filter): the dynamic loader, std and tokio set-up, the
                    // TUN's name lookup.
                    libc::SYS_openat,
                    libc::SYS_newfstatat,
                    libc::SYS_statx,
                    libc::SYS_faccessat,
                    libc::SYS_faccessat2,
                    libc::SYS_readlinkat,
                    libc::SYS_pread64,
                    libc::SYS_set_tid_address,
                    libc::SYS_set_robust_list,
                    libc::SYS_rseq,
                    libc::SYS_prlimit64,
                    libc::SYS_sched_getaffinity,
                    libc::SYS_getcwd,
                    libc::SYS_ioctl,
                    libc::SYS_socket,
                    libc::SYS_socketpair,
                    libc::SYS_recvmmsg,
                    libc::SYS_sendmmsg,
                    libc::SYS_getsockopt,
                    libc::SYS_setsockopt,
                    libc::SYS_getsockname,
                    libc::SYS_uname,
                    libc::SYS_getdents64,
                    libc::SYS_capget,
                    libc::SYS_capset,
                    libc::SYS_seccomp,
                ],
            );
            #[cfg(target_arch = "x86_64")]
            allow(
                &mut r,
                &[
                    libc::SYS_fork,
                    libc::SYS_vfork,
                    libc::SYS_dup2,
                    libc::SYS_open,
                    libc::SYS_access,
                    libc::SYS_readlink,
                    libc::SYS_arch_prctl,
                    libc::SYS_stat,
                ],
            );
        }
    }
    Ok(r)
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
    fn the_monitor_cannot_exec() {
        let r = rules(Role::Monitor).unwrap();
        assert!(!r.contains_key(&libc::SYS_execve));
        assert!(!r.contains_key(&libc::SYS_openat));
    }
}
