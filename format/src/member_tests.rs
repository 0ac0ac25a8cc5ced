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
        r.and_then(|(m, r)| read_all(m, r))
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
        let (_, mut reader) = r.unwrap();
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
