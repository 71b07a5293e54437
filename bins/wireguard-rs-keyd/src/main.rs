//! `wireguard-rs-keyd`: the key process. Started by `wireguard-rs` with its channel in
//! `WG_RS_IPC_FD`; not meant to be run by hand (but `--version` answers).
#![forbid(unsafe_code)]

/// `--version`: the version and the commit it was built from.
#[cfg(target_os = "linux")]
const VERSION: &str = if cfg!(feature = "test-hooks") {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("WG_RS_GIT_COMMIT"),
        "; TEST HOOKS)"
    )
} else {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("WG_RS_GIT_COMMIT"),
        ")"
    )
};

#[cfg(not(target_os = "linux"))]
include!("../../unsupported-os.rs");

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    unsupported_os("wireguard-rs-keyd")
}

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    wg_ipc::worker::main(
        "wireguard-rs-keyd",
        wg_sandbox::Role::Keyd,
        VERSION,
        wg_keyd::run_worker,
    )
}
