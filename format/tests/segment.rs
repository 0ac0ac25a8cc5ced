//! Segments: write, summarize, read back sequentially and by offset, copy (GC),
//! and catch damage.

mod common;

use std::io::{Cursor, Read, Seek, SeekFrom};

use cbfs_format::{
    EntryKind, Error, GroupKey, Keyring, MemberId, Metadata, SegmentId, SegmentMode, SegmentReader,
    SegmentWriter, Summary, decrypt_frame, open_frame, open_member_at,
};
use common::*;

fn write_encrypted(
    entries: &[(Metadata, Vec<u8>)],
    key: &GroupKey,
) -> (Vec<u8>, Summary, Vec<MemberId>) {
    let mut w = SegmentWriter::new(
        Cursor::new(Vec::new()),
        SegmentId::random(),
        SegmentMode::Encrypted,
    )
    .unwrap();
    let mut ids = Vec::new();
    for (meta, content) in entries {
        let id = MemberId::random();
        w.append_encrypted(id, key, meta, &content[..]).unwrap();
        ids.push(id);
    }
    let (spool, summary) = w.finish().unwrap();
    (spool.into_inner(), summary, ids)
}

#[test]
fn encrypted_segment_round_trip() {
    let key = GroupKey::generate();
    let entries = sample_entries();
    let (bytes, summary, ids) = write_encrypted(&entries, &key);
    assert_eq!(summary.segment_len(), bytes.len() as u64);
    assert_eq!(bytes.len() % 512, 0);
    summary.verify_segment(&bytes[..]).unwrap();

    let parsed = Summary::from_bytes(&summary.to_bytes()).unwrap();
    assert_eq!(parsed, summary);
    assert_eq!(parsed.to_bytes(), summary.to_bytes());

    let back = read_segment(&bytes, &key).unwrap();
    assert_eq!(back, entries);

    // Random access by (data offset, length), as an index stores it.
    let mut cursor = Cursor::new(&bytes);
    for (i, e) in summary.entries().iter().enumerate() {
        assert_eq!(e.member, ids[i]);
        assert_eq!(e.group, Some(key.id()));
        let (meta, content) =
            open_member_at(&mut cursor, e.member, e.data_offset, e.data_len, &key).unwrap();
        assert_eq!(meta, entries[i].0);
        assert_eq!(read_all(content).unwrap(), entries[i].1);
    }

    // Resuming at a member's header offset reads that member and the rest.
    let third = &summary.entries()[3];
    let mut r = SegmentReader::resume_at(
        Cursor::new(&bytes),
        summary.segment_id(),
        SegmentMode::Encrypted,
        third.header_offset,
    )
    .unwrap();
    let m = r.next_member().unwrap().unwrap();
    assert_eq!(m.info().member, Some(third.member));
    let (meta, _) = m.open(&key).unwrap();
    assert_eq!(meta, entries[3].0);
    let mut rest = 0;
    while r.next_member().unwrap().is_some() {
        rest += 1;
    }
    assert_eq!(rest, entries.len() - 4);
}

#[test]
fn members_of_several_groups_open_with_a_keyring() {
    let (a, b) = (GroupKey::generate(), GroupKey::generate());
    let mut w = SegmentWriter::new(
        Cursor::new(Vec::new()),
        SegmentId::random(),
        SegmentMode::Encrypted,
    )
    .unwrap()
    .with_zstd_level(19);
    let (m1, c1) = file(b"project-a/x", b"aaaa");
    let (m2, c2) = file(b"project-b/y", b"bbbb");
    w.append_encrypted(MemberId::random(), &a, &m1, &c1[..])
        .unwrap();
    w.append_encrypted(MemberId::random(), &b, &m2, &c2[..])
        .unwrap();
    let (spool, _) = w.finish().unwrap();
    let bytes = spool.into_inner();
    let ring: Keyring = [copy_key(&a), copy_key(&b)].into_iter().collect();
    assert_eq!(read_segment(&bytes, &ring).unwrap().len(), 2);
    // With only one key, the other member reports the group it needs.
    let err = read_segment(&bytes, &a).unwrap_err();
    assert!(
        matches!(err, Error::WrongKey { group: Some(g), .. } if g == b.id()),
        "{err}"
    );
}

