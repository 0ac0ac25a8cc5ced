//! Benchmarks of the hot paths of `cbfs-format`.
//!
//! - `member/*`: one member payload, both ways: zstd level 3 (what `cbfs-tier` writes)
//!   and age's chunked ChaCha20-Poly1305 ([`write_member`] / [`open_member`]), for
//!   64 KiB and 4 MiB of content, text-like (compresses) and random (does not).
//!   Throughput is content bytes.
//! - `segment/*`: 1,000 members of 16 KiB packed into one segment with
//!   [`SegmentWriter`] (encrypted, and plain for comparison: no zstd, no age), then
//!   read back with [`SegmentReader`], opening every member. Throughput is content bytes.
//! - `lockbox/*`: [`Lockbox::seal`], [`Lockbox::open`] with the scope key, one
//!   delegation node's `umbral_pre::reencrypt`, and [`Lockbox::open_reencrypted`]
//!   with 2 of 3 capsule fragments. Throughput is lockboxes.
//! - `manifest/*`: [`ManifestBuilder`] and `sign` (sort, Merkle root, Umbral
//!   signature) for 20,000 and 100,000 entries, [`merkle_root`] alone, and
//!   [`Manifest::from_bytes`] (parse and verify). Throughput is entries.
//!
//! Everything runs in memory: the figures are CPU cost, not disk or network. Inputs
//! come from seeded generators, and every path is checked to round-trip once before
//! it is timed.
//!
//! Run all of them with `cargo bench -p cbfs-format`; one group with
//! `cargo bench -p cbfs-format -- lockbox`; a short run with
//! `cargo bench -p cbfs-format -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::io::{Cursor, Read};

use cbfs_format::umbral_pre::{self, SecretKey, Signer};
use cbfs_format::{
    DEFAULT_ZSTD_LEVEL, EntryKind, GroupKey, Lockbox, Manifest, ManifestBuilder, ManifestEntry,
    MemberId, Metadata, SegmentId, SegmentMode, SegmentReader, SegmentWriter, SnapshotId, Summary,
    Timestamp, merkle_root, open_member, write_member,
};
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Random bytes: zstd finds nothing to compress.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

/// Log-like text with random fields: compresses about as well as typical text files.
fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    const HOSTS: [&str; 4] = ["atlas", "borealis", "cygnus", "draco"];
    const LEVELS: [&str; 4] = ["INFO", "INFO", "WARN", "DEBUG"];
    const PATHS: [&str; 5] = [
        "/api/v1/objects",
        "/api/v1/segments",
        "/healthz",
        "/api/v1/snapshots/latest",
        "/static/app.js",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len + 256);
    let mut t: u64 = 1_700_000_000;
    while out.len() < len {
        t += rng.gen_range(0..3);
        let line = format!(
            "{t} {host} {level} req={req:016x} {path} status={status} bytes={bytes} ms={ms}\n",
            host = HOSTS[rng.gen_range(0..HOSTS.len())],
            level = LEVELS[rng.gen_range(0..LEVELS.len())],
            req = rng.r#gen::<u64>(),
            path = PATHS[rng.gen_range(0..PATHS.len())],
            status = if rng.gen_ratio(1, 20) { 404 } else { 200 },
            bytes = rng.gen_range(0..1_000_000u32),
            ms = rng.gen_range(0..2_000u32),
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(len);
    out
}

/// Metadata of a regular file, as a tiering run would record it.
fn file_meta(path: &str, size: usize) -> Metadata {
    let mut meta = Metadata::new(path, EntryKind::File);
    meta.size = size as u64;
    meta.mode = 0o640;
    meta.uid = 1000;
    meta.gid = 1000;
    meta.uname = "alice".into();
    meta.gname = "staff".into();
    meta.mtime = Timestamp::new(1_700_000_000, 250_000_000);
    meta
}

/// A group for slow benchmarks: few samples, each the same number of iterations.
fn slow_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group
}

