//! `cbfs-recover`: turn a cbfs store back into a plain pax tar (or a
//! directory), with no database and no daemon: a thin command over
//! `cbfs-restore`. It reads a local directory, an S3 bucket, or a gateway.
//!
//! Exit codes: 0 everything in reach restored (scopes skipped for lack of a
//! key are reported, not failures); 1 error before any output; 2 usage;
//! 3 partial: some members failed, the output holds every intact one;
//! 4 the snapshot or keyset could not be verified or trusted; 5 the store
//! is unavailable (retry); 7 the output's disk is full; 8 loose segments
//! restored UNAUTHENTICATED.

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use cbfs_core::{KeySource, Keyset, Seed, UserName, UserPublic, UserSecret, fingerprint};
use cbfs_restore::{
    Anchors, DirSink, GatewaySource, LocalDir, LockboxOpener, NoKey, ObjectSource, PathFilter,
    Report, RestoreOptions, S3Source, Sink, Snapshot, TarSink, Trust, TrustRecords, identify,
    is_gateway_store, open_snapshot, restore, restore_unauthenticated_segments, trusted_keyset,
};
use clap::{ArgGroup, Parser};

const EXAMPLES: &str = "\
Examples:
  # The newest snapshot of a local store, as a tar, with the root secret
  cbfs-recover --identity file:/keys/fs1-admin.key --store /mnt/archive -o restore.tar
  # ... of an S3 bucket (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION)
  cbfs-recover --identity file:/keys/fs1-admin.key --store s3://bucket/projects -o restore.tar
  # Through a gateway, with no store credentials: your own user key signs the reads
  cbfs-recover --identity file:/keys/fs1-admin.key --store https://gw.example:8443/v1/fs/fs1 \\
      --gateway-user admin.pub --gateway-identity file:/keys/admin-user.key -o restore.tar
  # An older snapshot, streamed into tar; only one subtree
  cbfs-recover --identity file:/keys/fs1-admin.key --store /mnt/archive \\
      --snapshot 00c0ffee --path home/alice -o - | tar -xpf - -C /srv/restore
  # With an exported scope secret: only that scope (others are reported as skipped).
  # The administrator key must be pinned: its fingerprint, from your administrator
  # (remembered in trusted-admins.json beside the key file after the first use)
  cbfs-recover --identity keyring:cbfs/fs1-alice --admin-key 1a2b:3c4d:... \\
      --store /mnt/archive -o alice.tar
  # Straight into a directory
  cbfs-recover --identity file:/keys/fs1-admin.key --store /mnt/archive -C /srv/restore
  # LAST RESORT: loose segment files with no manifest. Nothing proves that they
  # are the administrator's: anyone with the public keyset can make members that
  # decrypt. Exit code 8 says so.
  cbfs-recover --identity file:/keys/fs1-admin.key --keyset keyset.json \\
      --unauthenticated-segments copy/segments/*.tar -o restore.tar

Extract the tar with GNU tar (tar --xattrs --xattrs-include='*' -xpf restore.tar)
or bsdtar (bsdtar -xpf restore.tar). A user with a delegation restores with
`cbfs-tier restore --node ...`: users never hold key fragments.

Trust: the keyset must be signed by the administrator the reader trusts (the
root secret's own key, --keyset, --admin-key, or what trusted-admins.json pinned
before); the snapshot must be signed by a writer that keyset registers. Anything
else is refused, never accepted with a warning.

Age-wrapped key files: set CBFS_AGE_IDENTITY (x25519) or CBFS_PASSPHRASE_FILE.

Exit codes:
  0  everything in reach was restored (scopes without a key are reported, not failures)
  1  error before any output (keys, store, output file)
  2  usage
  3  partial: some members failed; the output holds every intact member
  4  the snapshot or keyset could not be verified or trusted (signature, writer,
     administrator, object name, chain, rollback)
  5  the store is unavailable (retry)
  7  the output's disk is full: free space and run again
  8  loose segments restored with --unauthenticated-segments: NOT authenticated,
     whether all of them or some (the report says which failed)";

/// Restore a cbfs store as one plain pax tar, or into a directory.
#[derive(Parser)]
#[command(name = "cbfs-recover", version, after_long_help = EXAMPLES)]
#[command(group(ArgGroup::new("input").required(true).args(["store", "unauthenticated_segments"])))]
struct Cli {
    /// The key: file:PATH, keyring:SERVICE/NAME (the kernel keyring) or
    /// pkcs11:...; never a key service (openbao:, awskms:): unwrap such a key
    /// into a file first with cbfs-keytool copy. The root secret or a scope
    /// secret. Without it, only plain (unencrypted) members are restored.
    #[arg(long, value_name = "SOURCE")]
    identity: Option<KeySource>,
    /// A keyset file you trust: pins its administrator, and no older keyset
    /// of the store is accepted.
    #[arg(long, value_name = "KEYSET.json")]
    keyset: Option<PathBuf>,
    /// The administrator key you trust, by fingerprint (as `cbfs-keytool show
    /// --keyset` prints it); remembered in the trust records.
    #[arg(long, value_name = "FINGERPRINT")]
    admin_key: Option<String>,
    /// Where the trust records are (default: trusted-admins.json beside the
    /// --identity key file, or under $XDG_CONFIG_HOME/cbfs; or CBFS_TRUST_FILE).
    #[arg(long, value_name = "FILE")]
    trust_file: Option<PathBuf>,
    /// Also trust snapshots signed by this writer key (fingerprint), which
    /// the keyset does not register: for this one command only.
    #[arg(long, value_name = "FINGERPRINT")]
    accept_unregistered_writer: Option<String>,
    /// The store: a local directory with segments/, lockboxes/, summaries/,
    /// snapshots/; s3://BUCKET/PREFIX; or a gateway's file system,
    /// https://GATEWAY/v1/fs/NAME (with --gateway-user and --gateway-identity).
    #[arg(long, value_name = "STORE")]
    store: Option<String>,
    /// Through a gateway: who you are there, a NAME.pub file (checked against
    /// --gateway-identity) or a bare name.
    #[arg(long, value_name = "NAME.pub", requires = "gateway_identity")]
    gateway_user: Option<String>,
    /// Through a gateway: your cbfs user key (file:PATH or keyring:SERVICE/NAME),
    /// which signs every request. It does not unlock anything.
    #[arg(long, value_name = "SOURCE", requires = "gateway_user")]
    gateway_identity: Option<KeySource>,
    /// Which snapshot: an id (or a prefix of 8+ characters) or a sequence number (default: newest).
    #[arg(long, value_name = "ID", requires = "store")]
    snapshot: Option<String>,
    /// LAST RESORT: restore these loose segment files with no manifest.
    /// Nothing authenticates them as the administrator's; exit code 8.
    #[arg(long, value_name = "SEGMENT_FILE", num_args = 1.., conflicts_with = "store")]
    unauthenticated_segments: Vec<PathBuf>,
    /// Where the lockboxes of loose segments are (DIR/<segment id>/ or DIR);
    /// default: lockboxes/<segment id>/ beside the segment file's directory.
    #[arg(long, value_name = "DIR", requires = "unauthenticated_segments")]
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

/// The exit code of a restore library error met before any output.
fn code_of(e: &cbfs_restore::Error) -> u8 {
    match e {
        cbfs_restore::Error::Usage(_) => 2,
        e if e.is_transient() => 5,
        e if e.is_verification() => 4,
        cbfs_restore::Error::NoSnapshot(_) => 4,
        _ => 1,
    }
}

fn failed(context: &'static str) -> impl FnOnce(cbfs_restore::Error) -> Failed {
    move |e| Failed {
        code: code_of(&e),
        err: anyhow!(e).context(context),
    }
}

fn main() -> ExitCode {
    let cli: Cli = cbfs_cli::parse(Some("CBFS_RECOVER_CONFIG"));
    init_logs(cli.verbose);
    let json = cli.json;
    let tar_on_stdout =
        cli.directory.is_none() && cli.output.as_deref().is_none_or(|o| o == Path::new("-"));
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(Failed { code, err }) => {
            if json {
                let v = serde_json::json!({ "error": cbfs_core::error_chain(err.as_ref()), "exit_code": code });
                print_json(&v, tar_on_stdout);
            }
            eprintln!(
                "cbfs-recover: error: {}",
                cbfs_core::error_chain(err.as_ref())
            );
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

fn open_store(cli: &Cli, spec: &str) -> Result<Box<dyn ObjectSource>, Failed> {
    if is_gateway_store(spec) {
        let (Some(user), Some(identity)) = (&cli.gateway_user, &cli.gateway_identity) else {
            return Err(fail(2)(anyhow!(
                "store `{spec}`: a gateway needs --gateway-user NAME.pub and --gateway-identity SOURCE"
            )));
        };
        let secret = UserSecret::from_seed(
            identity
                .load(&cbfs_localkeys::unlock_from_env())
                .with_context(|| format!("cannot load the gateway identity {identity}"))
                .map_err(fail(1))?,
        );
        let name = gateway_user(user, &secret).map_err(fail(2))?;
        return Ok(Box::new(
            GatewaySource::open(spec, name, secret.signer())
                .map_err(failed("cannot open the store"))?,
        ));
    }
    if cli.gateway_user.is_some() {
        return Err(fail(2)(anyhow!(
            "--gateway-user is for a store through a gateway (https://GATEWAY/v1/fs/NAME)"
        )));
    }
    if spec.starts_with("s3://") {
        return Ok(Box::new(
            S3Source::open(spec).map_err(failed("cannot open the store"))?,
        ));
    }
    if spec.contains("://") {
        return Err(fail(2)(anyhow!(
            "store `{spec}`: give a directory, s3://BUCKET/PREFIX or https://GATEWAY/v1/fs/NAME"
        )));
    }
    Ok(Box::new(
        LocalDir::new(spec).map_err(failed("cannot open the store"))?,
    ))
}

/// The user a `--gateway-user` argument names: a `NAME.pub` file (checked
/// against the key) or a bare name.
fn gateway_user(arg: &str, secret: &UserSecret) -> anyhow::Result<UserName> {
    let path = Path::new(arg);
    if arg.ends_with(".pub") || path.is_file() {
        let public = UserPublic::load(path).with_context(|| format!("--gateway-user {arg}"))?;
        public.check_secret(secret).map_err(|_| {
            anyhow!(
                "the --gateway-identity key is not the key of user `{}` ({arg})",
                public.name()
            )
        })?;
        return Ok(public.name().clone());
    }
    UserName::new(arg).map_err(|e| anyhow!("--gateway-user {arg}: {e}"))
}

/// The trusted keyset: pinned by --keyset, --admin-key, the root secret
/// (derived from it), or the trust records, in that order.
fn keyset_for(
    cli: &Cli,
    source: &dyn ObjectSource,
    seed: Option<&Seed>,
    records: &TrustRecords,
) -> Result<Keyset, Failed> {
    let anchors = Anchors {
        keyset_file: cli.keyset.as_deref(),
        admin_key: cli.admin_key.as_deref(),
        pinned: None,
        secret: seed,
    };
    trusted_keyset(source, &anchors, Some(records))
        .map_err(failed("the keyset could not be trusted"))
}

fn run(cli: Cli) -> Result<u8, Failed> {
    let opts = RestoreOptions {
        filter: path_filter(&cli.paths).map_err(fail(2))?,
        threads: cli.jobs.map(usize::from),
    };
    let output = plan_output(&cli).map_err(fail(2))?;
    let seed = cli
        .identity
        .as_ref()
        .map(|s| {
            s.load(&cbfs_localkeys::unlock_from_env())
                .with_context(|| format!("cannot load the identity {s}"))
                .map_err(fail(1))
        })
        .transpose()?;
    let key_file = match &cli.identity {
        Some(KeySource::File(p)) => Some(p.as_path()),
        _ => None,
    };
    let records_path = cli
        .trust_file
        .clone()
        .unwrap_or_else(|| TrustRecords::default_path(key_file));
    let mut records = TrustRecords::load(&records_path).map_err(failed("trust records"))?;

    if !cli.unauthenticated_segments.is_empty() {
        return run_loose(&cli, seed, &records, &opts, &output);
    }
    let spec = cli.store.as_deref().expect("clap requires an input");
    let source = open_store(&cli, spec)?;
    let keyset = keyset_for(&cli, source.as_ref(), seed.as_ref(), &records)?;
    let opener = make_opener(&cli, seed, &keyset)?;
    let trust = Trust::new(keyset.clone())
        .accept_unregistered_writer(cli.accept_unregistered_writer.clone());
    let snapshot = open_snapshot(source.as_ref(), &trust, cli.snapshot.as_deref())
        .map_err(failed("the snapshot could not be verified"))?;
    check_snapshot_rollback(&cli, &snapshot, &keyset, &records)?;

    let mut sink: Box<dyn SinkOut> = open_output(&output, cli.force).map_err(fail(1))?;
    let result = restore(
        source.as_ref(),
        &snapshot,
        opener.as_ref(),
        &opts,
        sink.as_sink(),
    );
    let report = finish_output(result, sink.as_mut(), &output)?;
    // A snapshot accepted by name only (--accept-unregistered-writer) is not
    // a floor for later reads.
    let seen = if snapshot.writer().is_some() {
        snapshot.sequence()
    } else {
        0
    };
    if records.note(&keyset, seen)
        && let Err(e) = records.save()
    {
        eprintln!("cbfs-recover: warning: cannot update the trust records: {e}");
    }
    let code = report.exit_code();
    print_report(&cli, &report, opener.as_ref(), &output, code);
    Ok(code)
}

/// With no --snapshot, the newest snapshot must not be older than one seen
/// before: fewer snapshots than the records say means the newest vanished.
fn check_snapshot_rollback(
    cli: &Cli,
    snapshot: &Snapshot,
    keyset: &Keyset,
    records: &TrustRecords,
) -> Result<(), Failed> {
    if cli.snapshot.is_some() {
        return Ok(());
    }
    records
        .check_newest(keyset.fs().as_str(), snapshot.sequence(), 0, snapshot.key())
        .map_err(failed("the snapshot could not be verified"))
}

fn run_loose(
    cli: &Cli,
    seed: Option<Seed>,
    records: &TrustRecords,
    opts: &RestoreOptions,
    output: &Output,
) -> Result<u8, Failed> {
    // The keyset only recognizes the key here: nothing can authenticate
    // loose segments, whoever signed the keyset.
    let keyset = match (&cli.keyset, &cli.admin_key) {
        (Some(p), _) => Some(
            Keyset::load(p)
                .with_context(|| format!("cannot use the keyset {}", p.display()))
                .map_err(fail(4))?,
        ),
        _ => None,
    };
    let opener: Box<dyn LockboxOpener> = match (seed, &keyset) {
        (None, _) => Box::new(NoKey),
        (Some(seed), Some(ks)) => identify_or_fail(seed, ks, &cli.identity)?,
        (Some(_), None) => {
            return Err(fail(2)(anyhow!(
                "loose segments with a key need --keyset KEYSET.json, to recognize the key"
            )));
        }
    };
    let _ = records;
    let mut sink: Box<dyn SinkOut> = open_output(output, cli.force).map_err(fail(1))?;
    let result = restore_unauthenticated_segments(
        &cli.unauthenticated_segments,
        cli.lockboxes.as_deref(),
        opener.as_ref(),
        opts,
        sink.as_sink(),
    );
    let report = finish_output(result, sink.as_mut(), output)?;
    // Partial or whole, the signal that matters is that nothing is
    // authenticated: 8 either way (the report names what failed).
    let code = 8;
    print_report(cli, &report, opener.as_ref(), output, code);
    eprintln!(
        "cbfs-recover: UNAUTHENTICATED: no signed manifest proves that these segments are the administrator's, complete or current"
    );
    Ok(code)
}

/// Closes the output (or discards it if the restore broke) and moves a
/// finished tar file into place.
fn finish_output(
    result: cbfs_restore::Result<Report>,
    sink: &mut dyn SinkOut,
    output: &Output,
) -> Result<Report, Failed> {
    let report = match result.and_then(|r| sink.close().map(|()| r)) {
        Ok(r) => r,
        Err(e) => {
            sink.discard();
            let code = if e.is_resource() { 7 } else { 1 };
            return Err(fail(code)(
                anyhow!(e).context("the output broke; nothing was kept"),
            ));
        }
    };
    if let Output::File { dest, temp } = output {
        std::fs::rename(temp, dest)
            .with_context(|| format!("cannot move the finished tar to {}", dest.display()))
            .map_err(fail(1))?;
    }
    Ok(report)
}

fn path_filter(paths: &[PathBuf]) -> anyhow::Result<PathFilter> {
    use std::os::unix::ffi::OsStrExt;
    let bytes: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();
    Ok(PathFilter::new(bytes)?)
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

fn identify_or_fail(
    seed: Seed,
    keyset: &Keyset,
    source: &Option<KeySource>,
) -> Result<Box<dyn LockboxOpener>, Failed> {
    match identify(seed, keyset) {
        Some(id) => Ok(Box::new(id)),
        None => Err(fail(1)(anyhow!(
            "the key from {} is neither the root secret nor a scope secret of file system `{}` \
             (administrator key {}); a user restores with `cbfs-tier restore --node`",
            source.as_ref().map(|s| s.to_string()).unwrap_or_default(),
            keyset.fs(),
            fingerprint(keyset.admin_verifying_key())
        ))),
    }
}

fn make_opener(
    cli: &Cli,
    seed: Option<Seed>,
    keyset: &Keyset,
) -> Result<Box<dyn LockboxOpener>, Failed> {
    match seed {
        None => Ok(Box::new(NoKey)),
        Some(seed) => identify_or_fail(seed, keyset, &cli.identity),
    }
}

/// A sink plus how to close or discard its output.
trait SinkOut {
    fn as_sink(&mut self) -> &mut dyn Sink;
    fn close(&mut self) -> cbfs_restore::Result<()>;
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
    fn close(&mut self) -> cbfs_restore::Result<()> {
        let sink = self.sink.take().expect("closed once");
        let mut w = sink.into_inner()?;
        w.flush().map_err(|e| cbfs_restore::Error::Output {
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
    fn close(&mut self) -> cbfs_restore::Result<()> {
        Ok(())
    }
    fn discard(&mut self) {}
}

fn open_output(output: &Output, force: bool) -> anyhow::Result<Box<dyn SinkOut>> {
    Ok(match output {
        Output::Stdout => {
            // Flushed after every entry: a consumer killed mid-way has every
            // entry before the one in progress whole.
            let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            Box::new(TarOut {
                sink: Some(TarSink::new(out, "standard output").flush_each_entry()),
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
