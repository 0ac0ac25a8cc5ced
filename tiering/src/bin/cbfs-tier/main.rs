//! `cbfs-tier`: tier a tree out to object storage, list snapshots and files,
//! restore and verify: a thin command over the `cbfs-tiering` library.
//!
//! Exit codes: 0 success, 1 error, 2 usage error, 3 key material problem
//! (restore: partial), 4 an object or snapshot failed verification or is not
//! trusted, 5 the store or the delegation nodes are unreachable (retry),
//! 6 the run finished but skipped some entries (they are retried next run),
//! 7 a local disk is full (nothing committed is lost; retry with space).

#![forbid(unsafe_code)]

mod progress;

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use cbfs_core::KeySource;
use cbfs_tiering::hsm::{self, RecallIdentity, ReleaseOptions};
use cbfs_tiering::{
    Agent, AgentOptions, Error, OutOptions, Quiet, RestoreRequest, ScopeRule, ScopeRules,
    TrustOptions, VerifyRequest,
};
use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # Tier a tree out to a local directory store (the default kind); the keyset
  # must register this agent's writer key (cbfs-keytool add-writer)
  cbfs-tier out /srv/projects --store /mnt/archive --keyset keyset.json \\
      --writer-key file:/etc/cbfs/agent.key \\
      --scope 'home/alice/**=alice' --scope 'home/bob/**=bob'
  # ... or to S3 (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION)
  cbfs-tier out /srv/projects --store s3://bucket/projects --keyset keyset.json
  # Read-only listings: no writer key needed, the index pins the administrator
  cbfs-tier snapshots --store /mnt/archive
  cbfs-tier ls --store /mnt/archive home/alice
  # A user restores their own files with their own key, through the delegation
  # nodes (users never hold key fragments); the administrator key is pinned
  # once with --admin-key (remembered beside the key file)
  cbfs-tier restore --store /mnt/archive --identity file:alice.key --user alice.pub \\
      --admin-key 1a2b:3c4d:... \\
      --node http://n1:7600 --node http://n2:7600 --node http://n3:7600 home/alice ./alice
  # Check the store without a key; then decrypt everything with the root secret
  cbfs-tier verify --store /mnt/archive --keyset keyset.json
  cbfs-tier verify --store /mnt/archive --read-data --identity file:admin.key
  # Tiering proper: states, release by policy, recall, fault-in on first read
  cbfs-tier status --store /mnt/archive --tree /srv/projects home/alice
  cbfs-tier release --store /mnt/archive --tree /srv/projects --older-than 30d --larger-than 1M
  cbfs-tier release --store /mnt/archive --tree /srv/projects --until-free 20% --dry-run
  cbfs-tier recall --store /mnt/archive --tree /srv/projects --identity file:agent-user.key \\
      --user agent-user.pub --node http://n1:7600 --node http://n2:7600 --node http://n3:7600 \\
      home/alice/report.pdf
  cbfs-tier watch --store /mnt/archive --tree /srv/projects --identity file:agent-user.key \\
      --user agent-user.pub --node http://n1:7600 --node http://n2:7600 --node http://n3:7600
  # Retention: keep the last 3 snapshots and one a day for a week; see first,
  # then publish the signed decision (cbfs-gc, which holds no key, acts on it)
  cbfs-tier forget --store /mnt/archive --keep-last 3 --keep-daily 7 --dry-run
  cbfs-tier forget --store /mnt/archive --keep-last 3 --keep-daily 7
  # After revoking a user who matters: store scope alice again under new keys
  # (verified), and forget the older snapshots that name the old copies
  cbfs-tier rekey --store /mnt/archive --keyset keyset.json --admin file:admin.key \
      --scope alice --forget-older

Trust: snapshots are trusted only from writers the administrator's keyset
registers, and the keyset only from the administrator the reader pinned (the
index, --keyset, --admin-key, the root secret, or the trust records).

Exit codes: 0 ok, 1 error, 2 usage, 3 key material (restore: partial, some
            entries failed), 4 verification failed or not trusted (recall: a
            stored copy is bad, the file is marked lost), 5 store or nodes
            unreachable (retry), 6 done but some entries skipped (release:
            some chosen files stay), 7 a local disk is full (retry with
            space), 8 fault-in is not supported here (kernel or file system)";

/// Tier files out to object storage as compressed, encrypted segments.
#[derive(Parser)]
#[command(name = "cbfs-tier", version, after_long_help = EXAMPLES)]
struct Cli {
    /// More log output on stderr (-v, -vv, -vvv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct StoreArgs {
    /// The store: a directory, or s3://BUCKET/PREFIX.
    #[arg(long, value_name = "STORE")]
    store: String,
    /// The local index (default: under $XDG_DATA_HOME/cbfs, one per store).
    #[arg(long, value_name = "DIR")]
    index: Option<PathBuf>,
}

/// How a reader pins the administrator and the writers it trusts.
#[derive(Args)]
struct TrustArgs {
    /// A keyset file you trust (its administrator is pinned; no older
    /// keyset of the store is accepted).
    #[arg(long, value_name = "KEYSET.json")]
    keyset: Option<PathBuf>,
    /// The administrator key you trust, by fingerprint; remembered in the
    /// trust records.
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
}

impl TrustArgs {
    fn options(self, index: Option<PathBuf>) -> TrustOptions {
        TrustOptions {
            keyset: self.keyset,
            admin_key: self.admin_key,
            trust_file: self.trust_file,
            accept_unregistered_writer: self.accept_unregistered_writer,
            index,
        }
    }
}

/// The agent of a writing run (`out`, `rekey`): its keyset and writer key.
#[derive(Args)]
struct WriterArgs {
    /// The public keyset; it must register this agent's writer key.
    #[arg(long, value_name = "KEYSET.json")]
    keyset: PathBuf,
    /// The key that signs snapshot manifests (default:
    /// file:INDEX/writer.key, made on first use with INDEX/writer.pub for
    /// `cbfs-keytool add-writer`).
    #[arg(long, value_name = "SOURCE")]
    writer_key: Option<KeySource>,
}

