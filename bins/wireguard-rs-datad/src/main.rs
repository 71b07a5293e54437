//! `wireguard-rs-datad`: the data-plane worker. Started (through the spawner) by
//! `wireguard-rs` with its channel in `WG_RS_IPC_FD`; not meant to be run by hand (but
//! `--version` answers, naming the AEAD backend it was built with).
#![forbid(unsafe_code)]

/// The AEAD implementation of transport data (the `ring` feature, or RustCrypto).
#[cfg(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
))]
const AEAD: &str = if cfg!(feature = "ring") {
    "ring"
} else {
    "rustcrypto"
};

#[cfg(not(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
)))]
include!("../../unsupported-os.rs");

#[cfg(not(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
)))]
fn main() -> std::process::ExitCode {
    unsupported_os("wireguard-rs-datad")
}

#[cfg(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
))]
fn main() -> std::process::ExitCode {
    let version = format!(
        "{} (commit {}; aead {AEAD}{})",
        env!("CARGO_PKG_VERSION"),
        env!("WG_RS_GIT_COMMIT"),
        if cfg!(feature = "test-hooks") {
            "; TEST HOOKS"
        } else {
            ""
        }
    );
    wg_ipc::worker::main(
        "wireguard-rs-datad",
        wg_sandbox::Role::Datad,
        &version,
        wg_datad::run_worker,
    )
}