#[test]
fn plain_segment_round_trip() {
    let mut w = SegmentWriter::new(
        Cursor::new(Vec::new()),
        SegmentId::random(),
        SegmentMode::Plain,
    )
    .unwrap();
    let mut entries = sample_entries();
    let long = [b"deep/".repeat(40), b"name-\xff\xfe.bin".to_vec()].concat();
    entries.push(file(&long, b"long name"));
    let mut x = file(b"with-xattrs", b"x");
    x.0.xattrs
        .insert(b"user.note".to_vec(), b"bin\0ary\n=".to_vec());
    x.0.uid = 5_000_000;
    x.0.uname = "a-user-name-that-is-longer-than-32-bytes".into();
    entries.push(x);
    for (meta, content) in &entries {
        w.append_plain(MemberId::random(), meta, &content[..])
            .unwrap();
    }
    assert!(
        w.append_encrypted(
            MemberId::random(),
            &GroupKey::generate(),
            &entries[1].0,
            &b""[..]
        )
        .is_err()
    );
    let (spool, summary) = w.finish().unwrap();
    let bytes = spool.into_inner();
    summary.verify_segment(&bytes[..]).unwrap();
    // Plain members include empty ones (folders): data of length 0.
    assert!(summary.entries().iter().any(|e| e.data_len == 0));
    assert_eq!(
        summary.segment_sha256(),
        &digest_by_definition(&bytes, &summary)
    );
    assert_eq!(Summary::from_bytes(&summary.to_bytes()).unwrap(), summary);
    assert_eq!(mode_of(&bytes), SegmentMode::Plain);
    assert_eq!(read_segment(&bytes, &Keyring::new()).unwrap(), entries);
    assert!(summary.entries().iter().all(|e| e.group.is_none()));
}

#[test]
fn a_failed_append_rewinds_and_the_segment_stays_valid() {
    let key = GroupKey::generate();
    let mut file_spool = tempfile::tempfile().unwrap();
    let mut w =
        SegmentWriter::new(&mut file_spool, SegmentId::random(), SegmentMode::Encrypted).unwrap();
    let (m1, c1) = file(b"one", &random_bytes(2, 100_000));
    w.append_encrypted(MemberId::random(), &key, &m1, &c1[..])
        .unwrap();
    let (mut grew, _) = file(b"grows", &random_bytes(3, 300_000));
    grew.size = 10;
    let err = w
        .append_encrypted(
            MemberId::random(),
            &key,
            &grew,
            &random_bytes(3, 300_000)[..],
        )
        .unwrap_err();
    assert_eq!(err.code(), "content_length");
    let (m3, c3) = file(b"three", b"3");
    w.append_encrypted(MemberId::random(), &key, &m3, &c3[..])
        .unwrap();
    let (_, summary) = w.finish().unwrap();
    file_spool.set_len(summary.segment_len()).unwrap();
    file_spool.seek(SeekFrom::Start(0)).unwrap();
    let mut bytes = Vec::new();
    file_spool.read_to_end(&mut bytes).unwrap();
    summary.verify_segment(&bytes[..]).unwrap();
    let back = read_segment(&bytes, &key).unwrap();
    assert_eq!(back, vec![(m1, c1), (m3, c3)]);
}

#[test]
fn gc_copies_members_byte_for_byte_without_a_key() {
    let key = GroupKey::generate();
    let entries = sample_entries();
    let (old_bytes, old, _) = write_encrypted(&entries, &key);
    // Keep members 1, 3 and 5.
    let mut w = SegmentWriter::new(
        Cursor::new(Vec::new()),
        SegmentId::random(),
        SegmentMode::Encrypted,
    )
    .unwrap();
    for e in old.entries().iter().skip(1).step_by(2) {
        let range = &old_bytes[e.header_offset as usize..(e.data_offset + e.data_len) as usize];
        let copied = w.append_copy(&old, &e.member, range).unwrap();
        assert_eq!(copied.sha256, e.sha256);
        assert_eq!(copied.group, e.group);
    }
    // A damaged source is refused.
    let e = &old.entries()[0];
    let mut range =
        old_bytes[e.header_offset as usize..(e.data_offset + e.data_len) as usize].to_vec();
    let last = range.len() - 1;
    range[last] ^= 1;
    assert_eq!(
        w.append_copy(&old, &e.member, &range[..])
            .unwrap_err()
            .code(),
        "summary_mismatch"
    );
    let (spool, new) = w.finish().unwrap();
    let new_bytes = spool.into_inner();
    new.verify_segment(&new_bytes[..]).unwrap();
    let back = read_segment(&new_bytes, &key).unwrap();
    let expected: Vec<_> = entries.into_iter().skip(1).step_by(2).collect();
    assert_eq!(back, expected);
}

