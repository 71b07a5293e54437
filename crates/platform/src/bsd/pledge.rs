//! OpenBSD pledge(2) and unveil(2) with the lists of [`crate::policy`].
//!
//! OpenBSD is a tier-3 Rust target: this file has never been compiled, let alone run. It
//! is kept to the two calls so a reviewer on OpenBSD can check it at a glance.

use std::ffi::CString;

use crate::PlatformError;
use crate::Role;
use crate::policy::{PolicyError, pledge_promises, unveil_paths};

fn c_string(text: &str) -> Result<CString, PlatformError> {
    CString::new(text).map_err(|_| PlatformError::Policy(PolicyError::UnsafePath(text.to_owned())))
}

fn check(rc: libc::c_int, what: &'static str) -> Result<(), PlatformError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(PlatformError::os(what, std::io::Error::last_os_error(), ""))
    }
}

/// Unveils `role`'s paths, locks unveil, then pledges `role`'s promises.
#[allow(unsafe_code)]
pub fn enter_pledge(role: Role, datad_path: Option<&str>) -> Result<(), PlatformError> {
    for (path, permissions) in unveil_paths(role, datad_path)? {
        let (path, permissions) = (c_string(&path)?, c_string(permissions)?);
        check(
            // SAFETY: both are NUL-terminated strings alive for the call.
            unsafe { libc::unveil(path.as_ptr(), permissions.as_ptr()) },
            "unveil",
        )?;
    }
    check(
        // SAFETY: two null pointers lock the unveil list, as unveil(2) documents.
        unsafe { libc::unveil(std::ptr::null(), std::ptr::null()) },
        "unveil (lock)",
    )?;
    let promises = c_string(pledge_promises(role))?;
    check(
        // SAFETY: `promises` is NUL-terminated and alive; null execpromises leaves those as is.
        unsafe { libc::pledge(promises.as_ptr(), std::ptr::null()) },
        "pledge",
    )
}
