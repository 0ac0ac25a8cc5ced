//! Plain mode: members as ordinary tar entries with real names, so GNU tar reads them.
//!
//! Each member is an optional pax extended header (only when a field does not fit
//! ustar) and a ustar header, then the raw content.

use crate::error::Error;
use crate::metadata::{EntryKind, Metadata, Timestamp};
use crate::tar::{BLOCK, OCTAL7_MAX, Ustar, pax_header, pax_record};

const OCTAL11_MAX: i64 = 0o77_777_777_777;
const XATTR_PREFIX: &str = "SCHILY.xattr.";

fn invalid(meta: &Metadata, reason: &str) -> Error {
    Error::InvalidInput {
        reason: format!("{}: {reason} (plain mode)", meta.path_lossy()),
    }
}

/// The tar name: the path, with a trailing `/` for directories.
fn tar_name(meta: &Metadata) -> Vec<u8> {
    let mut name = meta.path.clone();
    if meta.kind == EntryKind::Dir {
        name.push(b'/');
    }
    name
}

/// Splits a name into ustar (prefix, name) if it fits without pax.
fn split_name(name: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if name.len() <= 100 {
        return Some((Vec::new(), name.to_vec()));
    }
    (0..name.len().min(156))
        .filter(|&i| name[i] == b'/')
        .find(|&i| name.len() - i - 1 <= 100 && name.len() - i - 1 > 0 && i > 0)
        .map(|i| (name[..i].to_vec(), name[i + 1..].to_vec()))
}

/// A time as a pax `mtime` record's value: seconds, and a fraction only
/// when there is one; a time before 1970 with a fraction is written as the
/// negative decimal it is (`-1.500000000`, not `-2.500000000`).
pub fn format_mtime(t: Timestamp) -> String {
    if t.nanos == 0 {
        return t.secs.to_string();
    }
    if t.secs >= 0 {
        format!("{}.{:09}", t.secs, t.nanos)
    } else {
        // secs + nanos/1e9 is negative: -(|secs + 1|) - (1e9 - nanos)/1e9.
        let whole = -(t.secs + 1);
        format!("-{}.{:09}", whole, 1_000_000_000 - t.nanos)
    }
}

