//! The per-test environment: skip detection, unique names, a private directory, and
//! where the daemon binaries are (built if missing).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use wg_netns::cmd;
use wg_netns::netns::RunNames;
pub use wg_netns::private_dir::PrivateDir;

/// What a test prints when it cannot run here.
pub const SKIP_MESSAGE: &str = "skipped: needs root and network namespaces";

/// The three binaries of wireguard-rs.
pub const RS_BINARIES: [&str; 3] = ["wireguard-rs", "wireguard-rs-keyd", "wireguard-rs-datad"];

/// Bound for short commands (`wg`, `ip`).
pub const SHORT: Duration = Duration::from_secs(10);

/// Everything one test owns besides its namespaces and daemons.
#[derive(Debug)]
pub struct Env {
    /// Unique names: `e<tag><pid>` followed by a role suffix.
    pub names: RunNames,
    /// Keys, configuration files and logs (mode 0700, removed on drop).
    pub dir: PrivateDir,
    /// The `wg-e2e-helper` binary.
    pub helper: PathBuf,
    /// The directory holding `wireguard-rs`, `wireguard-rs-keyd` and `wireguard-rs-datad`.
    pub rs_dir: PathBuf,
    counter: AtomicUsize,
}

impl Env {
    /// The environment of one test, or `None` (after printing [`SKIP_MESSAGE`]) when the
    /// test cannot run here. `tag` is 1–3 lowercase letters unique among the package's
    /// tests: together with the PID it makes every namespace, link, interface and socket
    /// name of the test unique, also when tests run in parallel threads of one process.
    pub fn new(tag: &str, helper: &str) -> Result<Option<Self>> {
        if !privileged() {
            println!("{SKIP_MESSAGE}");
            return Ok(None);
        }
        if tag.is_empty() || tag.len() > 3 || !tag.bytes().all(|b| b.is_ascii_lowercase()) {
            bail!("test tag {tag:?} must be 1-3 lowercase letters");
        }
        let names = RunNames::new(&format!("e{tag}"))?;
        // Leftovers of this test from a run that was killed (SIGKILL skips the guards).
        wg_netns::netns::warn_stale(&[&format!("e{tag}")]);
        let rs_dir = rs_bin_dir()?;
        let dir = PrivateDir::create(&format!("wg-e2e-{}", names.prefix()))?;
        Ok(Some(Self {
            names,
            dir,
            helper: PathBuf::from(helper),
            rs_dir,
            counter: AtomicUsize::new(0),
        }))
    }

    /// A file name in [`Env::dir`] unique within the test: `STEM-N.EXT`.
    pub fn file_name(&self, stem: &str, ext: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{stem}-{n}.{ext}")
    }

    /// `<prefix><suffix>`, checked against IFNAMSIZ.
    pub fn name(&self, suffix: &str) -> Result<String> {
        self.names.name(suffix)
    }

    /// The `wireguard-rs` launcher binary.
    pub fn rs_bin(&self) -> PathBuf {
        self.rs_dir.join("wireguard-rs")
    }

    /// A fresh key pair; the private key is also written to a file (mode 0600) for
    /// `wg set … private-key FILE`.
    pub fn keys(&self, name: &str) -> Result<Keys> {
        let private = cmd::checked(&mut cmd::command::<&str>("wg", &["genkey"]), SHORT)?;
        let private = private.trim().to_owned();
        let public = public_key(&private)?;
        let file = self
            .dir
            .write_secret(&self.file_name(name, "key"), &private)?;
        Ok(Keys {
            private,
            public,
            file,
        })
    }

    /// A fresh preshared key and a file holding it.
    pub fn psk(&self, name: &str) -> Result<(String, PathBuf)> {
        let psk = cmd::checked(&mut cmd::command::<&str>("wg", &["genpsk"]), SHORT)?;
        let psk = psk.trim().to_owned();
        let file = self.dir.write_secret(&self.file_name(name, "psk"), &psk)?;
        Ok((psk, file))
    }
}

pub use wg_netns::cmd::wg_pubkey as public_key;

/// A key pair as `wg` prints keys (base64).
#[derive(Clone, Debug)]
pub struct Keys {
    /// Private key.
    pub private: String,
    /// Public key.
    pub public: String,
    /// File holding the private key.
    pub file: PathBuf,
}

/// Root, and network namespaces can be created (probed once per process).
fn privileged() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if !cmd::is_root() || !cmd::on_path("ip") {
            return false;
        }
        let probe = format!("eprobe{}", std::process::id());
        let mut add = cmd::command("ip", &["netns", "add", &probe]);
        let ok = cmd::output(&mut add, SHORT).is_ok_and(|o| o.status.success());
        if ok {
            let mut del = cmd::command("ip", &["netns", "del", &probe]);
            let _ = cmd::cleanup_output(&mut del, SHORT);
        }
        ok && Path::new("/dev/net/tun").exists()
    })
}

/// The workspace root (two levels above this package).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .nth(2)
        .map_or_else(|| here.to_path_buf(), Path::to_path_buf)
}

fn has_all(dir: &Path) -> bool {
    RS_BINARIES.iter().all(|b| dir.join(b).is_file())
}

