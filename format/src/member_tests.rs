//! Tests of member payloads: round trips and every failure class.

use std::io::{Read, Write};

use proptest::prelude::*;
use rand::{RngCore, SeedableRng};

use crate::error::Error;
use crate::ids::{GroupId, MemberId};
use crate::keys::{GroupKey, Keyring};
use crate::member::{
    ContentReader, DEFAULT_ZSTD_LEVEL, open_member, open_member_piped, write_member,
};
use crate::metadata::{EntryKind, Metadata, Timestamp};

const CHUNK: usize = 64 * 1024 + 16;

pub(crate) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

fn file_meta(path: &str, size: u64) -> Metadata {
    let mut m = Metadata::new(path, EntryKind::File);
    m.size = size;
    m.mtime = Timestamp::new(1_700_000_000, 123_456_789);
    m.uname = "alice".into();
    m.xattrs.insert(b"user.k".to_vec(), vec![0, 1, 2]);
    m
}

fn encrypt(member: MemberId, key: &GroupKey, meta: &Metadata, content: &[u8]) -> Vec<u8> {
    write_member(Vec::new(), member, key, meta, content, DEFAULT_ZSTD_LEVEL).unwrap()
}

/// Decrypts with [`open_member`], and again with [`open_member_piped`]
/// (decryption on a second thread), which must agree on the content or on
/// the class of the error.
fn decrypt(member: MemberId, keys: &Keyring, payload: &[u8]) -> Result<(Metadata, Vec<u8>), Error> {
    let read_all = |meta: Metadata, mut reader: ContentReader<'_>| {
        let mut out = Vec::new();
        reader
            .read_to_end(&mut out)
            .map_err(|e| Error::from_io(e, "test"))?;
        Ok((meta, out))
    };
    let direct = open_member(member, payload, keys).and_then(|(m, r)| read_all(m, r));
    let mut padded = b"segment bytes before the member".to_vec();
    let at = padded.len() as u64;
    padded.extend_from_slice(payload);
    padded.extend_from_slice(b"and after it");
    let mut input = std::io::Cursor::new(&padded[..]);
    let piped = open_member_piped(&mut input, member, at, payload.len() as u64, keys, |r| {
        r.and_then(|f| f.into_single(member))
            .and_then(|(m, r)| read_all(m, r))
    });
    match (&direct, &piped) {
        (Ok(a), Ok(b)) => assert!(a == b, "the piped reader gives other content"),
        (Err(a), Err(b)) => assert_eq!(a.code(), b.code(), "{a} / {b}"),
        _ => panic!("the piped reader disagrees: {direct:?} / {piped:?}"),
    }
    direct
}

#[test]
fn a_piped_reader_dropped_early_stops_its_thread() {
    let (member, key, ring) = setup();
    let content = random_bytes(3, 3 << 20);
    let meta = file_meta("big", content.len() as u64);
    let payload = encrypt(member, &key, &meta, &content);
    let mut input = std::io::Cursor::new(&payload[..]);
    let first = open_member_piped(&mut input, member, 0, payload.len() as u64, &ring, |r| {
        let (_, mut reader) = r.unwrap().into_single(member).unwrap();
        let mut head = [0u8; 10];
        reader.read_exact(&mut head).unwrap();
        head
    });
    assert_eq!(first[..], content[..10]);
}

/// Offset of the first payload chunk (after the header and the 16-byte nonce).
pub(crate) fn payload_start(file: &[u8]) -> usize {
    let mac = file.windows(5).position(|w| w == b"\n--- ").unwrap() + 5;
    let eol = mac + file[mac..].iter().position(|&b| b == b'\n').unwrap();
    eol + 1 + 16
}

/// A member id, a group key and a keyring holding (a copy of) that key.
pub(crate) fn setup() -> (MemberId, GroupKey, Keyring) {
    let key = GroupKey::generate();
    let ring: Keyring = [GroupKey::new(
        key.id(),
        secrecy::SecretBox::new(Box::new(*key.expose_secret())),
    )]
    .into_iter()
    .collect();
    (MemberId::random(), key, ring)
}

#[test]
fn round_trip_at_chunk_edges() {
    let (member, key, ring) = setup();
    for len in [0usize, 1, 65_535, 65_536, 65_537, 3 * 1024 * 1024 + 7] {
        let content = random_bytes(len as u64, len);
        let meta = file_meta("dir/f\u{e9}.bin", len as u64);
        let payload = encrypt(member, &key, &meta, &content);
        let (back, data) = decrypt(member, &ring, &payload).unwrap();
        assert_eq!(back, meta, "len {len}");
        assert!(data == content, "content differs at len {len}");
    }
}

