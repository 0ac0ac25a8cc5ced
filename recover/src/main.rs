//! `cbfs-recover`: turn a cbfs store (or loose segment files) back into a
//! plain pax tar, with no network, no database and no daemon.
//!
//! Exit codes: 0 everything in reach restored (scopes skipped for lack of a
//! key are reported, not failures); 1 error before any output; 2 usage;
//! 3 partial: some members failed, the output holds every intact one;
//! 4 the snapshot could not be verified.

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use cbfs_core::{KeySource, Keyset, Unlock, UserSecret, fingerprint};
use cbfs_recover::{
    DirSink, GrantOpener, LocalDir, LockboxOpener, NoKey, PathFilter, Report, Sink, TarSink,
    identify, load_grants, load_keyset, open_snapshot, restore, restore_segments,
};
use clap::{ArgGroup, Parser};

const EXAMPLES: &str = "\
Examples:
  # The newest snapshot of a local store, as a tar, with the root secret
  cbfs-recover --identity file:/keys/fs1-admin.key --store /mnt/archive -o restore.tar
  # An older snapshot, streamed into tar; only one subtree
  cbfs-recover --identity file:/keys/fs1-admin.key --store /mnt/archive \\
      --snapshot 00c0ffee --path home/alice -o - | tar -xpf - -C /srv/restore
  # With an exported scope secret: only that scope (others are reported as skipped)
  cbfs-recover --identity keyring:cbfs/fs1-alice --store /mnt/archive -o alice.tar
  # As a user, with the delegation grants the administrator released
  cbfs-recover --identity file:~/.cbfs/alice.key --grants ./grants --keyset keyset.json \\
      --store /mnt/archive -o alice.tar
  # Loose segment files copied out of a store (lockboxes/ beside segments/)
  cbfs-recover --identity file:/keys/fs1-admin.key --keyset keyset.json \\
      copy/segments/*.tar -o restore.tar
  # Straight into a directory
  cbfs-recover --identity file:/keys/fs1-admin.key --store /mnt/archive -C /srv/restore

Extract the tar with GNU tar (tar --xattrs --xattrs-include='*' -xpf restore.tar)
or bsdtar (bsdtar -xpf restore.tar).

Age-wrapped key files: set CBFS_AGE_IDENTITY (x25519) or CBFS_PASSPHRASE_FILE.

Exit codes:
  0  everything in reach was restored (scopes without a key are reported, not failures)
  1  error before any output (keys, keyset, store, output file)
  2  usage
  3  partial: some members failed; the output holds every intact member
  4  the snapshot could not be verified (signature, writer, object name, chain)";

/// Restore a cbfs store, or loose segment files, as one plain pax tar.
#[derive(Parser)]
#[command(name = "cbfs-recover", version, after_long_help = EXAMPLES)]
#[command(group(ArgGroup::new("input").required(true).args(["store", "segments"])))]
struct Cli {
    /// The key: file:PATH or keyring:SERVICE/NAME. The root secret or a
    /// scope secret; with --grants, a user's key. Without it, only plain
    /// (unencrypted) members are restored.
    #[arg(long, value_name = "SOURCE")]
    identity: Option<KeySource>,
    /// A trusted copy of the public keyset (default: the store's newest).
    #[arg(long, value_name = "KEYSET.json")]
    keyset: Option<PathBuf>,
    /// The store: a local directory with segments/, lockboxes/, summaries/, snapshots/.
    #[arg(long, value_name = "DIR", conflicts_with = "segments")]
    store: Option<PathBuf>,
    /// Which snapshot: an id (or a prefix of 8+ characters) or a sequence number (default: newest).
    #[arg(long, value_name = "ID", requires = "store")]
    snapshot: Option<String>,
    /// Loose segment files instead of a store (no manifest proves completeness).
    #[arg(value_name = "SEGMENT_FILE")]
    segments: Vec<PathBuf>,
    /// Where the lockboxes of loose segments are (DIR/<segment id>/ or DIR);
    /// default: lockboxes/<segment id>/ beside the segment file's directory.
    #[arg(long, value_name = "DIR", conflicts_with = "store")]
    lockboxes: Option<PathBuf>,
    /// Write the tar to this file, or to standard output with `-`.
    #[arg(short = 'o', long = "output", value_name = "OUT.tar")]
    output: Option<PathBuf>,
    /// Restore into this directory instead of writing a tar.
    #[arg(
        short = 'C',
        long = "directory",
        value_name = "DIR",
        conflicts_with = "output"
    )]
    directory: Option<PathBuf>,
    /// Use a user key plus the *.grant files in DIR (m of n per scope).
    #[arg(long, value_name = "DIR", requires = "identity")]
    grants: Option<PathBuf>,
    /// Restore only this path and what is below it (repeatable).
    #[arg(long = "path", value_name = "PREFIX")]
    paths: Vec<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
    /// Threads that decode members (default: one per core, at most 8).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Print the report as JSON (on standard output, or on standard error when the tar goes there).
    #[arg(long)]
    json: bool,
    /// More log output on standard error (-v, -vv, -vvv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

struct Failed {
    code: u8,
    err: anyhow::Error,
}

fn fail(code: u8) -> impl FnOnce(anyhow::Error) -> Failed {
    move |err| Failed { code, err }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.verbose);
    let json = cli.json;
    let tar_on_stdout =
        cli.directory.is_none() && cli.output.as_deref().is_none_or(|o| o == Path::new("-"));
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(Failed { code, err }) => {
            if json {
                let v = serde_json::json!({ "error": format!("{err:#}"), "exit_code": code });
                print_json(&v, tar_on_stdout);
            }
            eprintln!("cbfs-recover: error: {err:#}");
            ExitCode::from(code)
        }
    }
}

fn init_logs(verbose: u8) {
    let level = match verbose {
        0 => "error",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CBFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn print_json(v: &serde_json::Value, to_stderr: bool) {
    let text = serde_json::to_string_pretty(v).expect("JSON serializes");
    if to_stderr {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

/// The output, decided before the restore starts.
enum Output {
    Stdout,
    File { dest: PathBuf, temp: PathBuf },
    Dir(PathBuf),
}

fn run(cli: Cli) -> Result<u8, Failed> {
    cbfs_recover::set_decode_threads(cli.jobs.map(usize::from));
    let filter = path_filter(&cli.paths).map_err(fail(2))?;
    let output = plan_output(&cli).map_err(fail(2))?;
    let store = cli
        .store
        .as_ref()
        .map(|dir| {
            LocalDir::new(dir).with_context(|| format!("cannot open store {}", dir.display()))
        })
        .transpose()
        .map_err(fail(1))?;

    // The keyset: a trusted file, else the store's newest. Only a root or
    // scope secret, or grants, need one; without a key it only names writers.
    let keyset: Option<Keyset> = match (&store, &cli.keyset) {
        (_, Some(path)) => Some(
            Keyset::load(path)
                .with_context(|| format!("cannot use the keyset {}", path.display()))
                .map_err(fail(1))?,
        ),
        (Some(s), None) => match load_keyset(s, None) {
            Ok(k) => Some(k),
            Err(e) if cli.identity.is_some() => return Err(fail(1)(e.into())),
            Err(e) => {
                tracing::info!("no keyset: {e}");
                None
            }
        },
        (None, None) => None,
    };

    let opener = make_opener(&cli, keyset.as_ref())?;
    let snapshot = match &store {
        Some(s) => Some(
            open_snapshot(s, keyset.as_ref(), cli.snapshot.as_deref()).map_err(|e| {
                let code = match &e {
                    cbfs_recover::Error::Usage(_) => 2,
                    e if e.is_verification() => 4,
                    cbfs_recover::Error::NoSnapshot(_) => 4,
                    _ => 1,
                };
                Failed {
                    code,
                    err: anyhow!(e).context("the snapshot could not be verified"),
                }
            })?,
        ),
        None => None,
    };

    let mut sink: Box<dyn SinkOut> = open_output(&output, cli.force).map_err(fail(1))?;
    let result = match (&store, &snapshot) {
        (Some(s), Some(snap)) => restore(s, snap, opener.as_ref(), &filter, sink.as_sink()),
        _ => restore_segments(
            &cli.segments,
            cli.lockboxes.as_deref(),
            opener.as_ref(),
            &filter,
            sink.as_sink(),
        ),
    };
    let report = match result.and_then(|r| sink.close().map(|()| r)) {
        Ok(r) => r,
        Err(e) => {
            sink.discard();
            return Err(fail(1)(
                anyhow!(e).context("the output broke; nothing was kept"),
            ));
        }
    };
    if let Output::File { dest, temp } = &output {
        std::fs::rename(temp, dest)
            .with_context(|| format!("cannot move the finished tar to {}", dest.display()))
            .map_err(fail(1))?;
    }
    let code = if report.is_complete() { 0 } else { 3 };
    print_report(&cli, &report, opener.as_ref(), &output, code);
    Ok(code)
}

fn path_filter(paths: &[PathBuf]) -> anyhow::Result<PathFilter> {
    let bytes: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| path_bytes(p))
        .collect::<anyhow::Result<_>>()?;
    Ok(PathFilter::new(bytes)?)
}

#[cfg(unix)]
fn path_bytes(p: &Path) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    Ok(p.as_os_str().as_bytes().to_vec())
}

#[cfg(not(unix))]
fn path_bytes(p: &Path) -> anyhow::Result<Vec<u8>> {
    p.to_str()
        .map(|s| s.replace('\\', "/").into_bytes())
        .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
}

fn plan_output(cli: &Cli) -> anyhow::Result<Output> {
    if let Some(dir) = &cli.directory {
        return Ok(Output::Dir(dir.clone()));
    }
    match &cli.output {
        Some(p) if p != Path::new("-") => {
            let name = p
                .file_name()
                .ok_or_else(|| anyhow!("-o {}: not a file name", p.display()))?;
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".partial-{}", std::process::id()));
            Ok(Output::File {
                dest: p.clone(),
                temp: p.with_file_name(temp_name),
            })
        }
        _ => {
            if cli.output.is_none() && std::io::stdout().is_terminal() {
                anyhow::bail!(
                    "refusing to write a tar to a terminal: give -o OUT.tar, -o - with a pipe, or -C DIR"
                );
            }
            Ok(Output::Stdout)
        }
    }
}

fn make_opener(cli: &Cli, keyset: Option<&Keyset>) -> Result<Box<dyn LockboxOpener>, Failed> {
    let Some(source) = &cli.identity else {
        return Ok(Box::new(NoKey));
    };
    let Some(keyset) = keyset else {
        return Err(fail(1)(anyhow!(
            "a key needs the public keyset to be recognized: give --keyset KEYSET.json"
        )));
    };
    let seed = source
        .load(&Unlock::from_env())
        .with_context(|| format!("cannot load the identity {source}"))
        .map_err(fail(1))?;
    if let Some(dir) = &cli.grants {
        let user = UserSecret::from_seed(seed);
        let grants = load_grants(dir, keyset).map_err(|e| fail(1)(e.into()))?;
        let opener = GrantOpener::new(&user, grants, keyset).map_err(|e| fail(1)(e.into()))?;
        for note in opener.notes() {
            eprintln!("cbfs-recover: note: {note}");
        }
        if !opener.any_usable() {
            let states: Vec<String> = opener
                .scopes()
                .into_iter()
                .map(|(scope, state)| format!("scope `{scope}`: {state}"))
                .collect();
            return Err(fail(1)(anyhow!(
                "no delegation in {} can be used: {}",
                dir.display(),
                states.join("; ")
            )));
        }
        return Ok(Box::new(opener));
    }
    match identify(seed, keyset) {
        Some(id) => Ok(Box::new(id)),
        None => Err(fail(1)(anyhow!(
            "the key from {source} is neither the root secret nor a scope secret of file system `{}` \
             (administrator key {}); for a user key, add --grants DIR",
            keyset.fs(),
            fingerprint(keyset.admin_verifying_key())
        ))),
    }
}

/// A sink plus how to close or discard its output.
trait SinkOut {
    fn as_sink(&mut self) -> &mut dyn Sink;
    fn close(&mut self) -> cbfs_recover::Result<()>;
    fn discard(&mut self);
}

struct TarOut<W: Write> {
    sink: Option<TarSink<W>>,
    temp: Option<PathBuf>,
}

impl<W: Write> SinkOut for TarOut<W> {
    fn as_sink(&mut self) -> &mut dyn Sink {
        self.sink.as_mut().expect("open until closed")
    }
    fn close(&mut self) -> cbfs_recover::Result<()> {
        let sink = self.sink.take().expect("closed once");
        let mut w = sink.into_inner()?;
        w.flush().map_err(|e| cbfs_recover::Error::Output {
            target: "the tar".into(),
            source: e,
            fatal: true,
        })
    }
    fn discard(&mut self) {
        self.sink = None;
        if let Some(t) = self.temp.take() {
            let _ = std::fs::remove_file(t);
        }
    }
}

struct DirOut(DirSink);

impl SinkOut for DirOut {
    fn as_sink(&mut self) -> &mut dyn Sink {
        &mut self.0
    }
    fn close(&mut self) -> cbfs_recover::Result<()> {
        Ok(())
    }
    fn discard(&mut self) {}
}

fn open_output(output: &Output, force: bool) -> anyhow::Result<Box<dyn SinkOut>> {
    Ok(match output {
        Output::Stdout => {
            let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            Box::new(TarOut {
                sink: Some(TarSink::new(out, "standard output")),
                temp: None,
            })
        }
        Output::File { dest, temp } => {
            if !force && std::fs::symlink_metadata(dest).is_ok() {
                anyhow::bail!("{} exists; give --force to replace it", dest.display());
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(temp)
                .with_context(|| format!("cannot create {}", temp.display()))?;
            let spool_dir = temp
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_owned);
            let mut sink = TarSink::rewindable(
                std::io::BufWriter::with_capacity(1 << 20, file),
                dest.display().to_string(),
            );
            if let Some(d) = spool_dir {
                sink = sink.with_spool_dir(d);
            }
            Box::new(TarOut {
                sink: Some(sink),
                temp: Some(temp.clone()),
            })
        }
        Output::Dir(dir) => {
            Box::new(DirOut(DirSink::new(dir).with_context(|| {
                format!("cannot restore into {}", dir.display())
            })?))
        }
    })
}

fn print_report(cli: &Cli, report: &Report, opener: &dyn LockboxOpener, output: &Output, code: u8) {
    let tar_on_stdout = matches!(output, Output::Stdout);
    let target = match output {
        Output::Stdout => "standard output".to_owned(),
        Output::File { dest, .. } => dest.display().to_string(),
        Output::Dir(d) => format!("directory {}", d.display()),
    };
    if cli.json {
        let mut v = serde_json::to_value(report).expect("reports serialize");
        v["identity"] = opener.describe().into();
        v["output"] = target.clone().into();
        v["exit_code"] = code.into();
        print_json(&v, tar_on_stdout);
        if tar_on_stdout {
            return;
        }
    }
    eprintln!("cbfs-recover: identity: {}", opener.describe());
    eprintln!("cbfs-recover: output: {target}");
    for line in report.human().lines() {
        eprintln!("cbfs-recover: {line}");
    }
}