/// Where the wireguard-rs binaries are: `$WG_RS_BIN_DIR` if set; else whichever of
/// `<target>/release` and `<target>/debug` holds all three with the newer `wireguard-rs`
/// (`<target>` is `$CARGO_TARGET_DIR` or the workspace's `target`); else they are built
/// once per process (`cargo build`, debug; cargo does not hold its build lock while tests
/// run, so this cannot deadlock). Prints the choice once, with a warning when the
/// binaries are older than the daemon's sources.
pub fn rs_bin_dir() -> Result<PathBuf> {
    static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut guard = DIR
        .lock()
        .map_err(|_| anyhow::anyhow!("a test panicked while locating the daemon binaries"))?;
    if let Some(dir) = guard.as_ref() {
        return Ok(dir.clone());
    }
    let dir = locate_or_build()?;
    let built = newest_mtime(&dir.join("wireguard-rs"));
    let sources = ["bins", "crates"]
        .iter()
        .filter_map(|d| newest_mtime(&workspace_root().join(d)))
        .max();
    eprintln!("wg-e2e: testing the daemon binaries in {}", dir.display());
    if let (Some(built), Some(sources)) = (built, sources)
        && sources > built
    {
        eprintln!(
            "wg-e2e: warning: sources under bins/ or crates/ are newer than {}/wireguard-rs: \
             rebuild (cargo build -p wireguard-rs -p wireguard-rs-keyd -p wireguard-rs-datad) \
             or set WG_RS_BIN_DIR",
            dir.display()
        );
    }
    *guard = Some(dir.clone());
    Ok(dir)
}

/// The newest modification time of `path` or, for a directory, of any `.rs` or
/// `Cargo.toml` file below it.
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if p.is_dir() && name != "target" && !name.starts_with('.') {
                newest_mtime(&p)
            } else if name.ends_with(".rs") || name == "Cargo.toml" {
                e.metadata().ok()?.modified().ok()
            } else {
                None
            }
        })
        .max()
}

/// The target directory: `$CARGO_TARGET_DIR` (relative to the workspace) or the
/// workspace's `target`.
fn target_dir() -> PathBuf {
    let root = workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_relative() { root.join(t) } else { t })
        .unwrap_or_else(|| root.join("target"))
}

/// Cargo, as the test harness was started with.
fn cargo() -> String {
    std::env::var("CARGO")
        .ok()
        .or_else(|| option_env!("CARGO").map(str::to_owned))
        .unwrap_or_else(|| "cargo".to_owned())
}

/// The directory of a daemon build with the test hooks (features `wireguard-rs/test-hooks`,
/// `wireguard-rs-keyd/test-hooks` and `wireguard-rs-datad/test-hooks`: the environment
/// variable `WG_RS_TEST_FORBIDDEN_SYSCALL=keyd|datad|all` makes that worker call
/// `socket(AF_INET)` right after locking down). `$WG_RS_TEST_HOOKS_BIN_DIR` if set; else
/// built (debug) once per test process into `<target>/test-hooks`, apart from the normal
/// builds. Cargo's own lock on that directory serialises concurrent test processes, and
/// a build that is up to date takes a second.
pub fn test_hooks_bin_dir() -> Result<PathBuf> {
    static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut guard = DIR
        .lock()
        .map_err(|_| anyhow::anyhow!("a test panicked while building the test-hook daemon"))?;
    if let Some(dir) = guard.as_ref() {
        return Ok(dir.clone());
    }
    let dir = if let Some(dir) = std::env::var_os("WG_RS_TEST_HOOKS_BIN_DIR") {
        PathBuf::from(dir)
    } else {
        let target = target_dir().join("test-hooks");
        let mut c = cmd::command(
            &cargo(),
            &[
                "build",
                "-p",
                "wireguard-rs",
                "-p",
                "wireguard-rs-keyd",
                "-p",
                "wireguard-rs-datad",
                "--features",
                "wireguard-rs/test-hooks,wireguard-rs-keyd/test-hooks,wireguard-rs-datad/test-hooks",
            ],
        );
        c.current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", &target);
        eprintln!(
            "wg-e2e: building the daemon with test hooks: {}",
            cmd::describe(&c)
        );
        cmd::checked(&mut c, Duration::from_secs(30 * 60))
            .context("building the daemon with test hooks failed")?;
        target.join("debug")
    };
    if !has_all(&dir) {
        bail!(
            "{} does not hold all of {}",
            dir.display(),
            RS_BINARIES.join(", ")
        );
    }
    eprintln!("wg-e2e: daemon with test hooks in {}", dir.display());
    *guard = Some(dir.clone());
    Ok(dir)
}

fn locate_or_build() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WG_RS_BIN_DIR") {
        let dir = PathBuf::from(dir);
        if !has_all(&dir) {
            bail!(
                "WG_RS_BIN_DIR={} does not hold all of {}",
                dir.display(),
                RS_BINARIES.join(", ")
            );
        }
        return Ok(dir);
    }
    let root = workspace_root();
    let target = target_dir();
    let newest = ["release", "debug"]
        .into_iter()
        .map(|p| target.join(p))
        .filter(|d| has_all(d))
        .max_by_key(|d| newest_mtime(&d.join("wireguard-rs")));
    if let Some(dir) = newest {
        return Ok(dir);
    }
    let cargo = cargo();
    let mut c = cmd::command(
        &cargo,
        &[
            "build",
            "-p",
            "wireguard-rs",
            "-p",
            "wireguard-rs-keyd",
            "-p",
            "wireguard-rs-datad",
        ],
    );
    c.current_dir(&root).env("CARGO_TARGET_DIR", &target);
    eprintln!(
        "wg-e2e: daemon binaries not found in {}/{{release,debug}}; building them: {}",
        target.display(),
        cmd::describe(&c)
    );
    cmd::checked(&mut c, Duration::from_secs(30 * 60))
        .context("building the daemon binaries for the end-to-end tests failed")?;
    let dir = target.join("debug");
    if !has_all(&dir) {
        bail!("built the daemon but {} lacks its binaries", dir.display());
    }
    Ok(dir)
}
