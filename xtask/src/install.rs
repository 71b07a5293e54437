//! `cargo xtask install`: the installed layout of wireguard-rs, in one place. Packages
//! (`.deb` and others) are built from what this puts into a `--destdir`; nothing else
//! knows where a file goes.
//!
//! Sources: the three release binaries (built here with the libexec directory fixed at
//! build time), the man page and shell completions generated from
//! [`wireguard_rs::cli::Cli`], and the files under `packaging/` (systemd unit, sysusers.d,
//! tmpfiles.d, the helpers' man pages), with `@BINDIR@`-style placeholders filled in.
//!
//! [`check`] verifies an installed tree (files, modes, man pages rendered by groff/man,
//! completions parsed by their shells, units by `systemd-analyze verify`, sysusers.d and
//! tmpfiles.d by systemd's tools); `cargo xtask ci` runs it on a temporary install.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::CommandFactory;

use crate::cmd;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The build-time setting that `wg_monitor::worker_dir` reads with `option_env!`.
const LIBEXEC_ENV: &str = "WIREGUARD_RS_LIBEXEC_DIR";
const MONITOR: &str = "wireguard-rs";
const WORKERS: [&str; 2] = ["wireguard-rs-keyd", "wireguard-rs-datad"];
const UNIT: &str = "wireguard-rs@.service";
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

const UNIT_IN: &str = include_str!("../../packaging/systemd/wireguard-rs@.service.in");
const DROPIN_IN: &str =
    include_str!("../../packaging/examples/wg-quick@.service.d-wireguard-rs.conf.in");
const SYSUSERS: &str = include_str!("../../packaging/sysusers.d/wireguard-rs.conf");
const TMPFILES: &str = include_str!("../../packaging/tmpfiles.d/wireguard-rs.conf");
const KEYD_MAN_IN: &str = include_str!("../../packaging/man/wireguard-rs-keyd.8.in");
const DATAD_MAN_IN: &str = include_str!("../../packaging/man/wireguard-rs-datad.8.in");
const README: &str = include_str!("../../README.md");
const PACKAGING_MD: &str = include_str!("../../docs/packaging.md");
const THREAT_MODEL_MD: &str = include_str!("../../docs/threat-model.md");
const COPYRIGHT: &str = include_str!("../../packaging/COPYRIGHT");

/// `cargo xtask install` options.
pub(crate) struct InstallArgs {
    /// Staging root prepended to every path (empty: the real root).
    pub(crate) destdir: Option<PathBuf>,
    /// Installation prefix (`/usr/local`, or `/usr` for a distribution package).
    pub(crate) prefix: PathBuf,
    /// Directory for internal programs; the helpers go into `wireguard-rs/` beneath it.
    pub(crate) libexecdir: Option<PathBuf>,
    /// Use existing binaries instead of building.
    pub(crate) no_build: bool,
    /// Where the binaries are (default: where this task builds them).
    pub(crate) binaries: Option<PathBuf>,
    /// List, do not write.
    pub(crate) dry_run: bool,
}

/// Where everything goes, as absolute paths on the target system (without the destdir).
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) bindir: PathBuf,
    /// The helpers' own directory (`LIBEXECDIR/wireguard-rs`), baked into the monitor.
    pub(crate) helperdir: PathBuf,
    pub(crate) man8dir: PathBuf,
    pub(crate) bash_completions: PathBuf,
    pub(crate) zsh_completions: PathBuf,
    pub(crate) fish_completions: PathBuf,
    pub(crate) unitdir: PathBuf,
    pub(crate) sysusersdir: PathBuf,
    pub(crate) tmpfilesdir: PathBuf,
    pub(crate) docdir: PathBuf,
}

