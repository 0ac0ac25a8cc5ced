//! The rotation rows of `bench/run`: a store of lockboxes for
//! `cbfs-keytool rotate-scope` to seal again, and the raw peer, Umbral
//! `decrypt_original` + `encrypt` (what sealing one lockbox again costs) per
//! second on every core; and the whole lockbox work of a rotation in
//! process (decode, open, seal, encode, on the rotation's own path), with
//! no store.

use std::path::Path;

use anyhow::{Context as _, Result};
use cbfs_core::umbral_pre::{self, SecretKey};
use cbfs_core::{AdminSecret, KeySource, Keyset, ScopeLabel, Unlock};
use cbfs_format::{Lockbox, OpeningKey, SealingKey, SegmentId, StoredLockbox, layout};
use serde_json::json;

/// Writes `count` lockboxes of `scope` (its current key) into the local
/// store `store`, as a tier out would (one per segment), for rotate-scope.
pub fn lockboxes(
    keyset: &Path,
    admin: &str,
    scope: &str,
    count: usize,
    store: &Path,
) -> Result<()> {
    let ks = Keyset::load(keyset)?;
    let admin: KeySource = admin.parse()?;
    let admin = ks.admin_secret(AdminSecret::from_seed(admin.load(&Unlock::default())?))?;
    let label = ScopeLabel::new(scope)?;
    let version = ks.scope_version(&label).context("no such scope")?;
    let pk = *ks.scope(&label).context("no such scope")?;
    drop(admin);
    for _ in 0..count {
        let segment = SegmentId::random();
        let (lb, _) = Lockbox::seal_at(scope, version, &pk, segment)?;
        let path = store.join(layout::lockbox_at(&segment, &lb.group_id(), version));
        std::fs::create_dir_all(path.parent().expect("a lockbox has a folder"))?;
        std::fs::write(&path, lb.to_bytes())?;
    }
    println!("{}", json!({ "lockboxes": count }));
    Ok(())
}

/// Raw `decrypt_original` + `encrypt` of a 64-byte payload, per second, on
/// every core: the Umbral work of sealing one lockbox again.
pub fn reseal(count: usize, threads: usize) -> Result<()> {
    let old = SecretKey::random();
    let new = SecretKey::random().public_key();
    let sealed: Vec<_> = (0..count)
        .map(|_| umbral_pre::encrypt(&old.public_key(), &[7u8; 64]).expect("encrypt"))
        .collect();
    let secs = crate::timed_on_threads(&sealed, threads, |(capsule, ct)| {
        let plain = umbral_pre::decrypt_original(&old, capsule, ct).expect("decrypt");
        std::hint::black_box(umbral_pre::encrypt(&new, &plain).expect("encrypt"));
    })
    .as_secs_f64();
    // The same lockbox work as rotate-scope, in process and with no store:
    // decode (the capsule is checked as umbral-pre's decoding checks it),
    // open, seal, encode, on the rotation's own path.
    let segment = SegmentId::random();
    let stored: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            Lockbox::seal_at("bench", 1, &old.public_key(), segment).map(|(lb, _)| lb.to_bytes())
        })
        .collect::<Result<_, _>>()?;
    let opening = OpeningKey::new(&old);
    let sealing = SealingKey::new(&new);
    // In batches of 256, as the rotation parses them (their capsules are
    // checked together).
    let batches: Vec<&[Vec<u8>]> = stored.chunks(256).collect();
    let lockbox_secs = crate::timed_on_threads(&batches, threads, |batch| {
        for lb in StoredLockbox::from_many(batch.iter().map(Vec::as_slice)) {
            let gk = lb.expect("decode").open(&opening).expect("open");
            std::hint::black_box(
                Lockbox::sealed_bytes("bench", 2, &sealing, segment, &gk).expect("seal"),
            );
        }
    })
    .as_secs_f64();
    println!(
        "{}",
        json!({ "count": count, "seconds": secs, "per_second": count as f64 / secs, "threads": threads,
                "lockbox_per_second": count as f64 / lockbox_secs })
    );
    Ok(())
}
