//! `cargo xtask deb`: a Debian binary package, `wireguard-rs_<version>-1_<arch>.deb`.
//!
//! One layout source: the tree is staged by `cargo xtask install --prefix /usr --destdir
//! STAGE` (the same command a distribution or `make install` user runs); this module only
//! adds what is Debian's own: `DEBIAN/` (control from `packaging/debian/control.in`, the
//! maintainer scripts in `packaging/debian/`, conffiles, md5sums), the copyright file and
//! `changelog.Debian.gz`. `Depends` is computed by `dpkg-shlibdeps` from the staged
//! binaries (the libc6 version the binaries really need), or, without dpkg-dev, from the
//! highest `GLIBC_x.y` symbol version `objdump -T` finds. The package is built by
//! `dpkg-deb --root-owner-group --build`, so every file is owned by root.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The package's name.
pub(crate) const PACKAGE: &str = "wireguard-rs";
/// The Debian revision of packages made from an upstream version.
const DEBIAN_REVISION: &str = "1";
/// Bound for building and staging (a release build on a loaded machine).
const STAGE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Bound for the short dpkg/objdump commands.
const SHORT: Duration = Duration::from_secs(120);

/// Arguments of `cargo xtask deb`.
pub(crate) struct DebArgs {
    /// Package the binaries already built (passed on to `cargo xtask install`).
    pub(crate) no_build: bool,
    /// Where the `.deb` goes (default `target/deb`).
    pub(crate) out: Option<PathBuf>,
}

/// Runs `cargo xtask deb`: builds the package, shows its control data and checks it with
/// lintian when lintian is installed (errors fail the task, warnings are printed).
pub(crate) fn run(args: &DebArgs) -> Result<()> {
    let deb = build(args)?;
    let mut info = cmd::command("dpkg-deb", &["--info".as_ref(), deb.as_os_str()]);
    print!("{}", cmd::checked(&mut info, SHORT)?);
    let mut contents = cmd::command("dpkg-deb", &["--contents".as_ref(), deb.as_os_str()]);
    print!("{}", cmd::checked(&mut contents, SHORT)?);
    if cmd::on_path("lintian") {
        lintian(&deb)?;
    } else {
        println!("deb: lintian is not installed; not checked (apt-get install lintian)");
    }
    println!("deb: {}", deb.display());
    Ok(())
}

/// Builds the package and returns its path.
pub(crate) fn build(args: &DebArgs) -> Result<PathBuf> {
    cmd::require_tools(&["dpkg", "dpkg-deb"])?;
    let root = cmd::workspace_root();
    let version = debian_version(&workspace_version()?);
    let arch = cmd::checked(&mut cmd::command("dpkg", &["--print-architecture"]), SHORT)?
        .trim()
        .to_owned();
    let work = root.join("target").join("deb");
    let stage = work.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage)
            .with_context(|| format!("could not remove the old stage {}", stage.display()))?;
    }
    fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;

    stage_tree(&stage, args.no_build)?;
    add_debian_docs(&root, &stage, &version)?;
    compress_docs(&stage)?;
    normalise_modes(&stage)?;
    strip_binaries(&stage)?;

    let control_dir = stage.join("DEBIAN");
    fs::create_dir_all(&control_dir)?;
    let depends = depends(&work, &stage)?;
    let control = fs::read_to_string(root.join("packaging/debian/control.in"))
        .context("reading packaging/debian/control.in")?
        .replace("@VERSION@", &version)
        .replace("@ARCH@", &arch)
        .replace("@MAINTAINER@", &maintainer())
        .replace("@INSTALLED_SIZE@", &installed_size_kib(&stage)?.to_string())
        .replace("@DEPENDS@", &depends);
    if has_placeholder(&control) {
        bail!("packaging/debian/control.in has a placeholder this task does not fill: {control}");
    }
    write_file(&control_dir.join("control"), control.as_bytes(), 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        let text = fs::read(root.join("packaging/debian").join(script))
            .with_context(|| format!("reading packaging/debian/{script}"))?;
        write_file(&control_dir.join(script), &text, 0o755)?;
    }
    let conffiles = files_under(&stage, "etc")?;
    if !conffiles.is_empty() {
        let list: String = conffiles.iter().map(|p| format!("/{p}\n")).collect();
        write_file(&control_dir.join("conffiles"), list.as_bytes(), 0o644)?;
    }
    write_md5sums(&stage)?;

    let out = args.out.clone().unwrap_or_else(|| work.clone());
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let deb = out.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    let mut c = cmd::command(
        "dpkg-deb",
        &[
            "--root-owner-group".as_ref(),
            "-Zxz".as_ref(),
            "--build".as_ref(),
            stage.as_os_str(),
            deb.as_os_str(),
        ],
    );
    // Files' times clamped to the last commit's: two builds of one commit agree.
    if let Ok(o) = cmd::output(
        &mut cmd::command("git", &["log", "-1", "--format=%ct"]),
        SHORT,
    ) && o.status.success()
    {
        c.env(
            "SOURCE_DATE_EPOCH",
            String::from_utf8_lossy(&o.stdout).trim(),
        );
    }
    cmd::checked(&mut c, Duration::from_secs(10 * 60))?;
    println!("deb: built {} (Depends: {depends})", deb.display());
    Ok(deb)
}

