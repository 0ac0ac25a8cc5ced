//! A full snapshot manifest from the store, three ways:
//!
//! - as it is, against the test vectors' writer key;
//! - signed again by that writer (so that a changed header or entry list
//!   is judged by the checks after the signature's): whatever is accepted
//!   is canonical and reads the same through the chain resolver;
//! - the input's bytes taken as entries, made into a manifest by the
//!   writer, and read back: the same entries, the same bytes.
#![no_main]

use cbfs_format::{
    Manifest, ManifestBuilder, ManifestEntry, ManifestHeader, MemberId, SegmentId, Slots,
    SnapshotId, resolve_manifest_chain,
};
use cbfs_fuzz::{WRITER_KEY_AT, resign, vectors, writer_key};
use libfuzzer_sys::fuzz_target;

fn check(m: &Manifest, bytes: &[u8]) {
    assert_eq!(m.to_bytes(), bytes);
    assert!(!m.is_delta());
    cbfs_fuzz::check_entries(m);
    let entries = m.entries();
    let head = ManifestHeader::peek(bytes).expect("an accepted manifest has a header");
    assert_eq!(head.snapshot, m.snapshot_id());
    assert_eq!(head.sequence, m.sequence());
    assert_eq!(head.previous, m.previous_hash());
    assert!(!head.delta);
    for (i, e) in entries.iter().enumerate().take(4) {
        let proof = m
            .prove(&e.segment, &e.member)
            .expect("a member has a proof");
        assert!(proof.verify(m.merkle_root(), e), "entry {i}'s proof");
    }
    let resolved = resolve_manifest_chain(&[bytes.to_vec()], &writer_key()).expect("alone");
    assert_eq!(resolved.entries(), entries);
}

fn entries_of(data: &[u8]) -> Vec<ManifestEntry> {
    data.chunks_exact(34)
        .take(64)
        .map(|c| {
            let mut segment = [0u8; 16];
            segment[15] = c[0] & 3;
            let mut member = [0u8; 16];
            member[..8].copy_from_slice(&c[1..9]);
            let mut sha = [0u8; 32];
            sha[..24].copy_from_slice(&c[9..33]);
            let mut e = ManifestEntry::single(
                SegmentId::from_bytes(segment),
                MemberId::from_bytes(member),
                sha,
            );
            if c[33] > 1 {
                let mut bitmap = vec![0u8; usize::from(c[33] % 32) + 1];
                let last = bitmap.len() - 1;
                bitmap[last] = c[33] | 1;
                bitmap[0] |= c[0];
                e.slots = Slots::from_bitmap(&bitmap).expect("a non-zero last byte");
            }
            e
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let trusted = writer_key();
    if let Ok(m) = Manifest::from_bytes(data, &trusted) {
        check(&m, data);
    }
    if data.len() > WRITER_KEY_AT + 33 + 64 {
        let mut signed = data.to_vec();
        signed[WRITER_KEY_AT..WRITER_KEY_AT + 33].copy_from_slice(&trusted.to_compressed_bytes());
        resign(&mut signed, &vectors().writer);
        if let Ok(m) = Manifest::from_bytes(&signed, &trusted) {
            check(&m, &signed);
        }
    }

    let entries = entries_of(data);
    let mut b = ManifestBuilder::new(SnapshotId::from_bytes([9; 16]), 3, Some([8; 32]), -5);
    b.extend(entries.clone());
    match b.sign(&vectors().writer) {
        Ok(m) => {
            let bytes = m.to_bytes();
            let back = Manifest::from_bytes(&bytes, &trusted).expect("what the writer signs");
            check(&back, &bytes);
            let mut sorted = entries;
            sorted.sort_by_key(|e| (e.segment, e.member));
            assert_eq!(back.entries(), &sorted[..]);
        }
        Err(e) => assert_eq!(e.code(), "invalid_input", "{e}"),
    }
});