/// How a writing run (`out`, `rekey`) stores: segments, compression, threads.
#[derive(Args)]
struct RunArgs {
    /// Close a segment at this size (K, M, G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    segment_size: u64,
    /// zstd compression level.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: i32,
    /// Worker threads (default: the number of cores).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Testing only: abort at a point of the run (segment:N, lockboxes:N, summary:N, commit:N, manifest).
    #[cfg(feature = "crash-points")]
    #[arg(long, hide = true, value_name = "POINT")]
    crash_at: Option<cbfs_tiering::CrashPoint>,
}

impl RunArgs {
    fn apply(self, opts: &mut OutOptions) {
        opts.segment_size = self.segment_size;
        opts.zstd_level = self.zstd_level;
        if let Some(j) = self.jobs {
            opts.workers = j.max(1);
        }
        #[cfg(feature = "crash-points")]
        {
            opts.crash_at = self.crash_at;
        }
    }
}

/// Whose key recalls released files.
#[derive(Args)]
struct RecallArgs {
    /// The key that opens the lockboxes: the administrator's root secret
    /// or a scope secret; or, with --node, a user key (an unattended
    /// agent's own, delegated through the nodes like any user's).
    #[arg(long, value_name = "SOURCE")]
    identity: KeySource,
    /// A delegation node (repeat for all n of the delegation).
    #[arg(long, value_name = "URL", requires = "user")]
    node: Vec<String>,
    /// With --node: who the key belongs to, its NAME.pub file (or name).
    #[arg(long, value_name = "NAME.pub")]
    user: Option<String>,
    /// With --user: seconds one node gets to answer one batch.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    node_timeout: u64,
    /// Seconds one read of the store may take, retries included, before
    /// the recall fails as unavailable (a waiting reader gets EIO).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    store_timeout: u64,
}