/// `cargo xtask install --prefix /usr --destdir STAGE [--no-build]`, run as a child of
/// this very xtask binary (the layout has one owner: the install task).
fn stage_tree(stage: &Path, no_build: bool) -> Result<()> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut c = cmd::command(
        exe.to_str()
            .context("the xtask binary's path is not UTF-8")?,
        &[
            "install".as_ref(),
            "--prefix".as_ref(),
            "/usr".as_ref(),
            "--destdir".as_ref(),
            stage.as_os_str(),
        ],
    );
    if no_build {
        c.arg("--no-build");
    }
    c.current_dir(cmd::workspace_root());
    println!("deb: staging: {}", cmd::describe(&c));
    let status = cmd::status_inherit(&mut c, STAGE_TIMEOUT)?;
    if !status.success() {
        bail!("`{}` failed ({status})", cmd::describe(&c));
    }
    let main_bin = stage.join("usr/bin").join(PACKAGE);
    if !main_bin.is_file() {
        bail!(
            "`cargo xtask install` staged no {}; the package would be empty",
            main_bin.display()
        );
    }
    Ok(())
}

/// The Debian-only documentation: copyright and changelog.Debian.gz.
fn add_debian_docs(root: &Path, stage: &Path, version: &str) -> Result<()> {
    let doc = stage.join("usr/share/doc").join(PACKAGE);
    fs::create_dir_all(&doc)?;
    let copyright = fs::read(root.join("packaging/debian/copyright"))
        .context("reading packaging/debian/copyright")?;
    write_file(&doc.join("copyright"), &copyright, 0o644)?;
    // A changelog entry dated by the last commit, so that two builds of one commit agree.
    let date = cmd::output(
        &mut cmd::command("git", &["log", "-1", "--format=%cD"]),
        SHORT,
    )
    .ok()
    .filter(|o| o.status.success())
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    .filter(|d| !d.is_empty())
    .unwrap_or_else(|| "Thu, 01 Jan 1970 00:00:00 +0000".to_owned());
    let changelog = format!(
        "{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Built by `cargo xtask deb` \
         from the wireguard-rs workspace.\n\n -- {}  {date}\n",
        maintainer()
    );
    let path = doc.join("changelog.Debian.gz");
    let mut gz = std::process::Command::new("gzip");
    gz.args(["-9n", "-c"]);
    let out = cmd::output_with_stdin(&mut gz, changelog.as_bytes(), SHORT)?;
    cmd::ensure_success(&gz, &out)?;
    write_file(&path, &out.stdout, 0o644)
}

/// What dh_compress does: manual pages, and documentation over 4 KiB (but not the
/// copyright file), gzipped with `-9n` (no name or time stamp: reproducible).
fn compress_docs(stage: &Path) -> Result<()> {
    let doc = format!("usr/share/doc/{PACKAGE}/");
    let mut files = files_under(stage, "usr/share/man")?;
    for f in files_under(stage, &doc)? {
        let big = fs::metadata(stage.join(&f))?.len() > 4096;
        if big && !f.ends_with("/copyright") && !f.ends_with(".gz") {
            files.push(f);
        }
    }
    files.retain(|f| !f.ends_with(".gz"));
    if files.is_empty() {
        return Ok(());
    }
    let mut c = std::process::Command::new("gzip");
    c.arg("-9nf").arg("--").args(&files).current_dir(stage);
    cmd::checked(&mut c, SHORT)?;
    Ok(())
}

