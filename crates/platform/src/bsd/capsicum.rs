//! FreeBSD Capsicum: each descriptor a worker holds is limited to the rights
//! [`crate::policy`] gives its kind, then the roles that can ([`capsicum_mode`]) enter
//! capability mode, where no global namespace (paths, new sockets' addresses, other
//! processes) is reachable any more.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::PlatformError;
use crate::Role;
use crate::policy::{
    CapabilityMode, DescriptorKind, capsicum_descriptors, capsicum_mode, capsicum_rights,
};

/// Limits every descriptor in `fds` to its kind's rights, then enters capability mode if
/// `role` does. Call once the worker holds every descriptor it will use; each is made
/// non-blocking first, since the rights leave no `fcntl`.
#[allow(unsafe_code)]
pub fn enter_capsicum(
    role: Role,
    fds: &[(BorrowedFd<'_>, DescriptorKind)],
) -> Result<(), PlatformError> {
    for &(fd, kind) in fds {
        if !capsicum_descriptors(role).contains(&kind) {
            return Err(PlatformError::UnexpectedDescriptor { kind });
        }
        let flags =
            fcntl(fd, FcntlArg::F_GETFL).map_err(|e| PlatformError::os("fcntl(F_GETFL)", e, ""))?;
        fcntl(
            fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(|e| PlatformError::os("fcntl(F_SETFL)", e, ""))?;
        // `cap_rights_t` is two `u64` words; all-zero is a valid (empty) value,
        // which `__cap_rights_init` then stamps with the version.
        // SAFETY: upheld as the lines above say.
        let mut rights: libc::cap_rights_t = unsafe { std::mem::zeroed() };
        // `rights` is live and exclusively borrowed; the variadic list ends with
        // 0, as the `cap_rights_init` macro of `<sys/capsicum.h>` ends it.
        // SAFETY: upheld as the lines above say.
        unsafe { libc::__cap_rights_init(libc::CAP_RIGHTS_VERSION, &mut rights, 0u64) };
        for &right in capsicum_rights(kind) {
            // SAFETY: as above; `right` is one `CAP_*` value of `<sys/capsicum.h>`.
            unsafe { libc::__cap_rights_set(&mut rights, right, 0u64) };
        }
        // `fd` is open for the call; `rights` is a live, initialized set the kernel
        // only reads.
        // SAFETY: upheld as the lines above say.
        let rc = unsafe { libc::cap_rights_limit(fd.as_raw_fd(), &rights) };
        if rc != 0 {
            return Err(PlatformError::os(
                "cap_rights_limit",
                std::io::Error::last_os_error(),
                " (is the kernel built with options CAPABILITIES?)",
            ));
        }
    }
    if capsicum_mode(role) == CapabilityMode::Enter {
        // SAFETY: takes no argument; from here on the process is in capability mode.
        let rc = unsafe { libc::cap_enter() };
        if rc != 0 {
            return Err(PlatformError::os(
                "cap_enter",
                std::io::Error::last_os_error(),
                " (is the kernel built with options CAPABILITY_MODE?)",
            ));
        }
    }
    Ok(())
}