fn member(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let key = GroupKey::generate_with_rng(&mut rng);
    let id = MemberId::random_with_rng(&mut rng);
    let mut group = c.benchmark_group("member");
    for (size, size_name) in [(64 * KIB, "64KiB"), (4 * MIB, "4MiB")] {
        if size >= MIB {
            group.sample_size(10);
            group.sampling_mode(SamplingMode::Flat);
        }
        for (data, data_name) in [
            (text_bytes(2, size), "text"),
            (random_bytes(3, size), "random"),
        ] {
            let meta = file_meta("projects/apollo/logs/service.log", size);
            let payload =
                write_member(Vec::new(), id, &key, &meta, &data[..], DEFAULT_ZSTD_LEVEL).unwrap();
            let mut content = Vec::with_capacity(size);
            let (opened, mut reader) = open_member(id, &payload[..], &key).unwrap();
            reader.read_to_end(&mut content).unwrap();
            assert_eq!(opened, meta);
            assert!(content == data, "member content does not round-trip");

            group.throughput(Throughput::Bytes(size as u64));
            let label = format!("{size_name}/{data_name}");
            group.bench_function(format!("encrypt/{label}"), |b| {
                b.iter(|| {
                    let out = Vec::with_capacity(payload.len());
                    let out = write_member(
                        out,
                        id,
                        &key,
                        &meta,
                        black_box(&data[..]),
                        DEFAULT_ZSTD_LEVEL,
                    )
                    .unwrap();
                    black_box(out)
                })
            });
            group.bench_function(format!("decrypt/{label}"), |b| {
                b.iter(|| {
                    content.clear();
                    let (meta, mut reader) =
                        open_member(id, black_box(&payload[..]), &key).unwrap();
                    reader.read_to_end(&mut content).unwrap();
                    black_box((meta, content.len()))
                })
            });
        }
    }
    group.finish();
}

const SEGMENT_MEMBERS: usize = 1_000;
const SEGMENT_MEMBER_LEN: usize = 16 * KIB;

/// Packs the benchmark's members into one segment.
fn pack(
    segment: SegmentId,
    mode: SegmentMode,
    key: &GroupKey,
    members: &[(MemberId, Metadata)],
    corpus: &[u8],
    capacity: usize,
) -> (Vec<u8>, Summary) {
    let spool = Cursor::new(Vec::with_capacity(capacity));
    let mut writer = SegmentWriter::new(spool, segment, mode).unwrap();
    for (content, (id, meta)) in corpus.chunks(SEGMENT_MEMBER_LEN).zip(members) {
        match mode {
            SegmentMode::Encrypted => writer.append_encrypted(*id, key, meta, content),
            SegmentMode::Plain => writer.append_plain(*id, meta, content),
        }
        .unwrap();
    }
    let (spool, summary) = writer.finish().unwrap();
    (spool.into_inner(), summary)
}

/// Reads a segment back, opening every member; returns the content bytes read.
fn unpack(segment: &[u8], key: &GroupKey, content: &mut Vec<u8>) -> usize {
    let mut reader = SegmentReader::new(segment).unwrap();
    let mut total = 0;
    while let Some(member) = reader.next_member().unwrap() {
        let (_, mut data) = member.open(key).unwrap();
        content.clear();
        data.read_to_end(content).unwrap();
        total += content.len();
    }
    total
}

fn segment(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(4);
    let key = GroupKey::generate_with_rng(&mut rng);
    let segment_id = SegmentId::random_with_rng(&mut rng);
    let corpus = text_bytes(5, SEGMENT_MEMBERS * SEGMENT_MEMBER_LEN);
    let members: Vec<(MemberId, Metadata)> = (0..SEGMENT_MEMBERS)
        .map(|i| {
            let path = format!("projects/apollo/dir{:02}/file{i:04}.log", i % 50);
            (
                MemberId::random_with_rng(&mut rng),
                file_meta(&path, SEGMENT_MEMBER_LEN),
            )
        })
        .collect();

    let mut group = slow_group(c, "segment");
    group.throughput(Throughput::Bytes(corpus.len() as u64));
    for (mode, mode_name) in [
        (SegmentMode::Encrypted, "encrypted"),
        (SegmentMode::Plain, "plain"),
    ] {
        let (bytes, summary) = pack(segment_id, mode, &key, &members, &corpus, 0);
        summary.verify_segment(&bytes[..]).unwrap();
        assert_eq!(summary.entries().len(), SEGMENT_MEMBERS);
        let mut reader = SegmentReader::new(&bytes[..]).unwrap();
        let mut expected = corpus.chunks(SEGMENT_MEMBER_LEN).zip(&members);
        while let Some(member) = reader.next_member().unwrap() {
            let (content, (_, meta)) = expected.next().unwrap();
            let (opened, mut data) = member.open(&key).unwrap();
            let mut back = Vec::new();
            data.read_to_end(&mut back).unwrap();
            assert_eq!(&opened.path, &meta.path);
            assert!(back == content, "segment member does not round-trip");
        }
        assert!(expected.next().is_none(), "segment lost members");

        let capacity = bytes.len();
        group.bench_function(format!("write/{SEGMENT_MEMBERS}x16KiB/{mode_name}"), |b| {
            b.iter(|| {
                black_box(pack(
                    segment_id,
                    mode,
                    &key,
                    &members,
                    black_box(&corpus),
                    capacity,
                ))
            })
        });
        let mut content = Vec::with_capacity(SEGMENT_MEMBER_LEN);
        group.bench_function(format!("read/{SEGMENT_MEMBERS}x16KiB/{mode_name}"), |b| {
            b.iter(|| black_box(unpack(black_box(&bytes), &key, &mut content)))
        });
    }
    group.finish();
}

