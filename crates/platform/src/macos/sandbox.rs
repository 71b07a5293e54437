//! Entering the macOS sandbox: the role's SBPL profile from [`crate::policy`] through
//! `sandbox_init`, then the resource limits, as OpenSSH's Darwin sandbox does. Called by
//! a worker once it holds every descriptor it will use.

use std::ffi::{CStr, CString, c_char, c_int};

use crate::PlatformError;
use crate::Role;
use crate::policy::{macos_profile, rlimits};

// `<sandbox.h>` (libsystem_sandbox, part of libSystem): deprecated in the headers but the
// interface OpenSSH, Chromium and others still use to confine a process by a profile.
#[allow(unsafe_code)]
unsafe extern "C" {
    /// With `flags` 0, `profile` is SBPL text; on failure `*errorbuf` gets a message to
    /// free with `sandbox_free_error`.
    fn sandbox_init(profile: *const c_char, flags: u64, errorbuf: *mut *mut c_char) -> c_int;
    /// Frees a message from `sandbox_init`.
    fn sandbox_free_error(errorbuf: *mut c_char);
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Keyd => "keyd",
        Role::Datad => "datad",
        Role::Spawner => "spawner",
    }
}

/// Confines the calling process as `role` (the spawner's profile names the data-plane
/// program `datad_path` it may start), then sets the role's resource limits. There is no
/// way back.
#[allow(unsafe_code)]
pub fn enter_sandbox(role: Role, datad_path: Option<&str>) -> Result<(), PlatformError> {
    let profile = macos_profile(role, datad_path)?;
    // The policy refuses control characters in paths, so no NUL is inside.
    let profile = CString::new(profile).map_err(|_| PlatformError::Sandbox {
        role: role_name(role),
        message: "the profile contains a NUL byte".to_owned(),
    })?;
    let mut error: *mut c_char = std::ptr::null_mut();
    // `profile` is a NUL-terminated string alive for the call; `error` is a valid
    // place for the library to store a message pointer.
    // SAFETY: upheld as the lines above say.
    let rc = unsafe { sandbox_init(profile.as_ptr(), 0, &mut error) };
    if rc != 0 {
        let message = if error.is_null() {
            std::io::Error::last_os_error().to_string()
        } else {
            // on failure a non-null `error` is a NUL-terminated string owned by
            // the library until `sandbox_free_error`, which is called right after the copy.
            // SAFETY: upheld as the lines above say.
            let text = unsafe { CStr::from_ptr(error) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: `error` came from `sandbox_init` and is freed once.
            unsafe { sandbox_free_error(error) };
            text
        };
        return Err(PlatformError::Sandbox {
            role: role_name(role),
            message,
        });
    }
    let limits = rlimits(role);
    set_rlimit(libc::RLIMIT_FSIZE, limits.fsize, "setrlimit(RLIMIT_FSIZE)")?;
    set_rlimit(
        libc::RLIMIT_NOFILE,
        limits.nofile,
        "setrlimit(RLIMIT_NOFILE)",
    )?;
    if let Some(nproc) = limits.nproc {
        set_rlimit(libc::RLIMIT_NPROC, nproc, "setrlimit(RLIMIT_NPROC)")?;
    }
    Ok(())
}

/// Sets `resource`'s soft and hard limit to `value`, so it cannot be raised again.
#[allow(unsafe_code)]
fn set_rlimit(resource: c_int, value: u64, what: &'static str) -> Result<(), PlatformError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid `rlimit` alive for the call, which only reads it.
    let rc = unsafe { libc::setrlimit(resource, &limit) };
    if rc == 0 {
        Ok(())
    } else {
        Err(PlatformError::os(what, std::io::Error::last_os_error(), ""))
    }
}