#[test]
fn a_member_sealed_again_under_a_new_key_holds_the_same_files() {
    let (old_key, new_key) = (GroupKey::generate(), GroupKey::generate());
    let entries = sample_entries();
    let (old_bytes, old, ids) = write_encrypted(&entries, &old_key);
    let mut w = SegmentWriter::new(
        Cursor::new(Vec::new()),
        SegmentId::random(),
        SegmentMode::Encrypted,
    )
    .unwrap();
    for (e, id) in old.entries().iter().zip(&ids) {
        let payload = &old_bytes[e.data_offset as usize..(e.data_offset + e.data_len) as usize];
        // Only the old key opens the old payload.
        assert_eq!(
            decrypt_frame(*id, payload, &new_key).unwrap_err().code(),
            "wrong_key"
        );
        let frame = decrypt_frame(*id, payload, &old_key).unwrap();
        // The frame is the member's compressed plaintext: it reads back.
        let files = open_frame(*id, &frame).unwrap();
        assert_eq!(files.entries.len(), 1);
        let new_id = MemberId::random();
        let placed = w.append_frame(new_id, &new_key, &frame).unwrap();
        assert_ne!(placed.sha256, e.sha256, "a fresh file key: other bytes");
    }
    // A payload cut short does not decrypt.
    let e = &old.entries()[3];
    let cut = &old_bytes[e.data_offset as usize..(e.data_offset + e.data_len - 1) as usize];
    assert!(decrypt_frame(ids[3], cut, &old_key).is_err());
    let (spool, new) = w.finish().unwrap();
    let new_bytes = spool.into_inner();
    new.verify_segment(&new_bytes[..]).unwrap();
    assert_eq!(read_segment(&new_bytes, &new_key).unwrap(), entries);
    assert!(
        read_segment(&new_bytes, &old_key).is_err(),
        "the old key opens nothing"
    );
}

#[test]
fn damage_is_caught_by_the_summary_check() {
    let key = GroupKey::generate();
    let (bytes, summary, _) = write_encrypted(&sample_entries(), &key);
    let data = summary.entries()[3].data_offset as usize;

    let mut flipped = bytes.clone();
    flipped[data + 1000] ^= 0x10;
    let err = summary.verify_segment(&flipped[..]).unwrap_err();
    assert_eq!(err.code(), "summary_mismatch", "{err}");
    // Decryption catches it too.
    assert_eq!(
        read_segment(&flipped, &key).unwrap_err().code(),
        "payload_auth"
    );

    let err = summary
        .verify_segment(&bytes[..bytes.len() - 700])
        .unwrap_err();
    assert_eq!(err.code(), "tar", "{err}");
    let err = summary.verify_segment(&bytes[..data + 100]).unwrap_err();
    assert_eq!(err.code(), "tar", "{err}");

    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0u8; 512]);
    assert_eq!(
        summary.verify_segment(&longer[..]).unwrap_err().code(),
        "tar"
    );

    let mut renamed = bytes.clone();
    let h = summary.entries()[2].header_offset as usize;
    renamed[h] = if renamed[h] == b'a' { b'b' } else { b'a' };
    assert_eq!(
        summary.verify_segment(&renamed[..]).unwrap_err().code(),
        "tar"
    );

    // A member truncated inside the segment reads as truncated, not as short data.
    let e = &summary.entries()[3];
    let mut cur = Cursor::new(&bytes[..(e.data_offset + e.data_len / 2) as usize]);
    let res = open_member_at(&mut cur, e.member, e.data_offset, e.data_len, &key)
        .and_then(|(_, r)| read_all(r));
    assert_eq!(res.unwrap_err().code(), "payload_truncated");

    let other =
        Summary::from_bytes(&write_encrypted(&sample_entries(), &key).1.to_bytes()).unwrap();
    assert_eq!(
        other.verify_segment(&bytes[..]).unwrap_err().code(),
        "summary_mismatch"
    );
}

#[test]
fn summary_bit_flips_never_pass() {
    let key = GroupKey::generate();
    let (bytes, summary, _) = write_encrypted(&sample_entries()[..3], &key);
    let good = summary.to_bytes();
    for i in 0..good.len() {
        for bit in [0u8, 3, 7] {
            let mut bad = good.clone();
            bad[i] ^= 1 << bit;
            if let Ok(s) = Summary::from_bytes(&bad) {
                assert_eq!(s.to_bytes(), bad);
                assert!(
                    s.verify_segment(&bytes[..]).is_err(),
                    "flip at {i} bit {bit} passed"
                );
            }
        }
    }
    let mut v9 = good.clone();
    v9[9] = 9;
    assert_eq!(
        Summary::from_bytes(&v9).unwrap_err().code(),
        "unknown_version"
    );
    assert_eq!(
        Summary::from_bytes(b"CBFSXXXX").unwrap_err().code(),
        "bad_brand"
    );
    let mut longer = good.clone();
    longer.push(0);
    assert_eq!(
        Summary::from_bytes(&longer).unwrap_err().code(),
        "malformed"
    );
}