#[test]
fn compressible_content_shrinks() {
    let (member, key, ring) = setup();
    let content = vec![b'a'; 1 << 20];
    let meta = file_meta("zeros", content.len() as u64);
    let payload = encrypt(member, &key, &meta, &content);
    assert!(payload.len() < 10_000, "payload is {} bytes", payload.len());
    assert_eq!(decrypt(member, &ring, &payload).unwrap().1, content);
}

#[test]
fn content_length_changes_are_refused() {
    let (member, key, _) = setup();
    let meta = file_meta("grows", 10);
    let err = write_member(Vec::new(), member, &key, &meta, &[0u8; 11][..], 3).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ContentLength {
                declared: 10,
                actual: 11,
                ..
            }
        ),
        "{err}"
    );
    let err = write_member(Vec::new(), member, &key, &meta, &[0u8; 9][..], 3).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ContentLength {
                declared: 10,
                actual: 9,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn wrong_member_id_wrong_key_and_missing_group() {
    let (member, key, ring) = setup();
    let meta = file_meta("f", 3);
    let payload = encrypt(member, &key, &meta, b"abc");
    let err = decrypt(MemberId::random(), &ring, &payload).unwrap_err();
    assert!(
        matches!(err, Error::WrongKey { group: Some(g), .. } if g == key.id()),
        "{err}"
    );
    let impostor: Keyring = [GroupKey::new(
        key.id(),
        secrecy::SecretBox::new(Box::new([7; 32])),
    )]
    .into_iter()
    .collect();
    let err = decrypt(member, &impostor, &payload).unwrap_err();
    assert_eq!(err.code(), "wrong_key");
    let err = decrypt(member, &Keyring::new(), &payload).unwrap_err();
    assert_eq!(err.code(), "wrong_key");
    let other = GroupKey::generate();
    let err = decrypt(member, &[other].into_iter().collect(), &payload).unwrap_err();
    assert!(matches!(err, Error::WrongKey { group: Some(g), .. } if g == key.id()));
}

#[test]
fn header_damage_is_caught() {
    let (member, key, ring) = setup();
    let meta = file_meta("f", 3);
    let payload = encrypt(member, &key, &meta, b"abc");
    // MAC: flip a character of the base64 MAC.
    let mac = payload.windows(5).position(|w| w == b"\n--- ").unwrap() + 6;
    let mut bad = payload.clone();
    bad[mac] = if bad[mac] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        decrypt(member, &ring, &bad).unwrap_err().code(),
        "header_mac"
    );
    // Not age at all.
    assert_eq!(
        decrypt(member, &ring, b"hello world\n").unwrap_err().code(),
        "member_header"
    );
    // Empty.
    let err = decrypt(member, &ring, b"").unwrap_err();
    assert_eq!(err.code(), "member_header", "{err}");
}

#[test]
fn payload_damage_is_caught() {
    let (member, key, ring) = setup();
    let content = random_bytes(9, 200_000);
    let meta = file_meta("big", content.len() as u64);
    let payload = encrypt(member, &key, &meta, &content);
    let start = payload_start(&payload);
    let chunks = (payload.len() - start).div_ceil(CHUNK);
    assert_eq!(chunks, 4);

    let mut flipped = payload.clone();
    flipped[start + CHUNK + 5] ^= 1;
    assert_eq!(
        decrypt(member, &ring, &flipped).unwrap_err().code(),
        "payload_auth"
    );

    let mut swapped = payload[..start].to_vec();
    swapped.extend_from_slice(&payload[start + CHUNK..start + 2 * CHUNK]);
    swapped.extend_from_slice(&payload[start..start + CHUNK]);
    swapped.extend_from_slice(&payload[start + 2 * CHUNK..]);
    assert_eq!(
        decrypt(member, &ring, &swapped).unwrap_err().code(),
        "payload_auth"
    );

    let cut = &payload[..start + 3 * CHUNK];
    assert_eq!(
        decrypt(member, &ring, cut).unwrap_err().code(),
        "payload_truncated"
    );
    let cut = &payload[..payload.len() - 1];
    assert_eq!(
        decrypt(member, &ring, cut).unwrap_err().code(),
        "payload_auth"
    );

    let mut trailing = payload.clone();
    trailing.extend_from_slice(b"more");
    assert_eq!(
        decrypt(member, &ring, &trailing).unwrap_err().code(),
        "payload_auth"
    );

    // A chunk from another member with the same group and member id.
    let other = encrypt(member, &key, &meta, &content);
    let o_start = payload_start(&other);
    let mut spliced = payload[..start + CHUNK].to_vec();
    spliced.extend_from_slice(&other[o_start + CHUNK..o_start + 2 * CHUNK]);
    spliced.extend_from_slice(&payload[start + 2 * CHUNK..]);
    assert_eq!(
        decrypt(member, &ring, &spliced).unwrap_err().code(),
        "payload_auth"
    );

    // The header of another member in front of this payload.
    let mut header_swap = other[..o_start].to_vec();
    header_swap.extend_from_slice(&payload[start..]);
    assert_eq!(
        decrypt(member, &ring, &header_swap).unwrap_err().code(),
        "payload_auth"
    );
}