fn lockbox(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(6);
    let scope_sk = SecretKey::random_with_rng(&mut rng);
    let scope_pk = scope_sk.public_key();
    let user_sk = SecretKey::random_with_rng(&mut rng);
    let signer = Signer::new(SecretKey::random_with_rng(&mut rng));
    let segment_id = SegmentId::random_with_rng(&mut rng);
    let scope = "projects/apollo";

    let (lockbox, key) = Lockbox::seal(scope, &scope_pk, segment_id).unwrap();
    let lockbox = Lockbox::from_bytes(&lockbox.to_bytes()).unwrap();
    let kfrags =
        umbral_pre::generate_kfrags(&scope_sk, &user_sk.public_key(), &signer, 2, 3, true, true);
    let cfrags: Vec<_> = kfrags
        .iter()
        .take(2)
        .map(|k| umbral_pre::reencrypt(lockbox.capsule(), k.clone()))
        .collect();
    let opened = lockbox.open(&scope_sk).unwrap();
    assert_eq!(opened.expose_secret(), key.expose_secret());
    let opened = lockbox
        .open_reencrypted(&user_sk, &scope_pk, cfrags.clone())
        .unwrap();
    assert_eq!(opened.expose_secret(), key.expose_secret());

    let mut group = c.benchmark_group("lockbox");
    group.sample_size(50);
    group.throughput(Throughput::Elements(1));
    group.bench_function("seal", |b| {
        b.iter(|| black_box(Lockbox::seal(scope, black_box(&scope_pk), segment_id).unwrap()))
    });
    group.bench_function("open", |b| {
        b.iter(|| black_box(black_box(&lockbox).open(&scope_sk).unwrap()))
    });
    group.bench_function("reencrypt_one_share", |b| {
        b.iter(|| {
            black_box(umbral_pre::reencrypt(
                black_box(lockbox.capsule()),
                kfrags[0].clone(),
            ))
        })
    });
    group.bench_function("open_reencrypted_2_of_3", |b| {
        b.iter(|| {
            black_box(
                black_box(&lockbox)
                    .open_reencrypted(&user_sk, &scope_pk, cfrags.iter().cloned())
                    .unwrap(),
            )
        })
    });
    group.finish();
}

/// Manifest entries in no particular order, about 1,000 members per segment.
fn manifest_entries(seed: u64, count: usize) -> Vec<ManifestEntry> {
    let mut rng = StdRng::seed_from_u64(seed);
    let segments: Vec<SegmentId> = (0..count.div_ceil(1_000))
        .map(|_| SegmentId::random_with_rng(&mut rng))
        .collect();
    (0..count)
        .map(|_| {
            let mut sha256 = [0u8; 32];
            rng.fill_bytes(&mut sha256);
            ManifestEntry::single(
                segments[rng.gen_range(0..segments.len())],
                MemberId::random_with_rng(&mut rng),
                sha256,
            )
        })
        .collect()
}

fn manifest(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let signer = Signer::new(SecretKey::random_with_rng(&mut rng));
    let writer = signer.verifying_key();
    let snapshot = SnapshotId::random_with_rng(&mut rng);
    let previous = Some([7u8; 32]);
    let created = 1_700_000_000;

    let mut group = slow_group(c, "manifest");
    for count in [20_000usize, 100_000] {
        let entries = manifest_entries(8 + count as u64, count);
        let build = |entries: &[ManifestEntry]| {
            let mut builder = ManifestBuilder::new(snapshot, 42, previous, created);
            builder.extend(entries.iter().copied());
            builder.sign(&signer).unwrap()
        };
        let signed = build(&entries);
        let bytes = signed.to_bytes();
        let parsed = Manifest::from_bytes(&bytes, &writer).unwrap();
        let mut sorted = entries.clone();
        sorted.sort();
        assert_eq!(parsed.entries(), &sorted[..]);
        assert_eq!(parsed.merkle_root(), &merkle_root(&sorted));
        assert_eq!(parsed.merkle_root(), signed.merkle_root());

        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(format!("build_and_sign/{count}"), |b| {
            b.iter(|| black_box(build(black_box(&entries))))
        });
        group.bench_function(format!("merkle_root/{count}"), |b| {
            b.iter(|| black_box(merkle_root(black_box(&sorted))))
        });
        group.bench_function(format!("parse_and_verify/{count}"), |b| {
            b.iter(|| black_box(Manifest::from_bytes(black_box(&bytes), &writer).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, member, segment, lockbox, manifest);
criterion_main!(benches);
