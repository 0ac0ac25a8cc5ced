//! Reading a member's metadata without authenticating it, to plan a restore.
//!
//! A restore first reads every member's metadata (the path is encrypted
//! inside the member) to check and sort the paths, then reads every member
//! again to write it. Through age, reading the metadata means decrypting and
//! authenticating the member's whole first 64 KiB chunk: for small files,
//! the whole file, twice. [`peek_metadata`] instead decrypts only the first
//! few hundred bytes of the payload (the metadata ends a zstd block of its
//! own) with the payload key's ChaCha20 keystream, and checks nothing.
//!
//! What it returns is a claim, used only to plan. The second read
//! authenticates every byte of the member, and a restore refuses the member
//! unless the authenticated metadata is exactly what was planned with. A
//! payload altered in the store cannot choose what the claim says without
//! the key: altered bytes decompress to noise, which the strict metadata
//! decoder refuses, and the caller then falls back to the authenticated read
//! (which names the damage precisely).

use std::cell::RefCell;
use std::io::Read;

use age_core::format::Stanza;
use age_core::secrecy::ExposeSecret;
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use sha2::Sha256;

use crate::ids::MemberId;
use crate::keys::GroupKeys;
use crate::member::{decode_metadata, parse_head};
use crate::metadata::{MAX_METADATA_LEN, Metadata};
use crate::stanza::{CbfsIdentity, Outcome};
use crate::zframe::FrameDecoder;

/// Payload bytes that [`peek_metadata`] wants: enough for the age header and
/// the metadata block of a member of one file, and of most packs (a pack
/// whose table needs more is read through [`crate::open_member_files`]).
pub const PEEK_LEN: usize = 8192;

const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
const NONCE_LEN: usize = 16;
const CHUNK: u64 = 64 * 1024;
const TAG: u64 = 16;

/// The metadata a member's payload claims (one record, or a pack's table),
/// read from `head` (its first bytes, [`PEEK_LEN`] or all of it if
/// shorter) without authentication.
/// `payload_len` is the member's full data length. `None` whenever anything
/// does not work out: read the member with [`crate::open_member_at`] then.
pub fn peek_metadata(
    member: MemberId,
    head: &[u8],
    payload_len: u64,
    keys: &dyn GroupKeys,
) -> Option<Vec<Metadata>> {
    let (stanzas, header_len) = parse_header(head)?;
    let nonce = head.get(header_len..header_len + NONCE_LEN)?;
    let identity = CbfsIdentity {
        member,
        keys,
        outcome: RefCell::new(Outcome::NotCalled),
    };
    let file_key = age::Identity::unwrap_stanzas(&identity, &stanzas)?.ok()?;
    let mut payload_key = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(nonce), file_key.expose_secret())
        .expand(b"payload", &mut payload_key)
        .ok()?;

    // The first chunk: STREAM nonce counter 0, flagged last if it is the
    // only one; ChaCha20-Poly1305 encrypts from keystream block 1.
    let start = header_len + NONCE_LEN;
    let ciphertext = payload_len.checked_sub(start as u64)?;
    if ciphertext < TAG {
        return None;
    }
    let only_chunk = ciphertext <= CHUNK + TAG;
    let first_plain = (ciphertext - TAG).min(CHUNK) as usize;
    let mut plain = head.get(start..)?.to_vec();
    plain.truncate(first_plain);
    let mut stream_nonce = [0u8; 12];
    stream_nonce[11] = u8::from(only_chunk);
    let mut cipher = ChaCha20::new(&payload_key.into(), &stream_nonce.into());
    cipher.seek(64u64);
    cipher.apply_keystream(&mut plain);
    payload_key.fill(0);

    let mut z = FrameDecoder::new(&plain[..]);
    let mut fixed = [0u8; 14];
    z.read_exact(&mut fixed).ok()?;
    let (version, len) = parse_head(&fixed).ok()?;
    if len > MAX_METADATA_LEN {
        return None;
    }
    let mut encoded = vec![0u8; len];
    z.read_exact(&mut encoded).ok()?;
    decode_metadata(member, version, &encoded).ok()
}

/// The stanzas of an age v1 header and the header's length (through the
/// MAC line), if `head` holds the whole header.
fn parse_header(head: &[u8]) -> Option<(Vec<Stanza>, usize)> {
    let mut rest = head.strip_prefix(VERSION_LINE)?;
    let mut stanzas = Vec::new();
    while rest.starts_with(b"-> ") {
        let (after, stanza) = age_core::format::read::age_stanza(rest).ok()?;
        stanzas.push(Stanza::from(stanza));
        rest = after;
    }
    let mac_line = rest.strip_prefix(b"--- ")?;
    let eol = mac_line.iter().position(|&b| b == b'\n')?;
    let header_len = head.len() - mac_line.len() + eol + 1;
    Some((stanzas, header_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{GroupKey, Keyring};
    use crate::member::write_member;
    use crate::member_tests::setup;
    use crate::metadata::{EntryKind, Metadata};

    fn member(key: &GroupKey, id: MemberId, path: &str, content: &[u8]) -> (Metadata, Vec<u8>) {
        let mut meta = Metadata::new(path, EntryKind::File);
        meta.size = content.len() as u64;
        meta.uname = "alice".into();
        let bytes = write_member(Vec::new(), id, key, &meta, content, 3).unwrap();
        (meta, bytes)
    }

    fn head(bytes: &[u8]) -> &[u8] {
        &bytes[..bytes.len().min(PEEK_LEN)]
    }

    #[test]
    fn reads_the_metadata_of_one_chunk_and_many() {
        let (id, key, ring) = setup();
        for len in [0usize, 10, 65_000, 65_536, 200_000, 3 << 20] {
            let content: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let (meta, bytes) = member(&key, id, "a/b.txt", &content);
            let got = peek_metadata(id, head(&bytes), bytes.len() as u64, &ring);
            assert_eq!(got, Some(vec![meta]), "len {len}");
        }
    }

    #[test]
    fn gives_up_rather_than_guess() {
        let (id, key, ring) = setup();
        let (meta, bytes) = member(&key, id, "f", b"hello");
        let len = bytes.len() as u64;
        assert_eq!(
            peek_metadata(id, &bytes, len, &ring),
            Some(vec![meta.clone()])
        );
        // Another member's id, no key, a cut header, a wrong length.
        assert_eq!(peek_metadata(MemberId::random(), &bytes, len, &ring), None);
        assert_eq!(peek_metadata(id, &bytes, len, &Keyring::new()), None);
        let other: Keyring = [GroupKey::generate()].into_iter().collect();
        assert_eq!(peek_metadata(id, &bytes, len, &other), None);
        assert_eq!(peek_metadata(id, &bytes[..40], len, &ring), None);
        assert_eq!(peek_metadata(id, &bytes, 10, &ring), None);
        // A flipped byte anywhere: either no claim, the same claim (a byte
        // of the header that does not reach the metadata), or a claim that
        // the authenticated read refuses (ChaCha20 is malleable; that is why
        // a claim only plans).
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            match peek_metadata(id, &bad, len, &ring) {
                Some(m) if m != [meta.clone()] => assert!(
                    crate::open_member(id, &bad[..], &ring)
                        .and_then(|(_, r)| r.finish())
                        .is_err(),
                    "byte {i}: an altered claim that authenticates"
                ),
                _ => {}
            }
        }
    }
}