#[test]
fn reading_stops_at_the_declared_size_and_checks_the_end() {
    let (member, key, ring) = setup();
    let meta = file_meta("f", 5);
    let payload = encrypt(member, &key, &meta, b"hello");
    let (_, mut reader) = open_member(member, &payload[..], &ring).unwrap();
    let mut buf = [0u8; 3];
    reader.read_exact(&mut buf).unwrap();
    assert_eq!(reader.remaining(), 2);
    reader.finish().unwrap();
}

#[test]
fn source_errors_are_io_errors() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "disk on fire",
            ))
        }
    }
    let (member, _, ring) = setup();
    let err = open_member(member, Failing, &ring).unwrap_err();
    assert_eq!(err.code(), "io", "{err}");
}

#[test]
fn non_file_entries_carry_no_content() {
    let (member, key, ring) = setup();
    for kind in [
        EntryKind::Dir,
        EntryKind::Symlink {
            target: b"../t".to_vec(),
        },
        EntryKind::Hardlink {
            target: b"a/b".to_vec(),
        },
        EntryKind::CharDevice { major: 1, minor: 3 },
        EntryKind::Fifo,
    ] {
        let meta = Metadata::new("x", kind);
        let payload = encrypt(member, &key, &meta, b"");
        let (back, data) = decrypt(member, &ring, &payload).unwrap();
        assert_eq!(back, meta);
        assert!(data.is_empty());
        let mut w = Vec::new();
        w.write_all(b"x").unwrap();
        assert!(write_member(Vec::new(), member, &key, &meta, &w[..], 3).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn member_round_trip(
        meta in crate::metadata::tests::arb_metadata(),
        len in prop_oneof![Just(0usize), Just(1), Just(65_535), Just(65_537), 0usize..200_000],
        seed in any::<u64>(),
    ) {
        let (member, key, ring) = setup();
        let mut meta = meta;
        let content = if meta.kind == EntryKind::File { random_bytes(seed, len) } else { Vec::new() };
        meta.size = content.len() as u64;
        let payload = encrypt(member, &key, &meta, &content);
        let (back, data) = decrypt(member, &ring, &payload).unwrap();
        prop_assert_eq!(back, meta);
        prop_assert!(data == content);
        let _ = GroupId::random();
    }
}

/// A pack of `n` files: some empty, one folder, the rest of assorted sizes.
fn pack_files(n: usize) -> Vec<(Metadata, Vec<u8>)> {
    (0..n)
        .map(|i| {
            if i == 1 {
                return (
                    Metadata::new(format!("dir-{i}"), EntryKind::Dir),
                    Vec::new(),
                );
            }
            let content = random_bytes(i as u64, (i * 997) % 5000);
            (
                file_meta(&format!("dir/f-{i}"), content.len() as u64),
                content,
            )
        })
        .collect()
}

fn encrypt_pack(member: MemberId, key: &GroupKey, files: &[(Metadata, Vec<u8>)]) -> Vec<u8> {
    let refs: Vec<(&Metadata, &[u8])> = files.iter().map(|(m, c)| (m, c.as_slice())).collect();
    crate::member::write_pack(Vec::new(), member, key, &refs, DEFAULT_ZSTD_LEVEL).unwrap()
}

/// Every file of a member, read through [`crate::open_member_files`].
fn decrypt_files(
    member: MemberId,
    keys: &Keyring,
    payload: &[u8],
) -> Result<Vec<(Metadata, Vec<u8>)>, Error> {
    let files = crate::open_member_files(member, payload, keys)?;
    let mut content = files.content;
    let mut out = Vec::new();
    for meta in files.entries {
        let mut buf = vec![0u8; meta.size as usize];
        content
            .read_exact(&mut buf)
            .map_err(|e| Error::from_io(e, "test"))?;
        out.push((meta, buf));
    }
    // The end of the payload is checked once everything was read.
    let mut rest = Vec::new();
    content
        .read_to_end(&mut rest)
        .map_err(|e| Error::from_io(e, "test"))?;
    assert!(rest.is_empty());
    Ok(out)
}

#[test]
fn a_pack_round_trips_and_is_not_mistaken_for_one_file() {
    let (id, key, ring) = setup();
    for n in [1, 2, 3, 40, crate::MAX_PACK_FILES] {
        let files = pack_files(n);
        let payload = encrypt_pack(id, &key, &files);
        assert_eq!(
            decrypt_files(id, &ring, &payload).unwrap(),
            files,
            "{n} files"
        );
        // The planning peek reads the same table, unauthenticated.
        let head = &payload[..payload.len().min(crate::PEEK_LEN)];
        if let Some(table) = crate::peek_metadata(id, head, payload.len() as u64, &ring) {
            let metas: Vec<Metadata> = files.iter().map(|(m, _)| m.clone()).collect();
            assert_eq!(table, metas, "{n} files");
        } else {
            assert!(n > 40, "a small pack's table fits the peek");
        }
        if n > 1 {
            let err = open_member(id, &payload[..], &ring).unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{err}");
            assert!(err.to_string().contains("pack of"), "{err}");
        }
    }
    // A member of one file reads as a member of one file.
    let meta = file_meta("one", 5);
    let one = encrypt(id, &key, &meta, b"hello");
    assert_eq!(
        decrypt_files(id, &ring, &one).unwrap(),
        vec![(meta, b"hello".to_vec())]
    );
}

#[test]
fn a_pack_refuses_what_it_cannot_hold() {
    let (id, key, _) = setup();
    for files in [Vec::new(), pack_files(crate::MAX_PACK_FILES + 1)] {
        let r: Vec<(&Metadata, &[u8])> = files.iter().map(|(m, c)| (m, c.as_slice())).collect();
        let err = crate::member::write_pack(Vec::new(), id, &key, &r, 3).unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{err}");
    }
    // A content that is not its metadata's size.
    let meta = file_meta("short", 10);
    let err =
        crate::member::write_pack(Vec::new(), id, &key, &[(&meta, &b"four"[..])], 3).unwrap_err();
    assert_eq!(err.code(), "content_length", "{err}");
}

#[test]
fn a_damaged_pack_fails_as_a_whole() {
    let (id, key, ring) = setup();
    let files = pack_files(30);
    let payload = encrypt_pack(id, &key, &files);
    let start = payload_start(&payload);
    for at in [start + 20, payload.len() / 2, payload.len() - 1] {
        let mut bad = payload.clone();
        bad[at] ^= 1;
        let err = decrypt_files(id, &ring, &bad).unwrap_err();
        assert_eq!(err.code(), "payload_auth", "byte {at}: {err}");
    }
    let err = decrypt_files(id, &ring, &payload[..payload.len() - 10]).unwrap_err();
    assert!(
        matches!(err.code(), "payload_auth" | "payload_truncated"),
        "{err}"
    );
    let other = MemberId::random();
    assert_eq!(
        decrypt_files(other, &ring, &payload).unwrap_err().code(),
        "wrong_key"
    );
}

#[test]
fn a_pack_table_is_parsed_strictly() {
    let id = MemberId::random();
    let meta = file_meta("a", 3);
    let record = meta.encode().unwrap();
    let table = |count: u16, records: &[&[u8]], extra: &[u8]| {
        let mut t = count.to_be_bytes().to_vec();
        for r in records {
            t.extend_from_slice(&(r.len() as u32).to_be_bytes());
            t.extend_from_slice(r);
        }
        t.extend_from_slice(extra);
        t
    };
    let decode = |t: &[u8]| crate::member::decode_metadata(id, 2, t);
    assert_eq!(
        decode(&table(1, &[&record], &[])).unwrap(),
        vec![meta.clone()]
    );
    assert_eq!(
        decode(&table(2, &[&record, &record], &[])).unwrap().len(),
        2
    );
    for (what, bad) in [
        ("empty", Vec::new()),
        ("no files", table(0, &[], &[])),
        ("count past the entries", table(2, &[&record], &[])),
        ("bytes after the table", table(1, &[&record], &[0])),
        ("over the limit", table(257, &[&record], &[])),
    ] {
        let err = decode(&bad).unwrap_err();
        assert_eq!(err.code(), "corrupt_plaintext", "{what}: {err}");
    }
    let mut cut = table(1, &[&record], &[]);
    cut[5] = 0xff; // the entry's length runs past the table
    assert_eq!(decode(&cut).unwrap_err().code(), "corrupt_plaintext");
}
