//! Reporting a syscall the filter refused. The filter's action is `SECCOMP_RET_TRAP`: the
//! kernel raises `SIGSYS` with the syscall number in `siginfo`. The handler sends a fixed
//! 12-byte datagram (an 8-byte prefix the receiver recognises, then the number) on the
//! process's IPC socket, writes one line to stderr, and exits with [`SIGSYS_EXIT_CODE`].
//! Everything it calls is async-signal-safe and allowed by every filter.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::SandboxError;

/// Exit status of a process that made a forbidden syscall (128 + SIGSYS).
pub const SIGSYS_EXIT_CODE: i32 = 128 + libc::SIGSYS;

/// Where and how to report a refused syscall.
#[derive(Debug, Clone, Copy)]
pub struct SyscallReport {
    /// A connected `SOCK_SEQPACKET` socket to the supervising process.
    pub fd: RawFd,
    /// First 8 bytes of the report datagram, which the receiver recognises.
    pub prefix: [u8; 8],
}

static REPORT_FD: AtomicI32 = AtomicI32::new(-1);
static REPORT_PREFIX: AtomicU64 = AtomicU64::new(0);

/// Byte offset of `si_syscall` in `siginfo_t` on 64-bit Linux: `si_signo`, `si_errno`,
/// `si_code` and padding (16 bytes), then the `_sigsys` union member: `_call_addr` (8),
/// `_syscall` (4), `_arch` (4).
const SI_SYSCALL_OFFSET: usize = 24;

#[allow(unsafe_code)]
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let field = info
        .cast::<u8>()
        .wrapping_add(SI_SYSCALL_OFFSET)
        .cast::<i32>();
    // SAFETY: the kernel passes a valid siginfo_t to SA_SIGINFO handlers; for SIGSYS the
    // 4 bytes at SI_SYSCALL_OFFSET hold the syscall number (see the constant's comment).
    let nr = unsafe { std::ptr::read_unaligned(field) };
    let mut msg = [0u8; 12];
    msg[..8].copy_from_slice(&REPORT_PREFIX.load(Ordering::Relaxed).to_le_bytes());
    msg[8..].copy_from_slice(&nr.to_le_bytes());
    let fd = REPORT_FD.load(Ordering::Relaxed);
    let line = b"wireguard-rs: seccomp refused a syscall; exiting\n";
    // SAFETY: send, write and _exit are async-signal-safe; the buffers are live locals and
    // statics, and the fd is either -1 (the call fails harmlessly) or our IPC socket.
    unsafe {
        if fd >= 0 {
            libc::send(
                fd,
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::_exit(SIGSYS_EXIT_CODE);
    }
}

/// Installs the `SIGSYS` handler.
#[allow(unsafe_code)]
pub(crate) fn install(report: SyscallReport) -> Result<(), SandboxError> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    REPORT_FD.store(report.fd, Ordering::Relaxed);
    REPORT_PREFIX.store(u64::from_le_bytes(report.prefix), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::SigAction(on_sigsys),
        SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    // SAFETY: the handler only reads its siginfo and calls async-signal-safe functions;
    // replacing the default SIGSYS disposition (a core dump) affects nothing else.
    unsafe { sigaction(Signal::SIGSYS, &action) }
        .map(|_| ())
        .map_err(|e| SandboxError::Step {
            step: "installing the SIGSYS handler",
            source: e.into(),
        })
}