impl RecallArgs {
    fn store_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.store_timeout.max(1))
    }

    fn identity(self) -> RecallIdentity {
        match self.user {
            Some(user) => RecallIdentity::User {
                identity: self.identity,
                user,
                nodes: self.node,
                timeout: std::time::Duration::from_secs(self.node_timeout.max(1)),
            },
            None => RecallIdentity::Secret(self.identity),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// The tiering state of files: new, archived, dirty, released or lost,
    /// with the no-release and no-archive flags, and totals per state.
    Status {
        /// The tiered tree (what `out` reads).
        #[arg(long, value_name = "DIR")]
        tree: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Files or directories in the tree (default: all of it).
        paths: Vec<PathBuf>,
    },
    /// Release archived files by policy: their blocks are freed, and a stub
    /// keeps size, mode, owner, times and inode (recalled on first use
    /// while `cbfs-tier watch` runs, or with `cbfs-tier recall`).
    ///
    /// Only a file still exactly as archived in a committed snapshot goes,
    /// after its stored copy is checked against the signed manifest.
    /// Without a policy, every archived file below the paths goes.
    Release {
        /// The tiered tree (what `out` reads).
        #[arg(long, value_name = "DIR")]
        tree: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// The public keyset (default: the store's newest of the
        /// administrator the index pinned).
        #[arg(long, value_name = "KEYSET.json")]
        keyset: Option<PathBuf>,
        /// Only files not modified for this long (30d, 12h, 90m, 2w).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<std::time::Duration>,
        /// Age and least-recently-used order by access time (where the
        /// file system is mounted to keep it), not modification time.
        #[arg(long)]
        atime: bool,
        /// Only files larger than this (K, M, G, T suffixes).
        #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
        larger_than: Option<u64>,
        /// Only paths (relative to the tree) matching GLOB; repeatable.
        #[arg(long, value_name = "GLOB")]
        include: Vec<String>,
        /// Never paths matching GLOB; repeatable.
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
        /// Release least recently used files first until the file system
        /// has this much free (20%), as Robinhood's watermarks do.
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        until_free: Option<f64>,
        /// List what would be released and why; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Testing only: abort at a step (record:N, punch:N, released:N).
        #[cfg(feature = "crash-points")]
        #[arg(long, hide = true, value_name = "POINT")]
        crash_at: Option<hsm::ReleaseStep>,
        /// Files or directories in the tree (default: all of it).
        paths: Vec<PathBuf>,
    },
    /// Recall released files: their content back in place (same inode),
    /// verified against the signed manifest before the stub goes, and
    /// their modification time restored.
    Recall {
        /// The tiered tree.
        #[arg(long, value_name = "DIR")]
        tree: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        who: RecallArgs,
        #[command(flatten)]
        trust: TrustArgs,
        /// Files or directories in the tree.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Recall released files transparently on first access (fanotify
    /// pre-content events, Linux 6.14 or later; ext4, xfs, btrfs): a
    /// reader waits, then reads the real bytes, or gets EIO if the recall
    /// fails; never zeros. Runs until SIGTERM, as a guard process that owns
    /// the watch and a handler it restarts if it dies.
    ///
    /// Keep the store, the index and the spool outside the watched mount.
    Watch {
        /// The tiered tree (its whole mount is watched).
        #[arg(long, value_name = "DIR")]
        tree: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        who: RecallArgs,
        #[command(flatten)]
        trust: TrustArgs,
        /// Recalls at once.
        #[arg(long, value_name = "N", default_value_t = 4)]
        workers: usize,
        /// Run the handler without a guard (if it dies, waiting readers
        /// read zeros): for tests only.
        #[arg(long, hide = true)]
        no_guard: bool,
    },
    /// Set or clear the no-release and no-archive flags of files.
    Flag {
        /// The tiered tree.
        #[arg(long, value_name = "DIR")]
        tree: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Never release these files.
        #[arg(long)]
        no_release: bool,
        /// Release them again (clears no-release).
        #[arg(long, conflicts_with = "no_release")]
        release_ok: bool,
        /// Never archive these files.
        #[arg(long)]
        no_archive: bool,
        /// Archive them again (clears no-archive).
        #[arg(long, conflicts_with = "no_archive")]
        archive_ok: bool,
        /// Files in the tree.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Tier a tree out: store new and changed entries, then a signed snapshot.
    Out {
        /// The tree to tier out.
        source: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        writer: WriterArgs,
        /// Send paths matching GLOB (relative to SOURCE) to scope LABEL; first match wins,
        /// the rest goes to `default`. Repeatable.
        #[arg(long = "scope", value_name = "GLOB=LABEL")]
        scopes: Vec<ScopeRule>,
        /// Write plain tars (no compression, no encryption, real names).
        /// Anyone who can read the store can read the files.
        #[arg(long)]
        plain: bool,
        /// Store again, from the tree, the small files of each segment
        /// whose live share of files has fallen below PERCENT: they share
        /// packs with replaced files, and the collector, which holds no
        /// key, cannot split a pack. 0 never does.
        #[arg(long, value_name = "PERCENT", default_value_t = 50,
              value_parser = clap::value_parser!(u8).range(0..=100))]
        min_live: u8,
        #[command(flatten)]
        storing: RunArgs,
    },
    /// Push a tree to a gateway, which tiers it out under --prefix as one
    /// snapshot (files unchanged since the last push keep their stored
    /// copies). Your own key signs the request; the gateway's policy decides.
    Push {
        /// The tree to push, or `-` for a tar stream on standard input.
        source: PathBuf,
        /// The gateway: https://HOST:PORT (CBFS_CA_FILE adds CA certificates).
        #[arg(long, value_name = "URL")]
        gateway: String,
        /// The file system, as the gateway names it.
        #[arg(long, value_name = "NAME")]
        fs: String,
        /// Where the tree goes in the file system's namespace (/hosts/h1).
        #[arg(long, value_name = "/PATH")]
        prefix: String,
        /// Your secret: it signs the request.
        #[arg(long, value_name = "SOURCE")]
        identity: KeySource,
        /// Who you are: your NAME.pub file (or your name).
        #[arg(long, value_name = "NAME.pub")]
        user: String,
    },
    /// List the snapshots in the store that a trusted writer signed.
    Snapshots {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Restore files from a snapshot into a directory, with your own key.
    ///
    /// A user gives their own secret and their delegation nodes (--node
    /// URL... --user NAME.pub): only the scopes delegated to them are
    /// opened, and what could not be opened is reported. The administrator
    /// (or a scope's holder) gives the root or a scope secret instead. The
    /// result is checked against the signed snapshot manifest.
    Restore {
        /// The store: a directory, s3://BUCKET/PREFIX, or a gateway's
        /// https://HOST:PORT/v1/fs/NAME (with --user; the nodes are then
        /// reached through the gateway unless --node names them).
        #[arg(long, value_name = "STORE")]
        store: String,
        /// Your secret (a user key with --node, or a root or scope secret).
        #[arg(long, value_name = "SOURCE")]
        identity: KeySource,
        /// A delegation node; repeat for all n nodes of your delegation. All
        /// are asked at once and the first m verified answers are used (m as
        /// the administrator signed it); a node that is down, slow or lies is
        /// named and worked around.
        #[arg(long, value_name = "URL", requires = "user")]
        node: Vec<String>,
        /// With --node: who you are, your NAME.pub file (or your name).
        #[arg(long, value_name = "NAME.pub")]
        user: Option<String>,
        /// With --user: seconds one node gets to answer one batch.
        #[arg(long, value_name = "SECS", default_value_t = 60, requires = "user")]
        node_timeout: u64,
        #[command(flatten)]
        trust: TrustArgs,
        /// A snapshot id (or its first 8+ characters) or sequence number; the newest by default.
        #[arg(long)]
        snapshot: Option<String>,
        /// The agent's index, to pin the administrator and refuse a store
        /// rolled back behind it (default: the one of this store, if any).
        #[arg(long, value_name = "DIR")]
        index: Option<PathBuf>,
        /// Threads that decode members (default: one per core, at most 8).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        jobs: Option<u16>,
        /// What to restore: a path in the tree, or `.` for everything.
        path: String,
        /// Where to restore it.
        dest: PathBuf,
    },
    /// Check a store: manifests and their writers, objects, summaries against
    /// segments, lockboxes; with --read-data and --identity, decrypt everything too.
    Verify {
        /// The store: a directory, or s3://BUCKET/PREFIX.
        #[arg(long, value_name = "STORE")]
        store: String,
        #[command(flatten)]
        trust: TrustArgs,
        /// The agent's index: the snapshots it wrote must all be there
        /// (default: the one of this store, if any).
        #[arg(long, value_name = "DIR")]
        index: Option<PathBuf>,
        /// Also decrypt every member (needs --identity).
        #[arg(long)]
        read_data: bool,
        /// The root or a scope secret, for --read-data.
        #[arg(long, value_name = "SOURCE")]
        identity: Option<KeySource>,
    },
    /// Decide which snapshots to keep, and publish the decision as a signed
    /// retention record in the store (restic's vocabulary). cbfs-gc, which
    /// holds no key, then reclaims the space of the forgotten ones. The
    /// newest snapshot is never forgotten; a writer forgets only its own
    /// snapshots, the administrator (--admin) any writer's.
    Forget {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        trust: TrustArgs,
        /// The writer key that signs the decision (default: the index's
        /// writer.key).
        #[arg(long, value_name = "SOURCE", conflicts_with = "admin")]
        writer_key: Option<KeySource>,
        /// Sign as the administrator (the root secret) instead.
        #[arg(long, value_name = "SOURCE")]
        admin: Option<KeySource>,
        /// Keep the N newest snapshots.
        #[arg(long, value_name = "N")]
        keep_last: Option<u32>,
        /// Keep the newest snapshot of each of the last N hours that have one.
        #[arg(long, value_name = "N")]
        keep_hourly: Option<u32>,
        /// ... of each of the last N days (UTC).
        #[arg(long, value_name = "N")]
        keep_daily: Option<u32>,
        /// ... of each of the last N ISO weeks.
        #[arg(long, value_name = "N")]
        keep_weekly: Option<u32>,
        /// ... of each of the last N months.
        #[arg(long, value_name = "N")]
        keep_monthly: Option<u32>,
        /// ... of each of the last N years.
        #[arg(long, value_name = "N")]
        keep_yearly: Option<u32>,
        /// Keep every snapshot made within this span before the newest
        /// (1y6m, 30d, 36h: y = 365 days, m = 30 days).
        #[arg(long, value_name = "DURATION")]
        keep_within: Option<cbfs_tiering::KeepWithin>,
        /// Keep this snapshot (id, 8+ characters of it, or sequence); repeatable.
        #[arg(long, value_name = "ID")]
        keep_snapshot: Vec<String>,
        /// Show what would be forgotten and why each kept one is kept; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-key a scope after a revocation: every file of it in the newest
    /// snapshot is read back from the store with the administrator's root
    /// secret, stored again under new file and group keys in new segments,
    /// and read back once more (content and metadata compared) before the
    /// command succeeds. One new snapshot names the new copies; the old
    /// ones become garbage once no kept snapshot names them (--forget-older
    /// forgets those snapshots). Resumable: rerun after a crash; tier-out
    /// runs refuse until the re-key is finished.
    Rekey {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        writer: WriterArgs,
        /// The administrator's root secret.
        #[arg(long, value_name = "SOURCE")]
        admin: KeySource,
        /// The scope to re-key.
        #[arg(long, value_name = "LABEL")]
        scope: String,
        /// Re-key only what was first stored in this snapshot (id, 8+
        /// characters of it, or sequence) or later: what came before was
        /// never under keys released since.
        #[arg(long, value_name = "SNAPSHOT")]
        since: Option<String>,
        /// Once verified, publish a retention record signed by the
        /// administrator that forgets every older snapshot naming an old
        /// copy, so that cbfs-gc can delete them.
        #[arg(long)]
        forget_older: bool,
        /// The tiered tree: stub records of released files of the scope
        /// are made to name the new copies (nothing else in it is read or
        /// changed).
        #[arg(long, value_name = "DIR")]
        tree: Option<PathBuf>,
        #[command(flatten)]
        storing: RunArgs,
    },
    /// List the entries of a snapshot (the newest by default).
    Ls {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        trust: TrustArgs,
        /// A snapshot id (or its first 8+ characters) or sequence number.
        #[arg(long)]
        snapshot: Option<String>,
        /// Only entries at or below this path.
        path: Option<String>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let size = parse_bytes(s)?;
    if size < 64 << 10 {
        return Err("the segment size must be at least 64K".into());
    }
    Ok(size)
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 1M"))?;
    n.checked_mul(mult).ok_or_else(|| "size too large".into())
}

fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1u64),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        Some('d') => (&t[..t.len() - 1], 86_400),
        Some('w') => (&t[..t.len() - 1], 7 * 86_400),
        _ => return Err(format!("`{s}` is not an age like 30d, 12h, 90m, 45s or 2w")),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not an age like 30d, 12h, 90m, 45s or 2w"))?;
    Ok(std::time::Duration::from_secs(n.saturating_mul(mult)))
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage like 20%"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("{s}: a percentage is between 0 and 100"));
    }
    Ok(p)
}

fn default_index(store: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let canonical = if store.starts_with("s3://") {
        store.trim_end_matches('/').to_owned()
    } else {
        std::fs::canonicalize(store)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| store.to_owned())
    };
    let digest = hex::encode(&Sha256::digest(canonical.as_bytes())[..8]);
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cbfs").join("index").join(digest)
}

