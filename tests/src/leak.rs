//! Checking that a secret appears nowhere, in any common encoding.

use aho_corasick::AhoCorasick;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// The shortest secret [`assert_no_secret`] accepts. Shorter ones would match
/// by chance, and their base64 slices would be too short to mean anything.
pub const MIN_SECRET_LEN: usize = 16;

/// Fails the test if `secret` appears in `haystack` in any common encoding.
///
/// `what` names the haystack in the failure message ("stderr of keytool
/// init", "segment objects"). The message gives the encoding and the offset,
/// never the secret.
///
/// Encodings searched for:
/// - the raw bytes;
/// - hex, lowercase and uppercase, also with the bytes separated by spaces
///   or colons, and as `0x..` items separated by `, `;
/// - base64, standard and URL-safe, padded and unpadded, at all three byte
///   alignments: for each shift `s` in 0..3, the encoding of the longest
///   slice of `secret[s..]` whose length is a multiple of 3 is searched for,
///   so the secret is found inside a larger base64 blob wherever it starts
///   (and a standard one percent-encoded in a URL too);
/// - Rust `Debug` of a byte slice or `Vec<u8>`: decimal (`[12, 34, ...]`,
///   also as `{:#?}` prints it) and hex (`{:x?}`, `{:X?}`), without the
///   brackets, so it is found inside a longer list.
///
/// # Panics
///
/// If the secret is found, or if it is shorter than [`MIN_SECRET_LEN`].
pub fn assert_no_secret(haystack: &[u8], secret: &[u8], what: &str) {
    assert!(
        secret.len() >= MIN_SECRET_LEN,
        "assert_no_secret needs a secret of at least {MIN_SECRET_LEN} bytes to give \
         meaningful answers; this one has {}",
        secret.len()
    );
    if let Some(found) = find_secret(haystack, secret) {
        panic!(
            "secret leaked in {what}: found as {} at byte {} of {} (context: {})",
            found.encoding,
            found.offset,
            haystack.len(),
            masked_context(haystack, found.offset, found.len)
        );
    }
}

/// Where a secret was found, and how it was encoded.
struct Found {
    encoding: String,
    offset: usize,
    len: usize,
}

fn find_secret(haystack: &[u8], secret: &[u8]) -> Option<Found> {
    let needles = encodings(secret);
    let matcher = AhoCorasick::new(needles.iter().map(|(_, needle)| needle))
        .expect("secret encodings form a valid pattern set");
    matcher.find(haystack).map(|m| Found {
        encoding: needles[m.pattern().as_usize()].0.clone(),
        offset: m.start(),
        len: m.len(),
    })
}

/// Every encoding searched for, named for the failure message.
fn encodings(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, needle: Vec<u8>| {
        if !needle.is_empty() && !out.iter().any(|(_, n)| *n == needle) {
            out.push((name.to_string(), needle));
        }
    };

    add("raw bytes", secret.to_vec());

    let lower = hex::encode(secret);
    let upper = hex::encode_upper(secret);
    add("lowercase hex", lower.clone().into_bytes());
    add("uppercase hex", upper.clone().into_bytes());
    for (case, text) in [("lowercase", &lower), ("uppercase", &upper)] {
        let pairs: Vec<&str> = (0..text.len())
            .step_by(2)
            .map(|i| &text[i..i + 2])
            .collect();
        add(
            &format!("space-separated {case} hex"),
            pairs.join(" ").into_bytes(),
        );
        add(
            &format!("colon-separated {case} hex"),
            pairs.join(":").into_bytes(),
        );
        let items: Vec<String> = pairs.iter().map(|p| format!("0x{p}")).collect();
        add(
            &format!("{case} 0x.. hex list"),
            items.join(", ").into_bytes(),
        );
    }

    for (name, engine) in [
        ("base64 (standard, padded)", &STANDARD),
        ("base64 (standard, unpadded)", &STANDARD_NO_PAD),
        ("base64 (URL-safe, padded)", &URL_SAFE),
        ("base64 (URL-safe, unpadded)", &URL_SAFE_NO_PAD),
    ] {
        add(name, engine.encode(secret).into_bytes());
    }
    for shift in 0..3 {
        let inner = &secret[shift..];
        let inner = &inner[..inner.len() / 3 * 3];
        let standard = STANDARD_NO_PAD.encode(inner);
        add(
            &format!("base64 (standard) of the secret from byte {shift}"),
            standard.clone().into_bytes(),
        );
        add(
            &format!("base64 (URL-safe) of the secret from byte {shift}"),
            URL_SAFE_NO_PAD.encode(inner).into_bytes(),
        );
        let escaped = standard.replace('+', "%2B").replace('/', "%2F");
        add(
            &format!("percent-encoded base64 of the secret from byte {shift}"),
            escaped.into_bytes(),
        );
    }

    let decimal: Vec<String> = secret.iter().map(|b| b.to_string()).collect();
    add("Rust Debug of the bytes", decimal.join(", ").into_bytes());
    add(
        "Rust pretty Debug of the bytes",
        decimal.join(",\n    ").into_bytes(),
    );
    let hex_lower: Vec<String> = secret.iter().map(|b| format!("{b:x}")).collect();
    let hex_upper: Vec<String> = secret.iter().map(|b| format!("{b:X}")).collect();
    add("Rust {:x?} of the bytes", hex_lower.join(", ").into_bytes());
    add("Rust {:X?} of the bytes", hex_upper.join(", ").into_bytes());
    out
}