impl Layout {
    /// The layout for `prefix`; `libexecdir` is absolute or relative to the prefix
    /// (default `PREFIX/libexec`).
    pub(crate) fn new(prefix: &Path, libexecdir: Option<&Path>) -> Result<Self> {
        if !prefix.is_absolute() {
            bail!("--prefix must be absolute, not {}", prefix.display());
        }
        let p = |rel: &str| prefix.join(rel);
        let libexec = match libexecdir {
            Some(d) if d.is_absolute() => d.to_path_buf(),
            Some(d) => prefix.join(d),
            None => p("libexec"),
        };
        let share = p("share");
        // Debian's zsh reads vendor completions from /usr/share/zsh/vendor-completions;
        // everything else (and /usr/local on Debian) from site-functions.
        let zsh = if prefix == Path::new("/usr") {
            share.join("zsh/vendor-completions")
        } else {
            share.join("zsh/site-functions")
        };
        // systemd searches PREFIX/lib/{systemd/system,sysusers.d,tmpfiles.d} for both
        // /usr and /usr/local, also on distributions whose libdir is lib64.
        Ok(Self {
            bindir: p("bin"),
            helperdir: libexec.join("wireguard-rs"),
            man8dir: share.join("man/man8"),
            bash_completions: share.join("bash-completion/completions"),
            zsh_completions: zsh,
            fish_completions: share.join("fish/vendor_completions.d"),
            unitdir: p("lib/systemd/system"),
            sysusersdir: p("lib/sysusers.d"),
            tmpfilesdir: p("lib/tmpfiles.d"),
            docdir: share.join("doc/wireguard-rs"),
        })
    }

    fn fill(&self, template: &str) -> String {
        template
            .replace("@BINDIR@", &self.bindir.to_string_lossy())
            .replace("@LIBEXECDIR@", &self.helperdir.to_string_lossy())
            .replace("@DOCDIR@", &self.docdir.to_string_lossy())
            .replace("@VERSION@", VERSION)
            .replace("@DATE@", &man_date())
    }
}

/// One file to install.
pub(crate) struct Item {
    /// Absolute path on the target system.
    pub(crate) path: PathBuf,
    pub(crate) mode: u32,
    pub(crate) content: Content,
}

pub(crate) enum Content {
    /// Copied from this file (a binary).
    Copy(PathBuf),
    /// Generated.
    Bytes(Vec<u8>),
}

/// Everything that is installed, in order; `binaries` holds the three release binaries.
pub(crate) fn plan(layout: &Layout, binaries: &Path) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut add = |path: PathBuf, mode: u32, content: Content| {
        items.push(Item {
            path,
            mode,
            content,
        })
    };
    let text = |s: String| Content::Bytes(s.into_bytes());

    add(
        layout.bindir.join(MONITOR),
        0o755,
        Content::Copy(binaries.join(MONITOR)),
    );
    for w in WORKERS {
        add(
            layout.helperdir.join(w),
            0o755,
            Content::Copy(binaries.join(w)),
        );
    }

    add(
        layout.man8dir.join("wireguard-rs.8"),
        0o644,
        Content::Bytes(man_page(layout)?),
    );
    add(
        layout.man8dir.join("wireguard-rs-keyd.8"),
        0o644,
        text(layout.fill(KEYD_MAN_IN)),
    );
    add(
        layout.man8dir.join("wireguard-rs-datad.8"),
        0o644,
        text(layout.fill(DATAD_MAN_IN)),
    );

    use clap_complete::Shell;
    for (shell, path) in [
        (Shell::Bash, layout.bash_completions.join("wireguard-rs")),
        (Shell::Zsh, layout.zsh_completions.join("_wireguard-rs")),
        (
            Shell::Fish,
            layout.fish_completions.join("wireguard-rs.fish"),
        ),
    ] {
        add(path, 0o644, Content::Bytes(completion(shell)));
    }

    add(layout.unitdir.join(UNIT), 0o644, text(layout.fill(UNIT_IN)));
    add(
        layout.sysusersdir.join("wireguard-rs.conf"),
        0o644,
        text(SYSUSERS.to_owned()),
    );
    add(
        layout.tmpfilesdir.join("wireguard-rs.conf"),
        0o644,
        text(TMPFILES.to_owned()),
    );

    let doc = &layout.docdir;
    for (name, body) in [
        ("README.md", README),
        ("packaging.md", PACKAGING_MD),
        ("threat-model.md", THREAT_MODEL_MD),
        ("COPYRIGHT", COPYRIGHT),
    ] {
        add(doc.join(name), 0o644, text(body.to_owned()));
    }
    add(
        doc.join("examples/wg-quick@.service.d/wireguard-rs.conf"),
        0o644,
        text(layout.fill(DROPIN_IN)),
    );
    Ok(items)
}

