//! `cbfs-gc`: garbage collection of a cbfs store, with no key.
//!
//! Exit codes: 0 done (phase two may still be waiting for writers: run it
//! again later), 1 error, 2 usage, 4 something in the store cannot be
//! verified and stops deletion, 5 the store is unavailable (retry),
//! 6 another collector holds the lease, 7 a local disk is full.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use cbfs_gc::{Anchor, Error, GcOptions, GcReport};
use clap::Parser;

const EXAMPLES: &str = "\
Examples:
  # What would go, without writing or deleting anything
  cbfs-gc --store /mnt/archive --keyset keyset.json --dry-run
  # A run: deletes what an earlier run recorded (once every active writer
  # has finished a run since), compacts, records what to delete next time
  cbfs-gc --store s3://bucket/projects --admin-key 1a2b:3c4d:5e6f:7a8b:9c0d

The collector holds no key: give the store (AWS_* variables for S3) and the
administrator's public key (a keyset file or its fingerprint). Snapshots are
forgotten with `cbfs-tier forget`, which signs the decision.

Exit codes: 0 done, 1 error, 2 usage, 4 an object that cannot be verified
            stops deletion, 5 store unavailable (retry), 6 another
            collector holds the lease, 7 a local disk is full";

/// Reclaim the space of forgotten snapshots and replaced files, with no key.
#[derive(Parser)]
#[command(name = "cbfs-gc", version, after_long_help = EXAMPLES)]
struct Cli {
    /// The store: a directory, or s3://BUCKET/PREFIX.
    #[arg(long, value_name = "STORE")]
    store: String,
    /// A keyset file you trust (its administrator is pinned; no older
    /// keyset of the store is accepted).
    #[arg(
        long,
        value_name = "KEYSET.json",
        required_unless_present = "admin_key"
    )]
    keyset: Option<PathBuf>,
    /// The administrator key you trust, by fingerprint.
    #[arg(long, value_name = "FINGERPRINT", conflicts_with = "keyset")]
    admin_key: Option<String>,
    /// Segments younger than this are never touched (s, m, h, d).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    grace: i64,
    /// Compact a segment whose live share falls below this many percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 50.0)]
    min_live: f64,
    /// Writers seen within this span must finish a run before phase two
    /// deletes anything (s, m, h, d).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    writer_window: i64,
    /// Close new segments at this size (K, M, G).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    segment_size: u64,
    /// How long the lease lasts unless renewed (s, m, h, d).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    lease_ttl: i64,
    /// Where new segments are spooled (default: the temporary directory);
    /// it needs room for two segments (one is published while the next
    /// fills).
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Say what would be done; write and delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    /// More log output on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Testing only: abort at a point of the run.
    #[arg(long, hide = true, value_name = "POINT")]
    crash_at: Option<cbfs_gc::CrashPoint>,
    /// Testing only: wait at a point of the run until --pause-file is removed.
    #[arg(long, hide = true, value_name = "POINT", requires = "pause_file")]
    pause_at: Option<cbfs_gc::CrashPoint>,
    /// Testing only: see --pause-at.
    #[arg(long, hide = true, value_name = "FILE")]
    pause_file: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 30m, 24h or 7d"))?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return Err(format!("`{s}`: the unit is s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|v| *v >= 0)
        .ok_or_else(|| format!("`{s}` is out of range"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 64M"))?;
    let size = n.checked_mul(mult).ok_or("size too large")?;
    if size < 64 << 10 {
        return Err("the segment size must be at least 64K".into());
    }
    Ok(size)
}

fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("cbfs-gc: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

fn human(r: &GcReport) -> String {
    let mut s = format!(
        "{} snapshots kept, {} forgotten; {} bytes of segments, {} of them live{}\n",
        r.snapshots_kept,
        r.snapshots_forgotten,
        r.segment_bytes_before,
        r.live_bytes,
        if r.dry_run { " (dry run)" } else { "" }
    );
    for p in &r.phase_two {
        if p.done {
            s.push_str(&format!(
                "phase two of {}: {} segments ({} bytes) and {} other objects deleted{}\n",
                p.collection,
                p.segments_deleted,
                p.bytes_deleted,
                p.objects_deleted,
                if p.brought_back.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; {} kept because a snapshot names them again",
                        p.brought_back.len()
                    )
                }
            ));
        } else {
            s.push_str(&format!(
                "phase two of {} waits for writers to finish a run: {}\n",
                p.collection,
                p.waiting_for.join(", ")
            ));
        }
    }
    let c = &r.compaction;
    if c.segments_written > 0 {
        s.push_str(&format!(
            "compacted {} segments into {}: {} members, {} bytes copied in {:.2} s\n",
            c.segments_compacted, c.segments_written, c.members_copied, c.bytes_copied, c.seconds
        ));
    }
    let one = &r.phase_one;
    s.push_str(&format!(
        "phase one: {} dead, {} never named, {} compacted segments ({} bytes), {} other objects{}\n",
        one.dead_segments,
        one.unnamed_segments,
        one.compacted_segments,
        one.reclaimable_bytes,
        one.objects,
        match &one.collection {
            Some(k) => format!(": recorded in {k} (deleted by a later run)"),
            None if r.dry_run => " would be recorded".to_owned(),
            None => ": nothing to record".to_owned(),
        }
    ));
    if r.young_segments + r.protected_segments > 0 {
        s.push_str(&format!(
            "left alone: {} segments younger than the grace period, {} that an unverifiable object may need\n",
            r.young_segments, r.protected_segments
        ));
    }
    for n in &r.notes {
        s.push_str(&format!("note {}: {}\n", n.object, n.note));
    }
    s
}

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Usage(_) => 2,
        Error::LeaseHeld(_) | Error::LeaseLost { .. } => 6,
        e if e.is_transient() => 5,
        e if e.is_resource() => 7,
        Error::Unsafe { .. } | Error::Format { .. } => 4,
        Error::Restore { cause, .. } if cause.is_verification() => 4,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let cli: Cli = cbfs_cli::parse(Some("CBFS_GC_CONFIG"));
    init_logging(cli.verbose);
    let anchor = match (&cli.keyset, &cli.admin_key) {
        (Some(k), _) => Anchor::KeysetFile(k.clone()),
        (None, Some(fp)) => Anchor::AdminKey(fp.clone()),
        (None, None) => unreachable!("clap requires one"),
    };
    let mut opts = GcOptions::new(cli.store.clone(), anchor);
    opts.grace = cli.grace;
    opts.min_live = cli.min_live / 100.0;
    opts.writer_window = cli.writer_window;
    opts.segment_size = cli.segment_size;
    opts.lease_ttl = cli.lease_ttl.max(3);
    opts.dry_run = cli.dry_run;
    opts.spool = cli.spool.clone();
    opts.hooks = cbfs_gc::TestHooks {
        crash_at: cli.crash_at,
        pause_at: cli.pause_at,
        pause_file: cli.pause_file.clone(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cbfs-gc: error: cannot start the I/O runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = rt.handle().clone();
    let result = rt.block_on(async move {
        tokio::task::spawn_blocking(move || cbfs_gc::run(&opts, &handle))
            .await
            .unwrap_or_else(|e| Err(Error::Usage(format!("the run failed: {e}"))))
    });
    match result {
        Ok(report) => {
            if cli.json {
                let mut text = serde_json::to_string_pretty(&report).expect("reports serialize");
                text.push('\n');
                out(&text);
            } else {
                out(&human(&report));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = exit_code(&e);
            let text = cbfs_core::error_chain(&e);
            if cli.json {
                out(&format!(
                    "{}\n",
                    serde_json::json!({ "error": text, "exit_code": code })
                ));
            }
            eprintln!("cbfs-gc: error: {text}");
            ExitCode::from(code)
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,cbfs_gc={level},cbfs_store={level},cbfs_restore={level}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
