//! One name for "this build has the key process itself": the feature `service` on a system
//! whose IPC and sandbox it runs on (Linux, macOS, FreeBSD, NetBSD). The crate then says
//! `#[cfg(keyd_service)]` once per item instead of repeating the list.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(keyd_service)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let service = std::env::var_os("CARGO_FEATURE_SERVICE").is_some();
    if service && matches!(os.as_str(), "linux" | "macos" | "freebsd" | "netbsd") {
        println!("cargo::rustc-cfg=keyd_service");
    }
}
