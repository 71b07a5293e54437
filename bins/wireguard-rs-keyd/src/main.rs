//! `wireguard-rs-keyd`: the key process. Started by `wireguard-rs` with its channel in
//! `WG_RS_IPC_FD`; not meant to be run by hand (but `--version` answers).
#![forbid(unsafe_code)]

#[cfg(not(target_os = "linux"))]
include!("../../unsupported-os.rs");

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    unsupported_os("wireguard-rs-keyd")
}

#[cfg(target_os = "linux")]
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