/// What dh_strip does to executables: no symbols, no `.comment`/`.note` (the build id,
/// in `.note.gnu.build-id`, stays). `cargo xtask install` keeps them, for debugging.
fn strip_binaries(stage: &Path) -> Result<()> {
    cmd::require_tools(&["strip"])?;
    for elf in elf_files(stage)? {
        let mut c = std::process::Command::new("strip");
        c.args(["--remove-section=.comment", "--remove-section=.note"])
            .arg(&elf);
        cmd::checked(&mut c, SHORT)?;
    }
    Ok(())
}

/// Directories 0755, executables 0755, other files 0644 (what Debian expects; the stage
/// may come from a umask-restricted shell).
fn normalise_modes(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = if meta.is_dir() {
            normalise_modes(&path)?;
            0o755
        } else if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The `Depends` field: the shared libraries the staged ELF files need.
fn depends(work: &Path, stage: &Path) -> Result<String> {
    let elves = elf_files(stage)?;
    if elves.is_empty() {
        bail!("no ELF binaries in the stage {}", stage.display());
    }
    if cmd::on_path("dpkg-shlibdeps") {
        return shlibdeps(work, &elves);
    }
    println!("deb: dpkg-shlibdeps not found (dpkg-dev); Depends from objdump -T");
    glibc_from_objdump(&elves)
}

/// `dpkg-shlibdeps -O` on the binaries. It wants a `debian/control` in its working
/// directory: a minimal one in `target/deb/shlibdeps`.
fn shlibdeps(work: &Path, elves: &[PathBuf]) -> Result<String> {
    let dir = work.join("shlibdeps");
    fs::create_dir_all(dir.join("debian"))?;
    write_file(
        &dir.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n").as_bytes(),
        0o644,
    )?;
    let mut c = std::process::Command::new("dpkg-shlibdeps");
    c.arg("-O").args(elves).current_dir(&dir);
    let text = cmd::checked(&mut c, SHORT)?;
    let deps = text
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {text}"))?
        .trim()
        .to_owned();
    if deps.is_empty() {
        bail!("dpkg-shlibdeps found no dependencies at all (static binaries?)");
    }
    Ok(deps)
}

/// `libc6 (>= X)` where X is the highest GLIBC_ symbol version any binary imports; any
/// other NEEDED library is an error (we would not know its package).
fn glibc_from_objdump(elves: &[PathBuf]) -> Result<String> {
    let mut best: Option<(u32, u32)> = None;
    for elf in elves {
        let mut c = cmd::command("objdump", &["-T".as_ref(), "-p".as_ref(), elf.as_os_str()]);
        let text = cmd::checked(&mut c, SHORT)?;
        for line in text.lines() {
            if let Some(lib) = line.trim().strip_prefix("NEEDED") {
                let lib = lib.trim();
                let known = ["libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2"];
                if !known.contains(&lib) && !lib.starts_with("ld-linux") {
                    bail!(
                        "{} needs {lib}, whose package objdump cannot tell; install dpkg-dev \
                         (dpkg-shlibdeps)",
                        elf.display()
                    );
                }
            }
            for word in line.split_whitespace() {
                let word = word.trim_matches(|c| c == '(' || c == ')');
                if let Some(v) = word.strip_prefix("GLIBC_")
                    && let Some((major, minor)) = v.split_once('.')
                    && let (Ok(major), Ok(minor)) = (major.parse(), minor.parse::<u32>())
                {
                    best = best.max(Some((major, minor)));
                }
            }
        }
    }
    let (major, minor) = best.context("no GLIBC_ symbol versions found")?;
    Ok(format!("libc6 (>= {major}.{minor})"))
}

/// Regular files of the stage (outside `DEBIAN/`) that start with the ELF magic.
fn elf_files(stage: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for rel in files_under(stage, "")? {
        let path = stage.join(&rel);
        let mut magic = [0u8; 4];
        let is_elf = fs::File::open(&path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && magic == *b"\x7fELF";
        if is_elf {
            out.push(path);
        }
    }
    Ok(out)
}

/// Paths (relative to `stage`, sorted) of the regular files under `stage/sub`, without
/// `DEBIAN/`.
fn files_under(stage: &Path, sub: &str) -> Result<Vec<String>> {
    fn walk(dir: &Path, stage: &Path, out: &mut BTreeSet<String>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            let rel = path
                .strip_prefix(stage)?
                .to_str()
                .context("a staged path is not UTF-8")?
                .to_owned();
            if rel == "DEBIAN" {
                continue;
            }
            if kind.is_dir() {
                walk(&path, stage, out)?;
            } else if kind.is_file() {
                out.insert(rel);
            }
        }
        Ok(())
    }
    let start = if sub.is_empty() {
        stage.to_path_buf()
    } else {
        stage.join(sub)
    };
    let mut out = BTreeSet::new();
    if start.is_dir() {
        walk(&start, stage, &mut out)?;
    }
    Ok(out.into_iter().collect())
}

/// `DEBIAN/md5sums` of every file except conffiles' … (dpkg lists conffiles too; so do we).
fn write_md5sums(stage: &Path) -> Result<()> {
    let files = files_under(stage, "")?;
    let mut c = std::process::Command::new("md5sum");
    c.arg("--").args(&files).current_dir(stage);
    let sums = cmd::checked(&mut c, SHORT)?;
    write_file(&stage.join("DEBIAN/md5sums"), sums.as_bytes(), 0o644)
}

/// The staged size in KiB (what `Installed-Size` holds), without `DEBIAN/`.
fn installed_size_kib(stage: &Path) -> Result<u64> {
    let mut bytes = 0u64;
    for rel in files_under(stage, "")? {
        // Rounded up per file to 1 KiB, as dpkg-gencontrol does.
        bytes += fs::metadata(stage.join(rel))?.len().div_ceil(1024) * 1024;
    }
    Ok(bytes.div_ceil(1024))
}

/// `DEBFULLNAME <DEBEMAIL>` (Debian's usual variables) or the project's placeholder.
fn maintainer() -> String {
    match (std::env::var("DEBFULLNAME"), std::env::var("DEBEMAIL")) {
        (Ok(name), Ok(mail)) if !name.is_empty() && !mail.is_empty() => {
            format!("{name} <{mail}>")
        }
        _ => "wireguard-rs maintainers <wireguard-rs@example.org>".to_owned(),
    }
}

/// The workspace version, from `cargo metadata`.
fn workspace_version() -> Result<String> {
    let mut c = cmd::command(
        &cmd::cargo(),
        &[
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ],
    );
    c.current_dir(cmd::workspace_root());
    let text = cmd::checked(&mut c, SHORT)?;
    let meta: serde_json::Value = serde_json::from_str(&text).context("parsing cargo metadata")?;
    meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == PACKAGE))
        .and_then(|p| p["version"].as_str())
        .map(str::to_owned)
        .context("cargo metadata lists no wireguard-rs package version")
}

