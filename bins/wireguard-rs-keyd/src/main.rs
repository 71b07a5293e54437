//! `wireguard-rs-keyd`: the key process. Started by `wireguard-rs` with its channel in
//! `WG_RS_IPC_FD`; not meant to be run by hand (but `--version` answers).
#![forbid(unsafe_code)]

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
    unsupported_os("wireguard-rs-keyd")
}

#[cfg(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
))]
fn main() -> std::process::ExitCode {
    // `--version`: the version, the commit it was built from and the X25519 backend.
    let version = format!(
        "{} (commit {}; x25519 {}{})",
        env!("CARGO_PKG_VERSION"),
        env!("WG_RS_GIT_COMMIT"),
        wg_keyd::X25519_BACKEND,
        if cfg!(feature = "test-hooks") {
            "; TEST HOOKS"
        } else {
            ""
        }
    );
    wg_ipc::worker::main(
        "wireguard-rs-keyd",
        wg_sandbox::Role::Keyd,
        &version,
        wg_keyd::run_worker,
    )
}