/// `cargo xtask install`.
pub(crate) fn run(args: &InstallArgs) -> Result<()> {
    let layout = Layout::new(&args.prefix, args.libexecdir.as_deref())?;
    let destdir = args.destdir.clone().unwrap_or_default();
    if !destdir.as_os_str().is_empty() && !destdir.is_absolute() {
        // Relative to where the user is, as `make DESTDIR=` would be.
        bail!(
            "--destdir must be absolute (e.g. \"$PWD/{}\")",
            destdir.display()
        );
    }
    let binaries = match &args.binaries {
        Some(dir) => dir.clone(),
        None => install_target_dir().join("release"),
    };
    if !args.no_build && !args.dry_run {
        build(&layout)?;
    }
    if !args.dry_run {
        check_baked_libexec(&binaries.join(MONITOR), &layout.helperdir)?;
    }
    let items = plan(&layout, &binaries)?;
    let verb = if args.dry_run {
        "would install"
    } else {
        "installed"
    };
    for item in &items {
        let target = rooted(&destdir, &item.path);
        if !args.dry_run {
            write_item(item, &target)?;
        }
        println!("{verb} {:04o} {}", item.mode, target.display());
    }
    println!(
        "{} files; the monitor finds its helpers in {}",
        items.len(),
        layout.helperdir.display()
    );
    if destdir.as_os_str().is_empty() && !args.dry_run {
        println!(
            "next: `systemd-sysusers wireguard-rs.conf && systemd-tmpfiles --create wireguard-rs.conf && systemctl daemon-reload` (the users must exist before the first start)"
        );
    }
    Ok(())
}

/// Where `install` builds: its own target directory, because the monitor built for an
/// install looks for its helpers in the libexec directory, not beside itself, which is
/// what `cargo xtask demo`/`bench` and the tests rely on in `target/release`.
fn install_target_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::workspace_root().join("target"));
    target.join("install")
}

fn build(layout: &Layout) -> Result<()> {
    let mut c = cmd::command(
        &cmd::cargo(),
        &[
            "build",
            "--release",
            "-p",
            "wireguard-rs",
            "-p",
            "wireguard-rs-keyd",
            "-p",
            "wireguard-rs-datad",
        ],
    );
    c.current_dir(cmd::workspace_root())
        .arg("--target-dir")
        .arg(install_target_dir())
        .env(LIBEXEC_ENV, &layout.helperdir);
    println!(
        "$ {LIBEXEC_ENV}={} {}",
        layout.helperdir.display(),
        cmd::describe(&c)
    );
    let status = cmd::status_inherit(&mut c, Duration::from_secs(60 * 60))?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    Ok(())
}

/// The monitor embeds its build-time libexec directory as a string; a binary built without
/// it (or for another directory) would look for its helpers in the wrong place.
fn check_baked_libexec(monitor: &Path, helperdir: &Path) -> Result<()> {
    let bytes = std::fs::read(monitor).with_context(|| {
        format!(
            "cannot read {} (build it, or drop --no-build)",
            monitor.display()
        )
    })?;
    let needle = helperdir.as_os_str().as_encoded_bytes();
    if !bytes.windows(needle.len()).any(|w| w == needle) {
        bail!(
            "{} was not built for helpers in {} (build it with {LIBEXEC_ENV}={} or drop --no-build)",
            monitor.display(),
            helperdir.display(),
            helperdir.display()
        );
    }
    Ok(())
}

/// `destdir` + absolute `path`.
pub(crate) fn rooted(destdir: &Path, path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    if destdir.as_os_str().is_empty() {
        Path::new("/").join(rel)
    } else {
        destdir.join(rel)
    }
}