/// A semver version as a Debian version: `-` of a pre-release becomes `~` (so 1.0.0-rc1
/// sorts before 1.0.0), `+` build metadata is dropped, and the Debian revision is added.
fn debian_version(semver: &str) -> String {
    let base = semver.split('+').next().unwrap_or(semver);
    let upstream = match base.split_once('-') {
        Some((v, pre)) => format!("{v}~{pre}"),
        None => base.to_owned(),
    };
    format!("{upstream}-{DEBIAN_REVISION}")
}

/// Whether `text` still holds an `@NAME@` placeholder (NAME: capitals and `_`).
fn has_placeholder(text: &str) -> bool {
    let parts: Vec<&str> = text.split('@').collect();
    // The segments between two `@`: neither the first nor the last.
    parts[1..parts.len().saturating_sub(1).max(1)]
        .iter()
        .any(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// lintian on the package: prints every finding; E: findings fail.
fn lintian(deb: &Path) -> Result<()> {
    let mut c = cmd::command(
        "lintian",
        &["--no-tag-display-limit".as_ref(), deb.as_os_str()],
    );
    let out = cmd::output(&mut c, Duration::from_secs(10 * 60))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let findings: Vec<&str> = text
        .lines()
        .filter(|l| l.len() > 2 && l.as_bytes()[1] == b':')
        .collect();
    println!("deb: lintian: {} finding(s)", findings.len());
    for f in &findings {
        println!("    {f}");
    }
    let errors = findings.iter().filter(|l| l.starts_with("E:")).count();
    if errors > 0 {
        bail!("lintian reports {errors} error(s)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{debian_version, has_placeholder};

    #[test]
    fn placeholders() {
        assert!(has_placeholder("Version: @VERSION@\n"));
        assert!(!has_placeholder("Maintainer: a <b@example.org>\n"));
        assert!(!has_placeholder("a@b and c@d"));
    }

    #[test]
    fn semver_to_debian() {
        assert_eq!(debian_version("0.1.0"), "0.1.0-1");
        assert_eq!(debian_version("1.0.0-rc.1"), "1.0.0~rc.1-1");
        assert_eq!(debian_version("1.2.3+git5"), "1.2.3-1");
    }
}