/// Up to 24 bytes either side of a match, with the match itself replaced by
/// `<SECRET>`, printable ASCII only.
fn masked_context(haystack: &[u8], offset: usize, len: usize) -> String {
    let show = |bytes: &[u8]| -> String {
        bytes
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    (b as char).to_string()
                } else {
                    format!("\\x{b:02x}")
                }
            })
            .collect()
    };
    let before = &haystack[offset.saturating_sub(24)..offset];
    let end = offset + len;
    let after = &haystack[end..(end + 24).min(haystack.len())];
    format!("\"{}<SECRET>{}\"", show(before), show(after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic;

    const SECRET: [u8; 20] = [
        0x00, 0xff, 0x10, 0x7e, 0x3f, 0xfb, 0xef, 0xbe, 0x41, 0x42, 0x9a, 0x01, 0xd4, 0x5c, 0x22,
        0x80, 0x7f, 0x0a, 0xc3, 0x13,
    ];

    fn caught(haystack: &[u8]) -> Option<String> {
        find_secret(haystack, &SECRET).map(|f| f.encoding)
    }

    fn assert_caught(haystack: impl AsRef<[u8]>, expected: &str) {
        let found = caught(haystack.as_ref());
        assert!(
            found.as_deref().is_some_and(|e| e.contains(expected)),
            "expected a match as {expected}, got {found:?}"
        );
    }

    fn embed(inner: impl AsRef<[u8]>) -> Vec<u8> {
        let mut v = b"log line: key=".to_vec();
        v.extend_from_slice(inner.as_ref());
        v.extend_from_slice(b" and more text\n");
        v
    }

    #[test]
    fn raw_bytes_are_caught() {
        assert_caught(embed(SECRET), "raw bytes");
    }

    #[test]
    fn hex_is_caught() {
        assert_caught(embed(hex::encode(SECRET)), "lowercase hex");
        assert_caught(embed(hex::encode_upper(SECRET)), "uppercase hex");
        let spaced: Vec<String> = SECRET.iter().map(|b| format!("{b:02x}")).collect();
        assert_caught(embed(spaced.join(" ")), "space-separated lowercase hex");
        let colons: Vec<String> = SECRET.iter().map(|b| format!("{b:02X}")).collect();
        assert_caught(embed(colons.join(":")), "colon-separated uppercase hex");
        let c_array: Vec<String> = SECRET.iter().map(|b| format!("0x{b:02x}")).collect();
        assert_caught(embed(c_array.join(", ")), "0x.. hex list");
    }

    #[test]
    fn base64_of_the_secret_alone_is_caught() {
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            assert_caught(embed(engine.encode(SECRET)), "base64");
        }
    }

    #[test]
    fn base64_of_an_embedded_secret_is_caught_at_every_alignment() {
        for prefix_len in 0..6 {
            let mut blob: Vec<u8> = (0..prefix_len as u8).map(|i| i.wrapping_mul(37)).collect();
            blob.extend_from_slice(&SECRET);
            blob.extend_from_slice(b"trailing bytes");
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                let encoded = engine.encode(&blob);
                assert!(
                    caught(embed(&encoded).as_slice()).is_some(),
                    "missed at prefix {prefix_len}: {encoded}"
                );
            }
        }
    }

    #[test]
    fn percent_encoded_base64_is_caught() {
        // This secret's standard base64 contains '+' and '/'.
        let b64 = STANDARD.encode(SECRET);
        assert!(b64.contains('+') || b64.contains('/'), "{b64}");
        let escaped = b64
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        assert_caught(embed(format!("?key={escaped}")), "percent-encoded base64");
    }

    #[test]
    fn rust_debug_is_caught() {
        assert_caught(embed(format!("{:?}", &SECRET[..])), "Rust Debug");
        assert_caught(embed(format!("{:?}", SECRET.to_vec())), "Rust Debug");
        assert_caught(embed(format!("{:#?}", SECRET.to_vec())), "pretty Debug");
        assert_caught(embed(format!("{:x?}", SECRET)), "{:x?}");
        assert_caught(embed(format!("{:X?}", SECRET)), "{:X?}");
        // Inside a longer list.
        let mut longer = vec![1u8, 2, 3];
        longer.extend_from_slice(&SECRET);
        longer.push(9);
        assert_caught(format!("Key {{ bytes: {longer:?} }}"), "Rust Debug");
    }

    #[test]
    fn unrelated_data_passes() {
        let mut other = SECRET;
        other[8] ^= 1;
        let haystack = [
            embed(other),
            embed(hex::encode(other)),
            embed(STANDARD.encode(other)),
            embed(format!("{:?}", &other[..])),
            // Part of the secret is not the secret.
            embed(&SECRET[..12]),
            embed(hex::encode(&SECRET[4..])),
            (0..=255u8).cycle().take(100_000).collect(),
        ]
        .concat();
        assert_no_secret(&haystack, &SECRET, "unrelated data");
    }

    #[test]
    fn failure_names_the_encoding_but_not_the_secret() {
        let haystack = embed(hex::encode(SECRET));
        let err = panic::catch_unwind(|| assert_no_secret(&haystack, &SECRET, "stderr"))
            .expect_err("the secret is there");
        let message = err.downcast_ref::<String>().expect("formatted panic");
        assert!(message.contains("secret leaked in stderr"), "{message}");
        assert!(message.contains("lowercase hex"), "{message}");
        assert!(message.contains("<SECRET>"), "{message}");
        assert!(!message.contains(&hex::encode(SECRET)), "{message}");
    }

    #[test]
    #[should_panic(expected = "at least 16 bytes")]
    fn short_secrets_are_refused() {
        assert_no_secret(b"", b"too short", "anything");
    }
}