/// Writes beside the target and renames over it: a running binary is replaced, not
/// rewritten (which would fail with ETXTBSY), and nothing is ever half-written.
fn write_item(item: &Item, target: &Path) -> Result<()> {
    let dir = target
        .parent()
        .with_context(|| format!("{} has no parent", target.display()))?;
    make_dirs(dir)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.xtask-install"));
    match &item.content {
        Content::Copy(src) => {
            std::fs::copy(src, &tmp)
                .with_context(|| format!("copying {} (is it built?)", src.display()))?;
        }
        Content::Bytes(bytes) => {
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(bytes)?;
        }
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(item.mode))?;
    std::fs::rename(&tmp, target).with_context(|| format!("renaming to {}", target.display()))
}

/// Creates `dir` and its missing parents with mode 0755, whatever the umask.
fn make_dirs(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_dirs(parent)?;
    }
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The man pages' date, YYYY-MM-DD: `SOURCE_DATE_EPOCH` (reproducible builds), else the
/// last commit's date, else today.
fn man_date() -> String {
    let from_env = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    let from_git = || {
        let mut c = cmd::command("git", &["log", "-1", "--format=%ct"]);
        c.current_dir(cmd::workspace_root());
        cmd::output(&mut c, CMD_TIMEOUT)
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<i64>()
                    .ok()
            })
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
    };
    civil_date(from_env.or_else(from_git).unwrap_or_else(now))
}

/// Seconds since the epoch to YYYY-MM-DD (UTC; Howard Hinnant's days-to-civil).
fn civil_date(secs: i64) -> String {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Escapes text for a roff line (not a request): backslashes, and `-` as a real minus so
/// that options can be searched for and copied.
fn roff(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

/// `wireguard-rs(8)`: clap_mangen's sections from the CLI definition, plus what the CLI
/// cannot say (how it runs, environment, files, exit status, see also).
pub(crate) fn man_page(layout: &Layout) -> Result<Vec<u8>> {
    let cmd = wireguard_rs::cli::Cli::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("wireguard-rs {VERSION}"))
        .date(man_date());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    // The CLI's after-help holds titled parts ("Environment:", "Exit status:"): each
    // becomes a section of its own, instead of clap_mangen's single "EXTRA".
    let after = cmd
        .get_after_long_help()
        .or_else(|| cmd.get_after_help())
        .map(ToString::to_string)
        .unwrap_or_default();
    out.extend_from_slice(after_help_sections(&after).as_bytes());
    out.extend_from_slice(extra_sections(layout).as_bytes());
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// A text line for roff: escaped, and protected if it would start a request.
fn roff_line(s: &str) -> String {
    let e = roff(s.trim());
    if e.starts_with('.') || e.starts_with('\'') {
        format!("\\&{e}")
    } else {
        e
    }
}

/// Turns "Title:" lines into sections, "  TAG  text" lines into tagged paragraphs and
/// other indented lines into plain paragraphs; deeper-indented lines continue the last.
fn after_help_sections(text: &str) -> String {
    let mut s = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 && line.trim_end().ends_with(':') {
            let title = line.trim_end().trim_end_matches(':').to_uppercase();
            let _ = writeln!(s, ".SH {}", roff(&title));
        } else if indent > 2 {
            let _ = writeln!(s, "{}", roff_line(line));
        } else {
            let body = line.trim_start();
            match body.split_once("  ") {
                Some((tag, rest)) => {
                    let _ = writeln!(s, ".TP\n\\fB{}\\fR\n{}", roff(tag.trim()), roff_line(rest));
                }
                None => {
                    let _ = writeln!(s, ".PP\n{}", roff_line(body));
                }
            }
        }
    }
    s
}

fn extra_sections(layout: &Layout) -> String {
    let mut s = String::new();
    let tp = |s: &mut String, tag: &str, body: &str| {
        let _ = write!(s, ".TP\n{tag}\n{body}\n");
    };
    s.push_str(".SH FILES\n");
    let unit = layout.unitdir.join(UNIT);
    let files = [
        (
            "/var/run/wireguard/\\fIIFNAME\\fR.sock".to_owned(),
            "The UAPI socket (mode 0600) that \\fBwg\\fR(8) talks to; removing it stops the daemon. Its directory (0700, shared with wireguard\\-go) is created by tmpfiles.d at boot.".to_owned(),
        ),
        (
            "/etc/wireguard/\\fIIFNAME\\fR.conf".to_owned(),
            "The interface's configuration, as read by \\fBwg\\-quick\\fR(8) and \\fBwireguard\\-rs@\\fR\\fIIFNAME\\fR\\fB.service\\fR; wireguard\\-rs itself reads no file.".to_owned(),
        ),
        (
            format!("{}/", roff(&layout.helperdir.to_string_lossy())),
            "\\fBwireguard\\-rs\\-keyd\\fR(8) and \\fBwireguard\\-rs\\-datad\\fR(8); built in, or \\fB\\-\\-libexec\\-dir\\fR.".to_owned(),
        ),
        (
            "/run/wireguard\\-rs/empty".to_owned(),
            "The key process's root directory: empty, owned by root.".to_owned(),
        ),
        (
            roff(&unit.to_string_lossy()),
            "The systemd unit: \\fBsystemctl enable \\-\\-now wireguard\\-rs@wg0\\fR brings up \\fI/etc/wireguard/wg0.conf\\fR with \\fBwg\\-quick\\fR(8) on wireguard\\-rs.".to_owned(),
        ),
        (
            roff(&layout.sysusersdir.join("wireguard-rs.conf").to_string_lossy()),
            "The system users \\fBwireguard\\-rs\\-keyd\\fR and \\fBwireguard\\-rs\\-datad\\fR.".to_owned(),
        ),
        (
            roff(&layout.tmpfilesdir.join("wireguard-rs.conf").to_string_lossy()),
            "/run/wireguard and /run/wireguard\\-rs.".to_owned(),
        ),
    ];
    for (path, body) in files {
        tp(&mut s, &format!("\\fI{path}\\fR"), &body);
    }
    s.push_str(".SH SEE ALSO\n");
    s.push_str(
        ".BR wg (8),\n.BR wg\\-quick (8),\n.BR wireguard\\-rs\\-keyd (8),\n.BR wireguard\\-rs\\-datad (8),\n.BR systemd.exec (5),\n.BR sysusers.d (5),\n.BR tmpfiles.d (5)\n",
    );
    s
}

/// The completion script of `shell` for `wireguard-rs`.
pub(crate) fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = wireguard_rs::cli::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, MONITOR, &mut out);
    out
}

