//! `wireguard-rs`: the daemon's launcher and supervisor ([`daemon`]: Linux, macOS,
//! FreeBSD, NetBSD). On any other OS it exits non-zero, saying what is missing there.
#![forbid(unsafe_code)]

#[cfg(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
))]
mod daemon;

#[cfg(not(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
)))]
include!("../../unsupported-os.rs");

#[cfg(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
))]
fn main() -> std::process::ExitCode {
    daemon::main()
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
)))]
fn main() -> std::process::ExitCode {
    use clap::Parser;
    // `--help` still answers, so the options can be read anywhere.
    let _cli = wireguard_rs::cli::Cli::parse();
    unsupported_os("wireguard-rs")
}
