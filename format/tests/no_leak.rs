//! Nothing the cloud stores may show a file's name, content, owner or xattrs.

mod common;

use std::io::Cursor;

use cbfs_format::{
    EntryKind, Lockbox, ManifestBuilder, ManifestEntry, MemberId, Metadata, SegmentId, SegmentMode,
    SegmentWriter, SnapshotId, Timestamp,
};
use umbral_pre::{SecretKey, Signer};

const MARKERS: [&[u8]; 6] = [
    b"SECRETNAME",
    b"SECRETCONTENT",
    b"SECRETUSER",
    b"SECRETXATTR",
    b"SECRETLINK",
    b"SECRETDIR",
];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_marker_in_segment_summary_lockbox_or_manifest() {
    let scope = SecretKey::random();
    let segment = SegmentId::random();
    let (lockbox, key) = Lockbox::seal("scope-1", &scope.public_key(), segment).unwrap();
    let mut w =
        SegmentWriter::new(Cursor::new(Vec::new()), segment, SegmentMode::Encrypted).unwrap();

    let mut f = Metadata::new(b"SECRETDIR/SECRETNAME.txt".to_vec(), EntryKind::File);
    // Incompressible-looking but marker-laden content, and a highly compressible one.
    let content = b"SECRETCONTENT ".repeat(5000);
    f.size = content.len() as u64;
    f.uname = "SECRETUSER".into();
    f.gname = "SECRETUSER".into();
    f.mtime = Timestamp::new(1_700_000_000, 1);
    f.xattrs
        .insert(b"user.SECRETXATTR".to_vec(), b"SECRETXATTR".to_vec());
    w.append_encrypted(MemberId::random(), &key, &f, &content[..])
        .unwrap();
    let l = Metadata::new(
        b"SECRETDIR/l".to_vec(),
        EntryKind::Symlink {
            target: b"SECRETLINK".to_vec(),
        },
    );
    w.append_encrypted(MemberId::random(), &key, &l, &b""[..])
        .unwrap();
    let small = b"SECRETCONTENT".to_vec();
    let mut s = Metadata::new(b"SECRETNAME".to_vec(), EntryKind::File);
    s.size = small.len() as u64;
    w.append_encrypted(MemberId::random(), &key, &s, &small[..])
        .unwrap();
    // Another zstd level changes nothing: content is encrypted either way.
    let mut w = w.with_zstd_level(1);
    w.append_encrypted(MemberId::random(), &key, &s, &small[..])
        .unwrap();
    let (spool, summary) = w.finish().unwrap();
    let seg_bytes = spool.into_inner();

    let mut mb = ManifestBuilder::new(SnapshotId::random(), 1, None, 0);
    mb.extend(
        summary
            .entries()
            .iter()
            .map(|e| ManifestEntry::single(segment, e.member, e.sha256)),
    );
    let manifest = mb.sign(&Signer::new(SecretKey::random())).unwrap();

    let objects = [
        ("segment", seg_bytes),
        ("summary", summary.to_bytes()),
        ("lockbox", lockbox.to_bytes()),
        ("manifest", manifest.to_bytes()),
    ];
    for (what, bytes) in &objects {
        for marker in MARKERS {
            assert!(
                !contains(bytes, marker),
                "{what} shows {:?}",
                String::from_utf8_lossy(marker)
            );
        }
        // Nor the group key itself.
        assert!(
            !contains(bytes, key.expose_secret()),
            "{what} shows the group key"
        );
    }
    // Sanity: the same check does see markers in a plain segment.
    let mut p = SegmentWriter::new(Cursor::new(Vec::new()), segment, SegmentMode::Plain).unwrap();
    p.append_plain(MemberId::random(), &s, &small[..]).unwrap();
    let plain = p.finish().unwrap().0.into_inner();
    assert!(contains(&plain, b"SECRETNAME") && contains(&plain, b"SECRETCONTENT"));
}
