//! `wireguard-rs`: the daemon's launcher and supervisor ([`daemon`], Linux). On any other
//! OS it exits non-zero, saying what is missing there.
#![forbid(unsafe_code)]

#[cfg(target_os = "linux")]
mod daemon;

#[cfg(not(target_os = "linux"))]
include!("../../unsupported-os.rs");

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    daemon::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    use clap::Parser;
    // `--help` still answers, so the options can be read anywhere.
    let _cli = wireguard_rs::cli::Cli::parse();
    unsupported_os("wireguard-rs")
}