fn parse_mtime(text: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(text).ok()?;
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = match body.split_once('.') {
        Some((w, f)) if f.len() == 9 && f.bytes().all(|b| b.is_ascii_digit()) => (w, Some(f)),
        Some(_) => return None,
        None => (body, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let nanos: u32 = frac.map_or(Some(0), |f| f.parse().ok())?;
    Some(match (neg, nanos) {
        (false, n) => Timestamp::new(whole, n),
        (true, 0) => Timestamp::new(whole.checked_neg()?, 0),
        (true, n) => Timestamp::new(whole.checked_neg()?.checked_sub(1)?, 1_000_000_000 - n),
    })
}

/// The header bytes (pax header if needed, then ustar) for a plain member.
pub(crate) fn plain_headers(meta: &Metadata) -> Result<Vec<u8>, Error> {
    meta.validate()?;
    let name = tar_name(meta);
    let mut h = Ustar {
        mode: meta.mode,
        size: meta.size,
        ..Ustar::default()
    };
    let mut records = Vec::new();
    let mut pax = Vec::new();

    match split_name(&name) {
        Some((prefix, n)) => {
            h.prefix = prefix;
            h.name = n;
        }
        None => {
            h.name = name[..100].to_vec();
            pax.push(("path", name.clone()));
        }
    }
    let target = match &meta.kind {
        EntryKind::Symlink { target } | EntryKind::Hardlink { target } => Some(target),
        _ => None,
    };
    if let Some(target) = target {
        if target.len() <= 100 {
            h.linkname = target.clone();
        } else {
            h.linkname = target[..100].to_vec();
            pax.push(("linkpath", target.clone()));
        }
    }
    // Long UTF-8 names go in pax records; long non-UTF-8 names in GNU 'L'/'K' blocks,
    // which GNU tar and bsdtar both read raw (bsdtar refuses non-UTF-8 pax paths, and
    // GNU tar does not know pax `hdrcharset`).
    let mut gnu_long = Vec::new();
    for (key, value) in &pax {
        if std::str::from_utf8(value).is_ok() {
            pax_record(&mut records, key, value);
        } else {
            let flag = if *key == "path" { b'L' } else { b'K' };
            gnu_long.extend_from_slice(&gnu_long_header(flag, value));
        }
    }
    for (key, id, field) in [("uid", meta.uid, &mut h.uid), ("gid", meta.gid, &mut h.gid)] {
        if u64::from(id) <= OCTAL7_MAX {
            *field = u64::from(id);
        } else {
            pax_record(&mut records, key, id.to_string().as_bytes());
        }
    }
    for (key, value, field) in [
        ("uname", &meta.uname, &mut h.uname),
        ("gname", &meta.gname, &mut h.gname),
    ] {
        if value.len() <= 31 {
            *field = value.as_bytes().to_vec();
        } else {
            pax_record(&mut records, key, value.as_bytes());
        }
    }
    let t = meta.mtime;
    if t.nanos == 0 && (0..=OCTAL11_MAX).contains(&t.secs) {
        h.mtime = t.secs as u64;
    } else {
        h.mtime = t.secs.clamp(0, OCTAL11_MAX) as u64;
        pax_record(&mut records, "mtime", format_mtime(t).as_bytes());
    }
    for (name, value) in &meta.xattrs {
        let name = std::str::from_utf8(name)
            .ok()
            .filter(|n| !n.contains('='))
            .ok_or_else(|| invalid(meta, "xattr name is not UTF-8 or contains '='"))?;
        pax_record(&mut records, &format!("{XATTR_PREFIX}{name}"), value);
    }
    h.typeflag = match &meta.kind {
        EntryKind::File => b'0',
        EntryKind::Hardlink { .. } => b'1',
        EntryKind::Symlink { .. } => b'2',
        EntryKind::CharDevice { .. } => b'3',
        EntryKind::BlockDevice { .. } => b'4',
        EntryKind::Dir => b'5',
        EntryKind::Fifo => b'6',
    };
    if let EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } =
        &meta.kind
    {
        if u64::from(*major) > OCTAL7_MAX || u64::from(*minor) > OCTAL7_MAX {
            return Err(invalid(meta, "device number too large for ustar"));
        }
        h.devmajor = *major;
        h.devminor = *minor;
    }
    let mut out = gnu_long;
    if !records.is_empty() {
        out.extend_from_slice(&pax_header(&records));
    }
    out.extend_from_slice(&h.encode());
    Ok(out)
}

/// A GNU long name ('L') or long link ('K') block: the name and a NUL, padded.
fn gnu_long_header(flag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Ustar {
        name: b"././@LongLink".to_vec(),
        mode: 0o644,
        size: value.len() as u64 + 1,
        typeflag: flag,
        ..Ustar::default()
    }
    .encode()
    .to_vec();
    out.extend_from_slice(value);
    out.push(0);
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    out
}

/// Rebuilds a plain member's metadata from its pax records and ustar header.
/// The caller checks the result by regenerating the header bytes.
/// GNU long names count as pax `path`/`linkpath` records here.
pub(crate) fn plain_metadata(pax: &[(String, Vec<u8>)], h: &Ustar) -> Result<Metadata, String> {
    let mut name = if h.prefix.is_empty() {
        h.name.clone()
    } else {
        [h.prefix.as_slice(), b"/", h.name.as_slice()].concat()
    };
    let mut linkname = h.linkname.clone();
    let mut meta = Metadata::new(Vec::new(), EntryKind::File);
    meta.mode = h.mode;
    meta.uid = u32::try_from(h.uid).map_err(|_| "uid too large")?;
    meta.gid = u32::try_from(h.gid).map_err(|_| "gid too large")?;
    meta.uname = String::from_utf8(h.uname.clone()).map_err(|_| "uname not UTF-8")?;
    meta.gname = String::from_utf8(h.gname.clone()).map_err(|_| "gname not UTF-8")?;
    meta.mtime = Timestamp::new(i64::try_from(h.mtime).map_err(|_| "mtime too large")?, 0);
    meta.size = h.size;
    let id = |v: &[u8]| -> Result<u32, String> {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "bad uid/gid record".to_string())
    };
    for (key, value) in pax {
        match key.as_str() {
            "path" => name = value.clone(),
            "linkpath" => linkname = value.clone(),
            "uid" => meta.uid = id(value)?,
            "gid" => meta.gid = id(value)?,
            "uname" => meta.uname = String::from_utf8(value.clone()).map_err(|_| "bad uname")?,
            "gname" => meta.gname = String::from_utf8(value.clone()).map_err(|_| "bad gname")?,
            "mtime" => meta.mtime = parse_mtime(value).ok_or("bad mtime record")?,
            k => match k.strip_prefix(XATTR_PREFIX) {
                Some(x) => {
                    meta.xattrs.insert(x.as_bytes().to_vec(), value.clone());
                }
                None => return Err(format!("unexpected pax record {k:?}")),
            },
        }
    }
    meta.kind = match h.typeflag {
        b'0' => EntryKind::File,
        b'1' => EntryKind::Hardlink { target: linkname },
        b'2' => EntryKind::Symlink { target: linkname },
        b'3' => EntryKind::CharDevice {
            major: h.devmajor,
            minor: h.devminor,
        },
        b'4' => EntryKind::BlockDevice {
            major: h.devmajor,
            minor: h.devminor,
        },
        b'5' => {
            if name.pop() != Some(b'/') {
                return Err("directory name without trailing '/'".into());
            }
            EntryKind::Dir
        }
        b'6' => EntryKind::Fifo,
        t => return Err(format!("unexpected tar entry type {:?}", char::from(t))),
    };
    meta.path = name;
    Ok(meta)
}

