//! `cbfs-bench`: the pieces of `bench/run` that are not a peer's command.
//!
//! - `gen small|large DIR`: the datasets, from a fixed seed, the same bytes
//!   on every machine;
//! - `update DIR`: changes 1% of the files of a small set in place;
//! - `limit DIR`: the in-process ceiling of `cbfs-tier out`: one pass of
//!   zstd (the level cbfs uses) and ChaCha20-Poly1305 in 64 KiB chunks (the
//!   AEAD of the member payload) over the same bytes, on every core;
//! - `zsize DIR`: the files' bytes compressed one by one (the content a
//!   store must hold before any overhead);
//! - `reencrypt`: raw `umbral_pre::reencrypt` per second on every core;
//! - `delegation`: re-encryptions per second of one node over HTTP, in
//!   signed batches of 1,000 capsules, with per-batch latency;
//! - `lockboxes`, `reseal`: a store of lockboxes for `rotate-scope`, and the
//!   raw Umbral decrypt + encrypt it is measured against.
//!
//! Every command prints one JSON object on stdout.

#![forbid(unsafe_code)]

mod rotation;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cbfs_core::umbral_pre::{self, Capsule, SecretKey, Signer};
use cbfs_core::{KeySource, Keyset, ScopeLabel, Unlock, UserName, UserSecret};
use cbfs_wire::{Cfrags, NodeInfo, ReencryptBody};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(name = "cbfs-bench", version, about = "Benchmark tools for cbfs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a dataset from its fixed seed.
    Gen {
        /// `small` (20,000 text-like files of 1-64 KiB), `medium` (800
        /// text-like files of 160 KiB-1 MiB, each a member of its own),
        /// `large` (8 files of 100 MiB, half compressible, half random) or
        /// `million` (a million tiny files).
        kind: String,
        /// Where to (created; must not exist).
        dir: PathBuf,
        /// Scale the file count (small) or size (large) by this factor.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// Change 1% of the files of a small set in place (fixed seed).
    Update {
        /// The small set.
        dir: PathBuf,
        /// The fraction of files to change.
        #[arg(long, default_value_t = 0.01)]
        fraction: f64,
    },
    /// The in-process limit: zstd + AEAD over every file of DIR, on every core.
    Limit {
        dir: PathBuf,
        /// zstd level (cbfs-tier's default is 3).
        #[arg(long, default_value_t = 3)]
        level: i32,
    },
    /// The sum of the files' sizes after zstd at LEVEL, one by one.
    Zsize {
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        level: i32,
    },
    /// Raw `umbral_pre::reencrypt` per second, on every core.
    Reencrypt {
        /// Capsules per round.
        #[arg(long, default_value_t = 1000)]
        capsules: usize,
        /// Rounds.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// Re-encryptions per second of one delegation node over HTTP.
    Delegation(DelegationRun),
    /// Latency of a gateway's `ls`, signed requests one after another.
    Ls(LsRun),
    /// Writes COUNT lockboxes of SCOPE into a local store, for rotate-scope.
    Lockboxes {
        #[arg(long)]
        keyset: PathBuf,
        /// The administrator's key source.
        #[arg(long)]
        admin: String,
        #[arg(long)]
        scope: String,
        #[arg(long)]
        count: usize,
        /// The store directory.
        #[arg(long)]
        store: PathBuf,
    },
    /// Raw Umbral decrypt + encrypt (sealing a lockbox again) per second, on every core.
    Reseal {
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Gen { kind, dir, scale } => match kind.as_str() {
            "small" => gen_small(&dir, scale),
            "large" => gen_large(&dir, scale),
            "medium" => gen_medium(&dir, scale),
            "million" => gen_million(&dir, scale),
            other => bail!("unknown dataset `{other}`: small, medium, large or million"),
        },
        Command::Update { dir, fraction } => update(&dir, fraction),
        Command::Limit { dir, level } => limit(&dir, level),
        Command::Zsize { dir, level } => zsize(&dir, level),
        Command::Reencrypt { capsules, rounds } => reencrypt(capsules, rounds),
        Command::Delegation(run) => delegation(&run),
        Command::Ls(run) => ls(&run),
        Command::Lockboxes {
            keyset,
            admin,
            scope,
            count,
            store,
        } => rotation::lockboxes(&keyset, &admin, &scope, count, &store),
        Command::Reseal { count } => rotation::reseal(count, threads()),
    }
}

// ---------------------------------------------------------------- datasets

/// SplitMix64: a tiny generator whose output is fixed forever, so a seed
/// names the same dataset on every machine and every release.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A vocabulary of 4,096 made-up words, and text drawn from it with a
/// skewed (Zipf-like) frequency, as prose and code are.
struct Text {
    words: Vec<Vec<u8>>,
}

impl Text {
    fn new() -> Self {
        let mut rng = Rng(0x00c0_ffee);
        let letters = b"etaoinshrdlucmfwypvbgkjqxz";
        let words = (0..4096)
            .map(|_| {
                let len = 2 + rng.below(9) as usize;
                (0..len)
                    .map(|_| {
                        // Early letters are more frequent.
                        let r = rng.unit();
                        letters[((r * r) * letters.len() as f64) as usize]
                    })
                    .collect()
            })
            .collect();
        Text { words }
    }

    fn write(&self, rng: &mut Rng, len: usize, out: &mut Vec<u8>) {
        out.clear();
        let mut line = 0usize;
        while out.len() < len {
            let r = rng.unit();
            let word = &self.words[((r * r * r) * self.words.len() as f64) as usize];
            out.extend_from_slice(word);
            line += word.len() + 1;
            if line > 72 {
                out.push(b'\n');
                line = 0;
            } else {
                out.push(b' ');
            }
        }
        out.truncate(len);
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        bail!(
            "{} exists: the generator writes a new folder",
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}

/// File `i` of the small set: its path (10 x 10 x 20 folders) and size
/// (log-uniform between 1 and 64 KiB).
fn small_file(i: u64, rng: &mut Rng) -> (PathBuf, usize) {
    let path = PathBuf::from(format!(
        "d{:02}/e{:02}/f{:02}/file-{i:05}.txt",
        i % 10,
        (i / 10) % 10,
        (i / 100) % 20
    ));
    let size = (1024.0 * 64f64.powf(rng.unit())) as usize;
    (path, size)
}

const SMALL_SEED: u64 = 0x5eed_0001;
const LARGE_SEED: u64 = 0x5eed_0002;
const UPDATE_SEED: u64 = 0x5eed_0003;
const MEDIUM_SEED: u64 = 0x5eed_0004;
const SMALL_FILES: f64 = 20_000.0;

fn gen_small(dir: &Path, scale: f64) -> Result<()> {
    create_dir(dir)?;
    let text = Text::new();
    let mut rng = Rng(SMALL_SEED);
    let files = (SMALL_FILES * scale).round() as u64;
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    for i in 0..files {
        let (rel, size) = small_file(i, &mut rng);
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().expect("nested")).context("mkdir")?;
        text.write(&mut rng, size, &mut buf);
        fs::write(&path, &buf).with_context(|| format!("write {}", path.display()))?;
        bytes += size as u64;
    }
    print_json(json!({ "dataset": "small", "files": files, "bytes": bytes }));
    Ok(())
}

/// 800 text-like files (at scale 1) of 160 KiB to 1 MiB (log-uniform), 40
/// per directory: too large to share a pack, so each is a member of its
/// own and a segment holds several (what the collector copies).
fn gen_medium(dir: &Path, scale: f64) -> Result<()> {
    create_dir(dir)?;
    let text = Text::new();
    let mut rng = Rng(MEDIUM_SEED);
    let files = (800.0 * scale).round().max(1.0) as u64;
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    for i in 0..files {
        let sub = dir.join(format!("m{:02}", i / 40));
        if i % 40 == 0 {
            fs::create_dir_all(&sub).context("mkdir")?;
        }
        let size = (160.0 * 1024.0 * 6.4f64.powf(rng.unit())) as usize;
        text.write(&mut rng, size, &mut buf);
        let path = sub.join(format!("file-{i:04}.txt"));
        fs::write(&path, &buf).with_context(|| format!("write {}", path.display()))?;
        bytes += size as u64;
    }
    print_json(json!({ "dataset": "medium", "files": files, "bytes": bytes }));
    Ok(())
}

/// A tree of a million tiny files (at scale 1), a thousand per directory:
/// for the memory of a run over a tree of that size, not for speed.
fn gen_million(dir: &Path, scale: f64) -> Result<()> {
    create_dir(dir)?;
    let files = (1_000_000.0 * scale).round() as u64;
    for i in 0..files {
        let sub = dir.join(format!("d{:04}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir_all(&sub).context("mkdir")?;
        }
        fs::write(sub.join(format!("f{:04}", i % 1000)), format!("{i}\n")).context("write")?;
    }
    print_json(json!({ "dataset": "million", "files": files }));
    Ok(())
}

fn gen_large(dir: &Path, scale: f64) -> Result<()> {
    create_dir(dir)?;
    let text = Text::new();
    let mut rng = Rng(LARGE_SEED);
    let size = (100.0 * 1024.0 * 1024.0 * scale) as usize;
    let mut bytes = 0u64;
    for i in 0..8 {
        let compressible = i % 2 == 0;
        let name = if compressible { "text" } else { "random" };
        let path = dir.join(format!("large-{i}-{name}.bin"));
        let mut f = fs::File::create(&path).with_context(|| format!("{}", path.display()))?;
        let mut left = size;
        let mut buf = Vec::with_capacity(1 << 20);
        while left > 0 {
            let n = left.min(1 << 20);
            if compressible {
                text.write(&mut rng, n, &mut buf);
            } else {
                buf.resize(n, 0);
                rng.fill(&mut buf);
            }
            f.write_all(&buf)?;
            left -= n;
        }
        f.sync_all()?;
        bytes += size as u64;
    }
    print_json(json!({ "dataset": "large", "files": 8, "bytes": bytes }));
    Ok(())
}

/// Rewrites `fraction` of the `.txt` files under `dir` with new text of a
/// new size; the same files and bytes every time.
fn update(dir: &Path, fraction: f64) -> Result<()> {
    let mut files = list_files(dir)?;
    files.sort();
    let text = Text::new();
    let mut rng = Rng(UPDATE_SEED);
    let want = ((files.len() as f64) * fraction).round() as usize;
    let mut chosen = std::collections::BTreeSet::new();
    while chosen.len() < want.min(files.len()) {
        chosen.insert(rng.below(files.len() as u64) as usize);
    }
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    for &i in &chosen {
        let size = (1024.0 * 64f64.powf(rng.unit())) as usize;
        text.write(&mut rng, size, &mut buf);
        fs::write(&files[i], &buf).with_context(|| format!("{}", files[i].display()))?;
        bytes += size as u64;
    }
    print_json(json!({ "changed_files": chosen.len(), "bytes": bytes }));
    Ok(())
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry?;
        if entry.file_type().is_file() {
            out.push(entry.into_path());
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- limits

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `work` on each of `items`, split evenly over `threads` threads, and
/// returns the wall-clock time it took.
pub(crate) fn timed_on_threads<T: Sync>(
    items: &[T],
    threads: usize,
    work: impl Fn(&T) + Sync,
) -> Duration {
    let per = items.len().div_ceil(threads.max(1)).max(1);
    let started = Instant::now();
    std::thread::scope(|s| {
        for part in items.chunks(per) {
            let work = &work;
            s.spawn(move || part.iter().for_each(work));
        }
    });
    started.elapsed()
}

/// Runs `work` on every file of `files`, spread over every core, and
/// returns the sum of what it returns.
fn over_files(files: &[PathBuf], work: impl Fn(&[u8]) -> u64 + Sync) -> Result<(u64, u64)> {
    let next = AtomicUsize::new(0);
    let results: Vec<Result<(u64, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads())
            .map(|_| {
                s.spawn(|| {
                    let (mut read, mut out) = (0u64, 0u64);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = files.get(i) else { break };
                        let data = fs::read(path).with_context(|| format!("{}", path.display()))?;
                        read += data.len() as u64;
                        out += work(&data);
                    }
                    Ok((read, out))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let mut total = (0, 0);
    for r in results {
        let (a, b) = r?;
        total.0 += a;
        total.1 += b;
    }
    Ok(total)
}

fn compress(data: &[u8], level: i32) -> Vec<u8> {
    zstd::bulk::compress(data, level).expect("zstd compresses")
}

fn limit(dir: &Path, level: i32) -> Result<()> {
    let files = list_files(dir)?;
    let cipher = ChaCha20Poly1305::new(&[7u8; 32].into());
    let started = Instant::now();
    let (read, written) = over_files(&files, |data| {
        // Compress in 4 MiB windows, as a streaming compressor does, then
        // seal 64 KiB chunks in place.
        let mut out = 0u64;
        for window in data.chunks(4 << 20) {
            let mut compressed = compress(window, level);
            for (n, chunk) in compressed.chunks_mut(64 << 10).enumerate() {
                let mut nonce = [0u8; 12];
                nonce[..8].copy_from_slice(&(n as u64).to_be_bytes());
                let tag = cipher
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", chunk)
                    .expect("seal");
                out += chunk.len() as u64 + tag.len() as u64;
            }
        }
        out
    })?;
    let secs = started.elapsed().as_secs_f64();
    print_json(json!({
        "files": files.len(), "bytes_read": read, "bytes_out": written,
        "seconds": secs, "mb_per_s": read as f64 / secs / 1e6, "threads": threads(),
    }));
    Ok(())
}

fn zsize(dir: &Path, level: i32) -> Result<()> {
    let files = list_files(dir)?;
    let (read, compressed) = over_files(&files, |data| compress(data, level).len() as u64)?;
    print_json(json!({ "files": files.len(), "bytes": read, "compressed": compressed }));
    Ok(())
}

// ---------------------------------------------------------------- crypto

/// `n` capsules sealed under `pk`, as lockboxes hold them.
fn capsules_for(pk: &umbral_pre::PublicKey, n: usize) -> Result<Vec<Capsule>> {
    (0..n)
        .map(|_| {
            umbral_pre::encrypt(pk, b"0123456789abcdef0123456789abcdef")
                .map(|(c, _)| c)
                .map_err(|e| anyhow::anyhow!("encrypt: {e}"))
        })
        .collect()
}

fn reencrypt(capsules: usize, rounds: usize) -> Result<()> {
    let delegating = SecretKey::random();
    let receiving = SecretKey::random();
    let signer = Signer::new(SecretKey::random());
    let kfrag = umbral_pre::generate_kfrags(
        &delegating,
        &receiving.public_key(),
        &signer,
        2,
        3,
        true,
        true,
    )
    .into_vec()
    .remove(0);
    let caps = capsules_for(&delegating.public_key(), capsules)?;
    let total: Duration = (0..rounds)
        .map(|_| {
            timed_on_threads(&caps, threads(), |c| {
                std::hint::black_box(umbral_pre::reencrypt(c, kfrag.clone()));
            })
        })
        .sum();
    // The same, with what a node must add for each capsule: decoding it
    // from the wire (which checks that it is a valid capsule, as Umbral
    // requires before re-encrypting one), and encoding the cfrag.
    let wire: Vec<String> = caps.iter().map(cbfs_wire::encode_capsule).collect();
    let wire_total: Duration = (0..rounds)
        .map(|_| {
            timed_on_threads(&wire, threads(), |text| {
                let c = cbfs_wire::decode_capsule(text).expect("valid capsule");
                let cfrag = umbral_pre::reencrypt(&c, kfrag.clone());
                std::hint::black_box(cbfs_wire::encode_cfrag(&cfrag));
            })
        })
        .sum();
    print_json(json!({
        "capsules": capsules * rounds, "seconds": total.as_secs_f64(),
        "per_second": (capsules * rounds) as f64 / total.as_secs_f64(), "threads": threads(),
        "with_wire_per_second": (capsules * rounds) as f64 / wire_total.as_secs_f64(),
    }));
    Ok(())
}

#[derive(clap::Args)]
struct DelegationRun {
    /// The node.
    #[arg(long)]
    node: String,
    /// The file system's keyset.
    #[arg(long)]
    keyset: PathBuf,
    /// The delegated scope.
    #[arg(long)]
    scope: String,
    /// The user's name.
    #[arg(long)]
    user: String,
    /// The user's key source.
    #[arg(long)]
    identity: KeySource,
    /// Capsules per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Requests.
    #[arg(long, default_value_t = 20)]
    batches: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
}

fn delegation(run: &DelegationRun) -> Result<()> {
    let keyset = Keyset::load(&run.keyset).context("keyset")?;
    let scope = ScopeLabel::new(&run.scope)?;
    let scope_pk = *keyset.scope(&scope).context("scope not in keyset")?;
    let user_name = UserName::new(&run.user)?;
    let user = UserSecret::from_seed(run.identity.load(&Unlock::from_env())?);
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()?;
    let info: NodeInfo = http
        .get(format!("{}/v1/node", run.node))
        .send()?
        .error_for_status()?
        .json()?;
    let node_pk = cbfs_core::public_key_from_hex(&info.public_key).map_err(anyhow::Error::msg)?;
    let capsules = capsules_for(&scope_pk, run.batch)?;
    // Requests are made (and signed) before the clock starts: the load
    // client must not compete with the node for the cores.
    let bodies: Vec<Vec<u8>> = (0..run.batches + 1)
        .map(|_| {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let req = ReencryptBody::new(&node_pk, &user_name, &scope, "/", &capsules, now)
                .sign(&user.signer());
            serde_json::to_vec(&req).expect("serializes")
        })
        .collect();
    let post = |body: &Vec<u8>| -> Result<(Duration, Vec<u8>)> {
        let started = Instant::now();
        let resp = http
            .post(format!("{}/v1/reencrypt", run.node))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()?;
        let status = resp.status();
        let bytes = resp.bytes()?.to_vec();
        if !status.is_success() {
            bail!(
                "node answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok((started.elapsed(), bytes))
    };
    // One warm-up request, whose answer is checked: every cfrag verifies.
    let (_, answer) = post(&bodies[0])?;
    let answer: Cfrags = serde_json::from_slice(&answer)?;
    if answer.cfrags.len() != capsules.len() {
        bail!(
            "{} cfrags for {} capsules",
            answer.cfrags.len(),
            capsules.len()
        );
    }
    for (text, capsule) in answer.cfrags.iter().zip(&capsules).take(16) {
        let cfrag = cbfs_wire::decode_cfrag(text).map_err(anyhow::Error::msg)?;
        cfrag
            .verify(
                capsule,
                keyset.admin_verifying_key(),
                &scope_pk,
                &user.public_key(),
            )
            .map_err(|(e, _)| anyhow::anyhow!("a cfrag does not verify: {e}"))?;
    }
    let next = AtomicUsize::new(1);
    let started = Instant::now();
    let latencies: Vec<Result<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..run.concurrency.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(body) = bodies.get(i) else { break };
                        mine.push(post(body)?.0);
                    }
                    Ok(mine)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for l in latencies {
        all.extend(l?);
    }
    all.sort();
    let pct = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize].as_secs_f64();
    print_json(json!({
        "batches": all.len(), "batch": run.batch, "seconds": wall,
        "per_second": (all.len() * run.batch) as f64 / wall,
        "p50_s": pct(0.50), "p99_s": pct(0.99), "concurrency": run.concurrency,
    }));
    Ok(())
}

#[derive(clap::Args)]
struct LsRun {
    /// The file system: https://GATEWAY/v1/fs/NAME.
    #[arg(long)]
    fs: String,
    /// The path listed.
    #[arg(long, default_value = "/")]
    path: String,
    /// Who asks.
    #[arg(long)]
    user: String,
    /// Their key source.
    #[arg(long)]
    identity: KeySource,
    /// The gateway's CA certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// Requests.
    #[arg(long, default_value_t = 20)]
    requests: usize,
}

fn ls(run: &LsRun) -> Result<()> {
    let user_name = UserName::new(&run.user)?;
    let signer = UserSecret::from_seed(run.identity.load(&Unlock::from_env())?).signer();
    let ca = reqwest::Certificate::from_pem(&fs::read(&run.ca).context("CA file")?)?;
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(300))
        .build()?;
    let base = run.fs.trim_end_matches('/');
    let path_of_base = &base[base.find("/v1/").context("not a gateway file system URL")?..];
    let query: String = run
        .path
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let rest = format!("/ls?path={query}");
    let get = || -> Result<(Duration, usize)> {
        let content = cbfs_wire::gateway::content_sha256(b"");
        let nonce = cbfs_wire::gateway::new_nonce();
        let path_and_query = format!("{path_of_base}{rest}");
        let parts = cbfs_wire::gateway::SignedParts {
            method: "GET",
            path_and_query: &path_and_query,
            timestamp: time::OffsetDateTime::now_utc().unix_timestamp(),
            nonce: &nonce,
            content_sha256: &content,
        };
        let started = Instant::now();
        let resp = http
            .get(format!("{base}{rest}"))
            .header(
                "authorization",
                cbfs_wire::gateway::authorization(&user_name, &signer, &parts),
            )
            .header(cbfs_wire::gateway::CONTENT_SHA256_HEADER, content)
            .send()?;
        let status = resp.status();
        let bytes = resp.bytes()?;
        if !status.is_success() {
            bail!(
                "gateway answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&bytes)?;
        Ok((started.elapsed(), entries.len()))
    };
    // One warm-up request (the page cache, the connection).
    let (_, entries) = get()?;
    let mut all = Vec::with_capacity(run.requests);
    for _ in 0..run.requests.max(1) {
        let (took, n) = get()?;
        if n != entries {
            bail!("one listing had {entries} entries, another {n}");
        }
        all.push(took);
    }
    all.sort();
    let pct = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize].as_secs_f64();
    print_json(json!({
        "requests": all.len(), "entries": entries, "p50_s": pct(0.50), "p99_s": pct(0.99),
    }));
    Ok(())
}

fn print_json(value: serde_json::Value) {
    println!("{value}");
}
