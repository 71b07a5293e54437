// The git commit a binary was built from, for `--version`, as `WG_RS_GIT_COMMIT`: a
// packager's `WIREGUARD_RS_GIT_COMMIT` (e.g. from a source tarball's metadata), else
// `git rev-parse --short HEAD` in the source tree, else "unknown" (not a checkout, or no
// git). `include!`d by the build script of each of the three binaries.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(std::env::var_os("CARGO_MANIFEST_DIR")?)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build-commit.rs");
    println!("cargo:rerun-if-env-changed=WIREGUARD_RS_GIT_COMMIT");
    let commit = match std::env::var("WIREGUARD_RS_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself, the branch it names, packed refs.
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
                println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
                println!(
                    "cargo:rerun-if-changed={}",
                    dir.join("packed-refs").display()
                );
                if let Some(branch) = git(&["rev-parse", "--symbolic-full-name", "HEAD"])
                    .filter(|b| b.starts_with("refs/"))
                {
                    let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
                        .map_or(dir.clone(), PathBuf::from);
                    println!("cargo:rerun-if-changed={}", common.join(branch).display());
                }
            }
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=WG_RS_GIT_COMMIT={commit}");
}