/// One check's outcome.
pub(crate) enum Outcome {
    Ok,
    /// Could not run here (a tool is missing); why.
    Skipped(String),
}

/// Checks an installed tree in `destdir` for `layout`: every planned file with its mode,
/// the man pages, completions, unit, sysusers.d and tmpfiles.d with the real tools where
/// installed. Returns each check's name and outcome; the first failure is an error.
pub(crate) fn check(destdir: &Path, layout: &Layout) -> Result<Vec<(String, Outcome)>> {
    let mut results = Vec::new();
    let items = plan(layout, Path::new("/nonexistent"))?;
    for item in &items {
        let p = rooted(destdir, &item.path);
        let meta = std::fs::metadata(&p).with_context(|| format!("{} missing", p.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.is_file() || mode != item.mode {
            bail!(
                "{}: expected a file with mode {:04o}, found mode {mode:04o}",
                p.display(),
                item.mode
            );
        }
        if meta.len() == 0 {
            bail!("{} is empty", p.display());
        }
        for dir in p
            .ancestors()
            .skip(1)
            .take_while(|d| d.starts_with(destdir) && *d != destdir)
        {
            let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
            if mode != 0o755 {
                bail!(
                    "{}: directory mode {mode:04o}, expected 0755",
                    dir.display()
                );
            }
        }
    }
    results.push((format!("{} files and modes", items.len()), Outcome::Ok));

    for page in [
        "wireguard-rs.8",
        "wireguard-rs-keyd.8",
        "wireguard-rs-datad.8",
    ] {
        let p = rooted(destdir, &layout.man8dir.join(page));
        results.push((format!("groff -ww {page}"), check_groff(&p)?));
        results.push((format!("man -l {page}"), check_man(&p)?));
    }

    let comp = |dir: &Path, name: &str| rooted(destdir, &dir.join(name));
    results.push((
        "bash -n completion".into(),
        syntax(
            "bash",
            &["-n"],
            &comp(&layout.bash_completions, "wireguard-rs"),
        )?,
    ));
    results.push((
        "zsh -n completion".into(),
        syntax(
            "zsh",
            &["-n"],
            &comp(&layout.zsh_completions, "_wireguard-rs"),
        )?,
    ));
    results.push((
        "fish --no-execute completion".into(),
        syntax(
            "fish",
            &["--no-execute"],
            &comp(&layout.fish_completions, "wireguard-rs.fish"),
        )?,
    ));

    results.push((
        "systemd-analyze verify".into(),
        check_units(destdir, layout)?,
    ));
    results.push((
        "systemd-sysusers --dry-run".into(),
        check_sysusers(destdir, layout)?,
    ));
    results.push((
        "systemd-tmpfiles --create (scratch root)".into(),
        check_tmpfiles(destdir, layout)?,
    ));
    Ok(results)
}

fn run_quiet(c: &mut Command) -> Result<std::process::Output> {
    cmd::output(c, CMD_TIMEOUT).with_context(|| format!("running {}", cmd::describe(c)))
}

/// Fails with the command's output unless it succeeded with nothing on stderr.
fn clean(c: &mut Command) -> Result<Outcome> {
    let out = run_quiet(c)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.trim().is_empty() {
        bail!(
            "`{}` ({}):\n{stderr}{}",
            cmd::describe(c),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(Outcome::Ok)
}

fn check_groff(page: &Path) -> Result<Outcome> {
    if !cmd::on_path("groff") {
        return Ok(Outcome::Skipped("groff is not installed".into()));
    }
    let mut c = cmd::command("groff", &["-man", "-Tutf8", "-ww", "-z"]);
    c.arg(page);
    clean(&mut c)
}

fn check_man(page: &Path) -> Result<Outcome> {
    if !cmd::on_path("man") {
        return Ok(Outcome::Skipped("man is not installed".into()));
    }
    let mut c = cmd::command("man", &["--warnings=w", "-l"]);
    c.arg(page)
        .env("MANWIDTH", "80")
        .env("MAN_KEEP_FORMATTING", "0");
    let out = run_quiet(&mut c)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.trim().is_empty() || out.stdout.is_empty() {
        bail!("`{}` ({}):\n{stderr}", cmd::describe(&c), out.status);
    }
    Ok(Outcome::Ok)
}

fn syntax(shell: &str, args: &[&str], file: &Path) -> Result<Outcome> {
    if !cmd::on_path(shell) {
        return Ok(Outcome::Skipped(format!("{shell} is not installed")));
    }
    let mut c = cmd::command(shell, args);
    c.arg(file);
    clean(&mut c)
}

fn scratch(destdir: &Path, name: &str) -> Result<PathBuf> {
    let dir = destdir.join(format!(".check-{name}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn copy_tree(from: &Path, to: &Path, skip: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        if src == skip || entry.file_name().to_string_lossy().starts_with(".check-") {
            continue;
        }
        let dst = to.join(entry.file_name());
        let ty = entry.file_type()?;
        if ty.is_dir() {
            std::fs::create_dir_all(&dst)?;
            copy_tree(&src, &dst, skip)?;
        } else if ty.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// `systemd-analyze verify` of an instance of the unit, in a scratch root holding the
/// installed tree plus stand-ins for what the unit runs from other packages (wg-quick, wg,
/// sh, bash), so that every ExecStart= path exists there and nothing of the host is used.
fn check_units(destdir: &Path, layout: &Layout) -> Result<Outcome> {
    if !cmd::on_path("systemd-analyze") {
        return Ok(Outcome::Skipped("systemd-analyze is not installed".into()));
    }
    let root = scratch(destdir, "units")?;
    copy_tree(destdir, &root, &root)?;
    for tool in ["/usr/bin/wg-quick", "/usr/bin/wg", "/bin/sh", "/bin/bash"] {
        let p = rooted(&root, Path::new(tool));
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&p, "#!/bin/sh\n")?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    // The targets and slices every unit depends on implicitly (sysinit.target, ...),
    // from the host's systemd: the scratch root has no system of its own.
    let units = rooted(&root, Path::new("/usr/lib/systemd/system"));
    std::fs::create_dir_all(&units)?;
    for host in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        let Ok(entries) = std::fs::read_dir(host) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let n = name.to_string_lossy();
            if (n.ends_with(".target") || n.ends_with(".slice")) && entry.path().is_file() {
                std::fs::copy(entry.path(), units.join(&name))?;
            }
        }
    }
    let template = rooted(&root, &layout.unitdir.join(UNIT));
    if !template.is_file() {
        bail!("{} missing", template.display());
    }
    // An instance, as systemd loads it from the template in the root's unit directory
    // (a path given with --root is not read; a template cannot be verified by itself).
    let mut c = cmd::command(
        "systemd-analyze",
        &["verify", "--man=no", "--generators=no"],
    );
    c.arg(format!("--root={}", root.display()))
        .arg(UNIT.replace('@', "@wg0"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .env("SYSTEMD_LOG_TARGET", "console");
    let out = run_quiet(&mut c)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Every complaint counts: unknown keys and bad values are only logged, not failures.
    if !out.status.success() || !stderr.trim().is_empty() {
        bail!("`{}` ({}):\n{stderr}", cmd::describe(&c), out.status);
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(Outcome::Ok)
}

fn check_sysusers(destdir: &Path, layout: &Layout) -> Result<Outcome> {
    if !cmd::on_path("systemd-sysusers") {
        return Ok(Outcome::Skipped("systemd-sysusers is not installed".into()));
    }
    let root = scratch(destdir, "sysusers")?;
    std::fs::create_dir_all(root.join("etc"))?;
    let file = rooted(destdir, &layout.sysusersdir.join("wireguard-rs.conf"));
    let mut c = cmd::command("systemd-sysusers", &["--dry-run"]);
    c.arg(format!("--root={}", root.display())).arg(&file);
    let out = run_quiet(&mut c)?;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let creates_both = WORKERS
        .iter()
        .all(|u| all.contains(&format!("Creating user '{u}'")));
    if !out.status.success() || all.to_lowercase().contains("failed") || !creates_both {
        bail!("`{}` ({}):\n{all}", cmd::describe(&c), out.status);
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(Outcome::Ok)
}

/// systemd-tmpfiles has no dry run before systemd 256: the file is applied to a scratch
/// root instead (so only that root is touched) and the result looked at.
fn check_tmpfiles(destdir: &Path, layout: &Layout) -> Result<Outcome> {
    if !cmd::on_path("systemd-tmpfiles") {
        return Ok(Outcome::Skipped("systemd-tmpfiles is not installed".into()));
    }
    let root = scratch(destdir, "tmpfiles")?;
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    let file = rooted(destdir, &layout.tmpfilesdir.join("wireguard-rs.conf"));
    let mut c = cmd::command("systemd-tmpfiles", &["--create"]);
    c.arg(format!("--root={}", root.display())).arg(&file);
    clean(&mut c).context("systemd-tmpfiles rejected the file")?;
    for dir in ["run/wireguard", "run/wireguard-rs"] {
        let meta = std::fs::metadata(root.join(dir))
            .with_context(|| format!("systemd-tmpfiles did not create /{dir}"))?;
        if meta.permissions().mode() & 0o7777 != 0o700 {
            bail!("/{dir} should be 0700");
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(Outcome::Ok)
}

/// The CI step: installs into a temporary destdir with prefix /usr, using stand-in
/// binaries (the layout, not the build, is under test; the release build is the demo's
/// and the end-to-end tests'), and runs [`check`], saying loudly what could not run.
pub(crate) fn self_check() -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("wireguard-rs-install-check")
        .tempdir()?;
    let destdir = tmp.path().join("root");
    let layout = Layout::new(Path::new("/usr"), None)?;
    let bins = tmp.path().join("bin");
    stub_binaries(&bins, &layout)?;
    let items = plan(&layout, &bins)?;
    for item in &items {
        write_item(item, &rooted(&destdir, &item.path))?;
    }
    let mut skipped = 0;
    for (name, outcome) in check(&destdir, &layout)? {
        match outcome {
            Outcome::Ok => println!("    ok       {name}"),
            Outcome::Skipped(why) => {
                skipped += 1;
                println!("    SKIPPED  {name}: {why} -- NOT CHECKED ON THIS MACHINE");
            }
        }
    }
    if skipped > 0 {
        println!("    WARNING: {skipped} install check(s) could not run here (see SKIPPED above)");
    }
    Ok(())
}

/// Stand-ins for the three binaries: scripts that carry the libexec directory as the real
/// monitor does.
pub(crate) fn stub_binaries(dir: &Path, layout: &Layout) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for name in std::iter::once(MONITOR).chain(WORKERS) {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\n# stand-in; helpers in {}\nexit 1\n",
                layout.helperdir.display()
            ),
        )?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_for_usr_and_usr_local() {
        let usr = Layout::new(Path::new("/usr"), None).unwrap();
        assert_eq!(usr.bindir, Path::new("/usr/bin"));
        assert_eq!(usr.helperdir, Path::new("/usr/libexec/wireguard-rs"));
        assert_eq!(usr.unitdir, Path::new("/usr/lib/systemd/system"));
        assert_eq!(
            usr.zsh_completions,
            Path::new("/usr/share/zsh/vendor-completions")
        );
        let local = Layout::new(Path::new("/usr/local"), Some(Path::new("lib"))).unwrap();
        assert_eq!(local.helperdir, Path::new("/usr/local/lib/wireguard-rs"));
        assert_eq!(
            local.zsh_completions,
            Path::new("/usr/local/share/zsh/site-functions")
        );
        let abs = Layout::new(Path::new("/usr"), Some(Path::new("/usr/lib"))).unwrap();
        assert_eq!(abs.helperdir, Path::new("/usr/lib/wireguard-rs"));
        assert!(Layout::new(Path::new("usr"), None).is_err());
    }

    #[test]
    fn templates_are_filled() {
        let layout = Layout::new(Path::new("/usr"), None).unwrap();
        for t in [UNIT_IN, DROPIN_IN, KEYD_MAN_IN, DATAD_MAN_IN] {
            let filled = layout.fill(t);
            for p in [
                "@BINDIR@",
                "@LIBEXECDIR@",
                "@DOCDIR@",
                "@VERSION@",
                "@DATE@",
            ] {
                assert!(!filled.contains(p), "{p} left in {filled}");
            }
        }
        let unit = layout.fill(UNIT_IN);
        assert!(unit.contains("WG_QUICK_USERSPACE_IMPLEMENTATION=/usr/bin/wireguard-rs"));
    }

    #[test]
    fn man_page_has_the_cli_and_extra_sections() {
        let layout = Layout::new(Path::new("/usr"), None).unwrap();
        let page = String::from_utf8(man_page(&layout).unwrap()).unwrap();
        for s in [
            ".SH OPTIONS",
            ".SH ENVIRONMENT",
            ".SH EXIT STATUS",
            "LOG_LEVEL",
            ".SH FILES",
            ".SH SEE ALSO",
            "foreground",
            "/usr/libexec/wireguard\\-rs",
        ] {
            assert!(page.contains(s), "{s} missing from the man page");
        }
        // The internal flag stays internal.
        assert!(!page.contains("spawner\\fR"), "{page}");
    }

    #[test]
    fn man_dates() {
        assert_eq!(civil_date(1_709_208_000), "2024-02-29");
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(951_782_400), "2000-02-29");
    }

    /// The whole install into a temporary destdir, checked with every tool installed here.
    #[test]
    fn install_into_destdir_and_check() {
        self_check().unwrap();
    }
}