/// Length of the data area that follows a header of this size. A size
/// from the store near `u64::MAX` saturates (never wraps or panics); every
/// caller then finds that it does not fit.
pub(crate) fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn padding_a_size_near_the_largest_saturates() {
        assert_eq!(padded(0), 0);
        assert_eq!(padded(1), 512);
        assert_eq!(padded(512), 512);
        assert_eq!(padded(u64::MAX - 1), u64::MAX);
        assert_eq!(padded(u64::MAX), u64::MAX);
    }

    fn reparse(bytes: &[u8]) -> Metadata {
        let id = crate::ids::SegmentId::from_bytes([1; 16]);
        crate::segment_reader::parse_plain_region(id, 1024, bytes)
            .unwrap()
            .1
    }

    #[test]
    fn mtime_text_round_trip() {
        for t in [
            Timestamp::new(0, 0),
            Timestamp::new(5, 1),
            Timestamp::new(-1, 0),
            Timestamp::new(-2, 500_000_000),
            Timestamp::new(i64::MIN, 1),
            Timestamp::new(i64::MAX, 999_999_999),
        ] {
            assert_eq!(parse_mtime(format_mtime(t).as_bytes()), Some(t), "{t:?}");
        }
        assert_eq!(
            format_mtime(Timestamp::new(-2, 500_000_000)),
            "-1.500000000"
        );
    }

    proptest! {
        #[test]
        fn plain_headers_round_trip(meta in crate::metadata::tests::arb_metadata()) {
            let mut meta = meta;
            meta.xattrs.retain(|k, _| std::str::from_utf8(k).is_ok_and(|s| !s.contains('=')));
            if let EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } = &mut meta.kind {
                *major &= 0o777_777;
                *minor &= 0o777_777;
            }
            let bytes = plain_headers(&meta).unwrap();
            let back = reparse(&bytes);
            prop_assert_eq!(&back, &meta);
            prop_assert_eq!(plain_headers(&back).unwrap(), bytes);
        }
    }
}