#[test]
fn not_a_segment() {
    assert_eq!(
        SegmentReader::new(&b"hello"[..]).err().unwrap().code(),
        "bad_brand"
    );
    assert_eq!(
        SegmentReader::new(&[0u8; 4096][..]).err().unwrap().code(),
        "bad_brand"
    );
    let mut w = SegmentWriter::new(
        Cursor::new(Vec::new()),
        SegmentId::random(),
        SegmentMode::Plain,
    )
    .unwrap();
    let (m, c) = entry(b"d", EntryKind::Dir);
    w.append_plain(MemberId::random(), &m, &c[..]).unwrap();
    let bytes = w.finish().unwrap().0.into_inner();
    // The version in the global header's comment.
    let text = String::from_utf8_lossy(&bytes[512..1024]).into_owned();
    let at = text.find("cbfs-segment/1").unwrap() + 13;
    let mut v2 = bytes.clone();
    v2[512 + at] = b'2';
    assert_eq!(
        SegmentReader::new(&v2[..]).err().unwrap().code(),
        "unknown_version"
    );
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    fn small_segment() -> (Vec<u8>, Summary, GroupKey) {
        let key = GroupKey::generate();
        let (bytes, summary, _) = write_encrypted(&sample_entries()[..3], &key);
        (bytes, summary, key)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn any_flipped_byte_is_caught(at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (bytes, summary, key) = small_segment();
            let mut bad = bytes.clone();
            let i = at.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(summary.verify_segment(&bad[..]).is_err());
            // Reading with the key notices too, unless the flip hit the segment id in the
            // global header (not bound into members, by design: GC moves members between
            // segments); then the reader reports another id.
            if read_segment(&bad, &key).is_ok() {
                let id = SegmentReader::new(&bad[..]).unwrap().segment_id();
                prop_assert_ne!(id, summary.segment_id(), "flip at {} went unnoticed", i);
            }
        }

        #[test]
        fn random_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            if let Ok(mut r) = SegmentReader::new(&bytes[..]) {
                while let Ok(Some(m)) = r.next_member() {
                    let _ = m.open(&Keyring::new());
                }
            }
        }

        #[test]
        fn a_real_header_with_random_members_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let (bytes, _, key) = small_segment();
            let mut mixed = bytes[..1024 + 512].to_vec();
            mixed.extend_from_slice(&tail);
            if let Ok(mut r) = SegmentReader::new(&mixed[..]) {
                while let Ok(Some(m)) = r.next_member() {
                    if let Ok((_, c)) = m.open(&key) {
                        let _ = read_all(c);
                    }
                }
            }
        }
    }
}

/// The segment digest computed from the bytes as FORMAT.md defines it:
/// the segment with each member's data replaced by its SHA-256.
fn digest_by_definition(bytes: &[u8], summary: &Summary) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut at = 0usize;
    for e in summary.entries() {
        let (start, end) = (
            e.data_offset as usize,
            (e.data_offset + e.data_len) as usize,
        );
        h.update(&bytes[at..start]);
        h.update(Sha256::digest(&bytes[start..end]));
        at = end;
    }
    h.update(&bytes[at..]);
    h.finalize().into()
}

#[test]
fn the_summary_hash_matches_the_bytes_with_small_and_streamed_members() {
    // Small members are built in memory; a streamed one (over 1 MiB) has
    // its header written after its payload. Either way the writer computes
    // the segment digest as it goes, and it is the one of the definition.
    let key = GroupKey::generate();
    for with_large in [false, true] {
        let mut entries = sample_entries();
        if with_large {
            entries.insert(2, file(b"dir/large.bin", &random_bytes(4, (1 << 20) + 1)));
        }
        let (bytes, summary, _) = write_encrypted(&entries, &key);
        assert_eq!(summary.segment_len(), bytes.len() as u64);
        assert_eq!(
            summary.segment_sha256(),
            &digest_by_definition(&bytes, &summary)
        );
        summary.verify_segment(&bytes[..]).unwrap();
        // A flipped bit in a header block, in padding or in the end marker
        // changes the digest.
        for at in [
            600,
            summary.entries()[0].end_offset() as usize - 1,
            bytes.len() - 1,
        ] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(summary.verify_segment(&bad[..]).is_err(), "byte {at}");
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2000;
        flipped[last] ^= 1;
        assert!(summary.verify_segment(&flipped[..]).is_err());
        assert_eq!(read_segment(&bytes, &key).unwrap(), entries);
    }
}
