//! `cargo xtask netns-selftest`: proves the namespace plumbing works and leaves nothing.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cmd;
use crate::netns::{self, NotPermitted, RunNames, TwoHosts};

/// Name tag of the self-test's namespaces (`wgrst<pid>a`, …).
pub(crate) const TAG: &str = "wgrst";

/// Runs the self-test. Skips (exit 0) when namespaces cannot be made here.
pub(crate) fn run() -> Result<ExitCode> {
    if !cmd::is_root() {
        println!(
            "netns-selftest: SKIPPED: not root (network namespaces need root; run \
             `sudo -E cargo xtask netns-selftest` to exercise them)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !cmd::on_path("ip") || !cmd::on_path("ping") {
        bail!(
            "netns-selftest needs `ip` (iproute2) and `ping` (iputils-ping): run `cargo xtask setup` as root"
        );
    }
    netns::warn_stale(&[TAG, crate::demo::TAG]);
    let names = RunNames::new(TAG)?;
    println!(
        "netns-selftest: namespaces {0}a and {0}b, veth {0}va/{0}vb",
        names.prefix()
    );
    match TwoHosts::create(&names) {
        Ok(hosts) => {
            let stats = hosts.a.ping(netns::UNDERLAY_B, 1, 2)?;
            println!(
                "netns-selftest: underlay ping {} -> {}: {stats}",
                netns::UNDERLAY_A,
                netns::UNDERLAY_B
            );
            if !stats.ok() {
                bail!("underlay ping failed after setup succeeded");
            }
            let TwoHosts { a, b, .. } = hosts;
            a.delete()?;
            b.delete()?;
        }
        Err(e) if e.downcast_ref::<NotPermitted>().is_some() => {
            println!("netns-selftest: SKIPPED: {e:#}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.context("netns-selftest: setting up two namespaces failed")),
    }
    let left = netns::leftovers(&names)?;
    if !left.is_empty() {
        bail!(
            "netns-selftest: cleanup left {} behind; remove with `ip netns del NAME`",
            left.join(", ")
        );
    }
    println!(
        "netns-selftest: cleanup OK (nothing named {}* in `ip netns list` or `ip link`)",
        names.prefix()
    );
    println!("netns-selftest: PASS");
    Ok(ExitCode::SUCCESS)
}