/// Writes to stdout; a closed pipe (`cbfs-tier ls --json | head`) ends the
/// command quietly instead of a panic.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("cbfs-tier: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// A progress bar on stderr (if it is a terminal), or nothing with --json.
fn observer(as_json: bool) -> Arc<dyn cbfs_tiering::Observer> {
    if as_json {
        Arc::new(Quiet)
    } else {
        Arc::new(progress::Progress::new(true))
    }
}

/// The agent of a writing command (`out`, `rekey`), and its index folder.
fn open_writer(store: &StoreArgs, writer: WriterArgs) -> Result<(Arc<Agent>, PathBuf), Error> {
    let index = store
        .index
        .clone()
        .unwrap_or_else(|| default_index(&store.store));
    let agent = Agent::open(AgentOptions {
        store: &store.store,
        index: &index,
        keyset: Some(&writer.keyset),
        writer_key: writer.writer_key,
    })?;
    Ok((agent, index))
}

fn json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    out(&text);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let as_json = cli.json;
    match cli.command {
        Command::Out {
            source,
            store,
            writer,
            scopes,
            plain,
            min_live,
            storing,
        } => {
            let (agent, _) = open_writer(&store, writer)?;
            let mut opts = OutOptions::new(source.clone(), ScopeRules::new(scopes));
            opts.plain = plain;
            opts.min_live = min_live;
            storing.apply(&mut opts);
            let observer = observer(as_json);
            let report = agent
                .tier_out(opts, observer)
                .await
                .with_context(|| format!("tiering out {}", source.display()))?;
            if as_json {
                json(&report)?;
            } else {
                let mut s = format!(
                    "{} entries scanned: {} stored, {} unchanged, {} deleted, {} skipped\n",
                    report.scanned,
                    report.files,
                    report.unchanged,
                    report.deleted,
                    report.skipped.len()
                );
                if report.repacked > 0 {
                    s.push_str(&format!(
                        "{} of them stored again unchanged, to free sparse packs for the collector\n",
                        report.repacked
                    ));
                }
                s.push_str(&format!(
                    "{} bytes read, {} bytes stored in {} new segments, {:.2} s\n",
                    report.bytes_read, report.bytes_stored, report.new_segments, report.seconds
                ));
                match (&report.snapshot, report.sequence) {
                    (Some(id), Some(seq)) => s.push_str(&format!("snapshot {seq} ({id})\n")),
                    _ => s.push_str("nothing changed: no new snapshot\n"),
                }
                out(&s);
                for p in &report.skipped {
                    eprintln!("skipped {}: {} (retried next run)", p.path, p.reason);
                }
            }
            Ok(if report.skipped.is_empty() { 0 } else { 6 })
        }
        Command::Snapshots { store, trust } => {
            let index = store.index.unwrap_or_else(|| default_index(&store.store));
            let (snaps, ignored) =
                cbfs_tiering::list_snapshots(&store.store, trust.options(Some(index))).await?;
            if as_json {
                json(&serde_json::json!({ "snapshots": snaps, "ignored": ignored }))?;
            } else if snaps.is_empty() {
                out(&format!("no trusted snapshots in {}\n", store.store));
            } else {
                let mut s = format!(
                    "{:>6}  {:<32}  {:<20}  {:>8}  writer\n",
                    "seq", "id", "created", "entries"
                );
                for snap in &snaps {
                    s.push_str(&format!(
                        "{:>6}  {:<32}  {:<20}  {:>8}  {} ({})\n",
                        snap.sequence,
                        snap.id,
                        snap.created,
                        snap.entries,
                        snap.writer_name.as_deref().unwrap_or("accepted by name"),
                        snap.writer
                    ));
                }
                out(&s);
            }
            for i in &ignored {
                eprintln!("cbfs-tier: ignored {}: {}", i.object, i.reason);
            }
            Ok(0)
        }
        Command::Push {
            source,
            gateway,
            fs,
            prefix,
            identity,
            user,
        } => {
            let seed = identity.load(&cbfs_keysource::unlock_from_env())?;
            let secret = cbfs_core::UserSecret::from_seed(seed);
            let name = cbfs_tiering::gateway::user_name(&user, &secret)?;
            let client = cbfs_tiering::gateway::GatewayClient::new(
                &cbfs_tiering::gateway::gateway_store(&gateway, &fs),
                cbfs_client::GatewayAuth::new(name, secret.signer()),
                None,
            )?;
            let input = if source.as_os_str() == "-" {
                cbfs_tiering::gateway::PushInput::Tar(Box::new(std::io::stdin()))
            } else {
                cbfs_tiering::gateway::PushInput::Dir(source)
            };
            let record = cbfs_tiering::gateway::push(&client, &prefix, input).await?;
            if as_json {
                json(&record)?;
            } else {
                let r = &record["report"];
                eprintln!(
                    "pushed to {}:{prefix}: job {} {}; {} files stored, {} unchanged, snapshot {}",
                    fs,
                    record["id"].as_str().unwrap_or("?"),
                    record["state"].as_str().unwrap_or("?"),
                    r["files"],
                    r["unchanged"],
                    r["snapshot"].as_str().unwrap_or("(none: nothing changed)")
                );
            }
            Ok(0)
        }
        Command::Restore {
            store,
            identity,
            node,
            user,
            node_timeout,
            trust,
            snapshot,
            index,
            jobs,
            path,
            dest,
        } => {
            let index = index.or_else(|| Some(default_index(&store)));
            let observer = observer(as_json);
            let report = cbfs_tiering::restore(
                RestoreRequest {
                    store,
                    trust: trust.options(index),
                    identity,
                    snapshot,
                    path,
                    dest,
                    threads: jobs.map(usize::from),
                    nodes: node,
                    user,
                    node_timeout: std::time::Duration::from_secs(node_timeout.max(1)),
                },
                observer,
            )
            .await?;
            if as_json {
                json(&report)?;
            } else {
                eprint!("{}", report.human());
            }
            Ok(report.exit_code())
        }
        Command::Verify {
            store,
            trust,
            index,
            read_data,
            identity,
        } => {
            let index = index.or_else(|| Some(default_index(&store)));
            let report = cbfs_tiering::verify(VerifyRequest {
                store,
                trust: trust.options(index),
                identity,
                read_data,
            })
            .await?;
            if as_json {
                json(&report)?;
            } else {
                let mut s = format!(
                    "{} snapshots (newest {}), {} segments, {} members, {} lockboxes checked; {} unreferenced segments{}\n",
                    report.snapshots,
                    report
                        .newest
                        .map_or_else(|| "none".to_owned(), |n| n.to_string()),
                    report.segments,
                    report.members,
                    report.lockboxes,
                    report.unreferenced_segments,
                    if read_data {
                        format!("; {} entries decrypted", report.decrypted)
                    } else {
                        String::new()
                    }
                );
                s.push_str(&format!(
                    "{} bytes of segments, {} live, {} reclaimable by cbfs-gc; {} members read where garbage collection moved them; {} forgotten snapshots still stored; {} collection records pending\n",
                    report.segment_bytes,
                    report.live_bytes,
                    report.reclaimable_bytes,
                    report.relocated_members,
                    report.forgotten_snapshots,
                    report.pending_collections.len()
                ));
                for p in &report.problems {
                    s.push_str(&format!("PROBLEM {}: {}\n", p.object, p.error));
                }
                for n in &report.not_proven {
                    s.push_str(&format!("not proven: {n}\n"));
                }
                if report.problems.is_empty() {
                    s.push_str("the store verified\n");
                }
                out(&s);
            }
            Ok(if report.problems.is_empty() { 0 } else { 4 })
        }
        Command::Status { tree, store, paths } => {
            let index = store.index.unwrap_or_else(|| default_index(&store.store));
            let req = hsm::StatusRequest { tree, index, paths };
            let report = tokio::task::spawn_blocking(move || hsm::status(&req)).await??;
            if as_json {
                json(&report)?;
            } else {
                let mut s = String::new();
                for f in &report.files {
                    let mut flags = Vec::new();
                    if f.no_release {
                        flags.push("no-release");
                    }
                    if f.no_archive {
                        flags.push("no-archive");
                    }
                    s.push_str(&format!(
                        "{:<9} {:<21} {:>14} {:>14}  {}{}\n",
                        f.state.name(),
                        if flags.is_empty() {
                            "-".to_owned()
                        } else {
                            flags.join(",")
                        },
                        f.size,
                        f.allocated,
                        f.path,
                        f.note
                            .as_ref()
                            .map(|n| format!("  ({n})"))
                            .unwrap_or_default()
                    ));
                    if s.len() > 1 << 16 {
                        out(&std::mem::take(&mut s));
                    }
                }
                for (state, t) in &report.totals {
                    s.push_str(&format!(
                        "total {:<9} {} files, {} bytes, {} bytes on disk\n",
                        state.name(),
                        t.files,
                        t.bytes,
                        t.allocated
                    ));
                }
                out(&s);
            }
            for p in &report.problems {
                eprintln!("cbfs-tier: {p}");
            }
            Ok(if report.problems.is_empty() { 0 } else { 6 })
        }
        Command::Release {
            tree,
            store,
            keyset,
            older_than,
            atime,
            larger_than,
            include,
            exclude,
            until_free,
            dry_run,
            #[cfg(feature = "crash-points")]
            crash_at,
            paths,
        } => {
            let index = store
                .index
                .clone()
                .unwrap_or_else(|| default_index(&store.store));
            let agent = Agent::open(AgentOptions {
                store: &store.store,
                index: &index,
                keyset: keyset.as_deref(),
                writer_key: None,
            })?;
            #[allow(unused_mut)]
            let mut opts = ReleaseOptions {
                tree,
                paths,
                older_than,
                by_atime: atime,
                larger_than,
                include,
                exclude,
                until_free,
                dry_run,
                crash_at: None,
            };
            #[cfg(feature = "crash-points")]
            {
                opts.crash_at = crash_at;
            }
            let report = agent.release(opts).await?;
            if as_json {
                json(&report)?;
            } else {
                let mut s = String::new();
                for r in &report.released {
                    s.push_str(&format!(
                        "{} {} ({} bytes freed): {}\n",
                        if report.dry_run {
                            "would release"
                        } else {
                            "released"
                        },
                        r.path,
                        r.freed,
                        r.reason
                    ));
                }
                s.push_str(&format!(
                    "{} {} of {} archived files considered, {} bytes freed{}\n",
                    if report.dry_run {
                        "would release"
                    } else {
                        "released"
                    },
                    report.released.len(),
                    report.considered,
                    report.freed,
                    match (report.free_before, report.free_after) {
                        (Some(b), Some(a)) => format!("; free {b:.1}% -> {a:.1}%"),
                        (Some(b), None) => format!("; free {b:.1}%"),
                        _ => String::new(),
                    }
                ));
                if report.stub_bytes > 0 {
                    s.push_str(&format!(
                        "the stubs still take {} bytes: a stub record that does not fit in its \
                         inode takes a block of its own (on ext4, `mkfs.ext4 -I 512` makes inodes \
                         that hold one)\n",
                        report.stub_bytes
                    ));
                }
                out(&s);
                for k in &report.kept {
                    eprintln!("kept {}: {}", k.path, k.reason);
                }
            }
            Ok(if report.kept.is_empty() { 0 } else { 6 })
        }
        Command::Recall {
            tree,
            store,
            who,
            trust,
            paths,
        } => {
            let index = store
                .index
                .clone()
                .unwrap_or_else(|| default_index(&store.store));
            let opts = hsm::RecallerOptions {
                store: store.store.clone(),
                index: index.clone(),
                trust: trust.options(Some(index.clone())),
                store_timeout: who.store_timeout(),
                identity: who.identity(),
            };
            let rt = tokio::runtime::Handle::current();
            let results = tokio::task::spawn_blocking(
                move || -> anyhow::Result<Vec<(String, hsm::PathRecall)>> {
                    // The walk goes on while the store's trust is checked
                    // (a remote store answers in its own time).
                    let (files, recaller) = std::thread::scope(|s| {
                        let walk = s.spawn(|| -> anyhow::Result<Vec<hsm::RecallTarget>> {
                            let mut files = Vec::new();
                            for rel in hsm::relative_paths_of(&tree, &paths)? {
                                files.extend(hsm::recall_targets(&tree, &rel));
                            }
                            Ok(files)
                        });
                        let recaller = hsm::open_recaller(&opts, rt);
                        (walk.join().expect("the walk"), recaller)
                    });
                    let files = files?;
                    let recaller = recaller?;
                    let outcomes = hsm::recall_targets_in(&recaller, &tree, &files)?;
                    let results: Vec<(String, hsm::PathRecall)> = files
                        .iter()
                        .zip(outcomes)
                        .map(|(f, r)| {
                            let name = tree.join(std::ffi::OsStr::from_bytes(&f.rel));
                            (name.display().to_string(), r)
                        })
                        .collect();
                    // The recalls are done: a journal not taken in now is
                    // taken in by the next holder of the index.
                    if let Err(e) = hsm::absorb_if_grown(&opts.index) {
                        tracing::warn!("cannot take the recall journal into the index: {e}");
                    }
                    Ok(results)
                },
            )
            .await??;
            // A bad stored copy first, then an unreachable store, then a refusal.
            let failed = |want: fn(&hsm::RecallFailure) -> bool| {
                results
                    .iter()
                    .any(|(_, r)| matches!(r, hsm::PathRecall::Failed(f) if want(f)))
            };
            let code = if failed(|f| matches!(f, hsm::RecallFailure::Lost(_))) {
                4
            } else if failed(|f| matches!(f, hsm::RecallFailure::Unavailable(_))) {
                5
            } else if failed(|_| true) {
                1
            } else {
                0
            };
            if !as_json {
                // A line per file, written in one go (a tree holds
                // thousands).
                use std::io::Write as _;
                let mut err = std::io::BufWriter::new(std::io::stderr().lock());
                for (name, r) in &results {
                    let _ = match r {
                        hsm::PathRecall::Recalled(d) => writeln!(
                            err,
                            "recalled {name}: {} bytes from snapshot {} in {:.3} s",
                            d.bytes, d.snapshot, d.seconds
                        ),
                        hsm::PathRecall::Resident => {
                            writeln!(err, "{name}: resident (not released)")
                        }
                        hsm::PathRecall::Gone => {
                            writeln!(err, "{name}: gone (removed or renamed as the recall began)")
                        }
                        hsm::PathRecall::FilledOnOpen => {
                            writeln!(
                                err,
                                "recalled {name}: filled by the time this recall opened it \
                                 (by the fault-in handler watching it, or another recall)"
                            )
                        }
                        hsm::PathRecall::Failed(f) => writeln!(
                            err,
                            "cbfs-tier: cannot recall {name}: {f}; the stub is as it was"
                        ),
                    };
                }
                let _ = err.flush();
            }
            if as_json {
                let list: Vec<_> = results
                    .iter()
                    .map(|(p, r)| serde_json::json!({ "path": p, "result": r }))
                    .collect();
                json(&serde_json::json!({ "files": list }))?;
            }
            Ok(code)
        }
        Command::Watch {
            tree,
            store,
            who,
            trust,
            workers,
            no_guard,
        } => {
            if let Err(e) = cbfs_tiering::faultin::check_support(&tree) {
                eprintln!("cbfs-tier: {e}");
                return Ok(8);
            }
            let handover = match cbfs_tiering::faultin::handed_down()? {
                Some(h) => h,
                None if no_guard => cbfs_tiering::faultin::Handover::unguarded()?,
                None => {
                    // This process becomes the guard; the handler is this
                    // program again, as its child.
                    let code = tokio::task::spawn_blocking(|| {
                        let opts = cbfs_tiering::faultin::GuardOptions::this_program()?;
                        cbfs_tiering::faultin::run_guard(&opts)
                    })
                    .await??;
                    return Ok(u8::try_from(code).unwrap_or(1));
                }
            };
            let index = store
                .index
                .clone()
                .unwrap_or_else(|| default_index(&store.store));
            let opts = hsm::RecallerOptions {
                store: store.store.clone(),
                index: index.clone(),
                trust: trust.options(Some(index)),
                store_timeout: who.store_timeout(),
                identity: who.identity(),
            };
            let rt = tokio::runtime::Handle::current();
            let recaller =
                tokio::task::spawn_blocking(move || hsm::open_recaller(&opts, rt)).await??;
            let stop = async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return std::future::pending().await;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            };
            let handler = cbfs_tiering::faultin::serve(
                &handover,
                &[tree.as_path()],
                vec![Arc::new(recaller)],
                workers,
                stop,
            )
            .await?;
            let st = handler.stats();
            eprintln!(
                "cbfs-tier watch: stopped; {} files recalled ({} bytes), {} recalls failed",
                st.recalled, st.bytes, st.failed
            );
            Ok(0)
        }
        Command::Flag {
            tree,
            store,
            no_release,
            release_ok,
            no_archive,
            archive_ok,
            paths,
        } => {
            let index = store
                .index
                .clone()
                .unwrap_or_else(|| default_index(&store.store));
            let agent = Agent::open(AgentOptions {
                store: &store.store,
                index: &index,
                keyset: None,
                writer_key: None,
            })?;
            let rels = hsm::relative_paths_of(&tree, &paths)?;
            let pick = |set: bool, clear: bool| match (set, clear) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            agent.set_flags(
                &rels,
                pick(no_release, release_ok),
                pick(no_archive, archive_ok),
            )?;
            Ok(0)
        }
        Command::Forget {
            store,
            trust,
            writer_key,
            admin,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within,
            keep_snapshot,
            dry_run,
        } => {
            let index = store.index.unwrap_or_else(|| default_index(&store.store));
            let signer = match (admin, writer_key) {
                (Some(a), _) => cbfs_tiering::ForgetSigner::Admin(a),
                (None, Some(w)) => cbfs_tiering::ForgetSigner::Writer(w),
                (None, None) => cbfs_tiering::ForgetSigner::Writer(
                    cbfs_tiering::default_writer_key(&index).ok_or_else(|| {
                        Error::Usage(format!(
                            "no key to sign with: give the agent's --writer-key, or --admin (the index {} has no writer.key)",
                            index.display()
                        ))
                    })?,
                ),
            };
            let policy = cbfs_tiering::KeepPolicy {
                last: keep_last,
                hourly: keep_hourly,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
                yearly: keep_yearly,
                within: keep_within,
                snapshots: keep_snapshot,
            };
            let report = cbfs_tiering::forget(cbfs_tiering::ForgetRequest {
                store: store.store,
                trust: trust.options(Some(index)),
                signer,
                policy,
                dry_run,
            })
            .await?;
            if as_json {
                json(&report)?;
            } else {
                let mut s = format!("policy: {}\n", report.policy);
                for e in &report.snapshots {
                    s.push_str(&format!(
                        "{:>6}  {:<32}  {:<20}  {:<6}  {}\n",
                        e.sequence,
                        e.id,
                        e.created,
                        if e.keep { "keep" } else { "forget" },
                        e.reasons.join(", ")
                    ));
                }
                s.push_str(&format!(
                    "{} kept, {} {}forgotten",
                    report.kept,
                    report.forgotten,
                    if report.dry_run { "would be " } else { "" }
                ));
                match &report.record {
                    Some(r) => s.push_str(&format!("; retention record {r}\n")),
                    None if report.dry_run => s.push_str(" (dry run: nothing written)\n"),
                    None => s.push_str(": nothing to write\n"),
                }
                out(&s);
            }
            Ok(0)
        }
        Command::Rekey {
            store,
            writer,
            admin,
            scope,
            since,
            forget_older,
            tree,
            storing,
        } => {
            let keyset = writer.keyset.clone();
            let (agent, index) = open_writer(&store, writer)?;
            let mut opts = OutOptions::new(index, ScopeRules::default());
            storing.apply(&mut opts);
            let observer = observer(as_json);
            let req = cbfs_tiering::RekeyRequest {
                scope: scope.clone(),
                admin,
                since,
                forget_older,
                store: store.store.clone(),
                keyset,
                tree,
            };
            let report = agent
                .rekey(opts, req, observer)
                .await
                .with_context(|| format!("re-keying scope {scope}"))?;
            if as_json {
                json(&report)?;
            } else {
                let mut s = format!(
                    "scope {}: {} entries re-keyed ({} by an earlier run, {} before --since left), {} verified\n",
                    report.scope,
                    report.rekeyed,
                    report.already,
                    report.before_since,
                    report.verified
                );
                s.push_str(&format!(
                    "{} bytes re-encrypted, {} bytes stored in {} new segments, {:.2} s\n",
                    report.bytes, report.bytes_stored, report.new_segments, report.seconds
                ));
                match (&report.snapshot, report.sequence) {
                    (Some(id), Some(seq)) => {
                        s.push_str(&format!("snapshot {seq} ({id}) names the new copies\n"))
                    }
                    _ => s.push_str(&format!(
                        "the newest snapshot holds nothing of scope {} (before --since): nothing to re-key\n",
                        report.scope
                    )),
                }
                if report.older_snapshots.is_empty() {
                    s.push_str(&format!(
                        "{} old members: no kept snapshot names them any more (cbfs-gc collects them)\n",
                        report.old_members
                    ));
                } else {
                    let seqs: Vec<String> =
                        report.older_snapshots.iter().map(u64::to_string).collect();
                    match &report.forgotten {
                        Some(f) => s.push_str(&format!(
                            "{} old members; older snapshots {} forgotten by retention record {} (cbfs-gc collects them)\n",
                            report.old_members,
                            seqs.join(", "),
                            f.record.as_deref().unwrap_or("(none)")
                        )),
                        None => s.push_str(&format!(
                            "{} old members, still named by older snapshots {}: they stay in the store under the old keys \
                             until those are forgotten (--forget-older, or cbfs-tier forget --admin)\n",
                            report.old_members,
                            seqs.join(", ")
                        )),
                    }
                }
                if report.stubs_updated > 0 {
                    s.push_str(&format!(
                        "{} stubs of released files now name the new copies\n",
                        report.stubs_updated
                    ));
                }
                out(&s);
                for w in &report.warnings {
                    eprintln!("cbfs-tier: warning: {w}");
                }
            }
            Ok(0)
        }
        Command::Ls {
            store,
            trust,
            snapshot,
            path,
        } => {
            let index = store.index.unwrap_or_else(|| default_index(&store.store));
            let (entries, ignored) = cbfs_tiering::list_entries(
                &store.store,
                trust.options(Some(index.clone())),
                &index,
                snapshot.as_deref(),
                path.as_deref(),
            )
            .await?;
            if as_json {
                json(&entries)?;
            } else {
                let mut s = String::new();
                for e in &entries {
                    s.push_str(&format!(
                        "{:<8} {:04o} {:>12} {:>12} {:<12} {}\n",
                        e.kind, e.mode, e.size, e.mtime, e.scope, e.path
                    ));
                    if s.len() > 1 << 16 {
                        out(&std::mem::take(&mut s));
                    }
                }
                out(&s);
            }
            for i in &ignored {
                eprintln!("cbfs-tier: ignored {}: {}", i.object, i.reason);
            }
            Ok(0)
        }
    }
}

fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return match e {
                Error::Usage(_) => 2,
                e if e.is_transient() => 5,
                e if e.is_resource() => 7,
                Error::Key(_) => 3,
                e if e.is_verification() => 4,
                _ => 1,
            };
        }
    }
    1
}

/// Raises the soft limit on open descriptors to the hard one: a recall
/// holds a pass of stubs open at once (it sizes its passes by the limit).
fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

fn main() -> ExitCode {
    let cli: Cli = cbfs_cli::parse(Some("CBFS_TIER_CONFIG"));
    init_logging(cli.verbose);
    raise_descriptor_limit();
    let as_json = cli.json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cbfs-tier: error: cannot start the I/O runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = exit_code(&err);
            if as_json {
                out(&format!(
                    "{}\n",
                    serde_json::json!({ "error": cbfs_core::error_chain(err.as_ref()), "exit_code": code })
                ));
            }
            eprintln!("cbfs-tier: error: {}", cbfs_core::error_chain(err.as_ref()));
            ExitCode::from(code)
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,cbfs_tiering={level},cbfs_store={level},cbfs_core={level},cbfs_localkeys={level},cbfs_keysource={level},cbfs_restore={level},cbfs_wire={level}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
