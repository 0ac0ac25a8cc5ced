//! ustar header blocks and pax records, written canonically.
//!
//! Parsing here is lenient on purpose: every reader in this crate regenerates the
//! header bytes from what it parsed and compares them with what it read, so only
//! the exact bytes this crate writes are accepted.

use crate::ids::{MemberId, SegmentId};

/// A tar block.
pub(crate) const BLOCK: usize = 512;
/// Largest size an 11-digit octal field holds.
const OCTAL11_MAX: u64 = 0o77_777_777_777;
/// Largest value a 7-digit octal field holds.
pub(crate) const OCTAL7_MAX: u64 = 0o7_777_777;

/// The fields of one ustar header block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ustar {
    pub(crate) name: Vec<u8>,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) size: u64,
    pub(crate) mtime: u64,
    pub(crate) typeflag: u8,
    pub(crate) linkname: Vec<u8>,
    pub(crate) uname: Vec<u8>,
    pub(crate) gname: Vec<u8>,
    pub(crate) devmajor: u32,
    pub(crate) devminor: u32,
    pub(crate) prefix: Vec<u8>,
}

fn put(field: &mut [u8], bytes: &[u8]) {
    field[..bytes.len()].copy_from_slice(bytes);
}

/// `width - 1` octal digits and a NUL. The caller has checked that the value fits.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    debug_assert_eq!(text.len(), digits);
    put(field, text.as_bytes());
    field[digits] = 0;
}

/// Octal when it fits in 11 digits, else GNU base-256 (0x80, then big-endian).
fn put_size(field: &mut [u8; 12], value: u64) {
    if value <= OCTAL11_MAX {
        put_octal(field, value);
    } else {
        *field = [0; 12];
        field[0] = 0x80;
        field[4..].copy_from_slice(&value.to_be_bytes());
    }
}

fn get_numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field.len() < 9 || field[0] != 0x80 || field[1..field.len() - 8].iter().any(|&b| b != 0)
        {
            return None;
        }
        let mut v = [0u8; 8];
        v.copy_from_slice(&field[field.len() - 8..]);
        return Some(u64::from_be_bytes(v));
    }
    let digits = field.split(|&b| b == 0 || b == b' ').next().unwrap_or(&[]);
    if digits.is_empty() || digits.len() > 22 || !digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    let mut v: u64 = 0;
    for d in digits {
        v = v.checked_mul(8)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

fn get_str(field: &[u8]) -> Vec<u8> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field[..end].to_vec()
}

/// The header checksum: the sum of all bytes, the checksum field counted as spaces.
fn checksum(block: &[u8; BLOCK]) -> u32 {
    block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum()
}

impl Ustar {
    /// The header block. The caller has checked every field fits.
    pub(crate) fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        put(&mut b[0..100], &self.name);
        put_octal(&mut b[100..108], u64::from(self.mode));
        put_octal(&mut b[108..116], self.uid);
        put_octal(&mut b[116..124], self.gid);
        let mut size = [0u8; 12];
        put_size(&mut size, self.size);
        b[124..136].copy_from_slice(&size);
        put_octal(&mut b[136..148], self.mtime);
        b[156] = self.typeflag;
        put(&mut b[157..257], &self.linkname);
        put(&mut b[257..263], b"ustar\0");
        put(&mut b[263..265], b"00");
        put(&mut b[265..297], &self.uname);
        put(&mut b[297..329], &self.gname);
        put_octal(&mut b[329..337], u64::from(self.devmajor));
        put_octal(&mut b[337..345], u64::from(self.devminor));
        put(&mut b[345..500], &self.prefix);
        let sum = checksum(&b);
        put(&mut b[148..156], format!("{sum:06o}\0 ").as_bytes());
        b
    }

    /// Reads the fields back; `None` if a field or the checksum is unreadable.
    pub(crate) fn decode(b: &[u8; BLOCK]) -> Option<Ustar> {
        if &b[257..263] != b"ustar\0" || &b[263..265] != b"00" {
            return None;
        }
        if get_numeric(&b[148..156])? != u64::from(checksum(b)) {
            return None;
        }
        Some(Ustar {
            name: get_str(&b[0..100]),
            mode: u32::try_from(get_numeric(&b[100..108])?).ok()?,
            uid: get_numeric(&b[108..116])?,
            gid: get_numeric(&b[116..124])?,
            size: get_numeric(&b[124..136])?,
            mtime: get_numeric(&b[136..148])?,
            typeflag: b[156],
            linkname: get_str(&b[157..257]),
            uname: get_str(&b[265..297]),
            gname: get_str(&b[297..329]),
            devmajor: u32::try_from(get_numeric(&b[329..337])?).ok()?,
            devminor: u32::try_from(get_numeric(&b[337..345])?).ok()?,
            prefix: get_str(&b[345..500]),
        })
    }

    /// A plain `0600` regular-file header owned by 0:0 at time 0.
    fn opaque(name: &[u8], typeflag: u8, size: u64, mode: u32) -> Ustar {
        Ustar {
            name: name.to_vec(),
            mode,
            size,
            typeflag,
            ..Ustar::default()
        }
    }
}

/// The header block of an encrypted member: its id as name, mode 0600, time 0.
pub(crate) fn member_header(member: &MemberId, size: u64) -> [u8; BLOCK] {
    Ustar::opaque(member.to_string().as_bytes(), b'0', size, 0o600).encode()
}

/// A pax extended header ('x') carrying `records`, padded to whole blocks.
pub(crate) fn pax_header(records: &[u8]) -> Vec<u8> {
    let mut out = Ustar::opaque(b"././@PaxHeader", b'x', records.len() as u64, 0o644)
        .encode()
        .to_vec();
    out.extend_from_slice(records);
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    out
}

/// Appends one pax record: `"<len> <key>=<value>\n"`, `len` counting the whole record.
pub(crate) fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Splits pax records into (key, value) pairs.
pub(crate) fn parse_pax(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .take(21)
            .position(|&b| b == b' ')
            .ok_or("pax record without a length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .filter(|s| !s.starts_with('0'))
            .and_then(|s| s.parse().ok())
            .ok_or("bad pax record length")?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("pax record length out of range".into());
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("pax record without '='")?;
        let key = String::from_utf8(record[..eq].to_vec()).map_err(|_| "pax key not UTF-8")?;
        out.push((key, record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// The brand of a segment, in the global header's `comment` record.
pub(crate) const SEGMENT_BRAND: &str = "cbfs-segment";
/// The segment version this release writes.
pub(crate) const SEGMENT_VERSION: u16 = 1;
/// Length of the global header: one header block and one block of records.
pub(crate) const GLOBAL_HEADER_LEN: u64 = 1024;

/// The segment's first 1024 bytes: a pax global header whose `comment` record names
/// the brand, version, segment id and mode. Tar readers ignore `comment`.
pub(crate) fn global_header(segment: &SegmentId, encrypted: bool) -> Vec<u8> {
    let mode = if encrypted { "encrypted" } else { "plain" };
    let comment = format!("{SEGMENT_BRAND}/{SEGMENT_VERSION} {segment} {mode}");
    let mut records = Vec::new();
    pax_record(&mut records, "comment", comment.as_bytes());
    let mut out = Ustar::opaque(b"pax_global_header", b'g', records.len() as u64, 0o644)
        .encode()
        .to_vec();
    out.extend_from_slice(&records);
    out.resize(GLOBAL_HEADER_LEN as usize, 0);
    out
}

/// What a global header says, before it is checked against [`global_header`].
pub(crate) enum GlobalHeader {
    /// Not a cbfs segment.
    NotOurs,
    /// A cbfs segment of another version.
    Version(String),
    /// Ours: the id and whether it is encrypted.
    V1(SegmentId, bool),
}

/// Reads the global header's fields; the caller compares against [`global_header`].
pub(crate) fn parse_global_header(bytes: &[u8; GLOBAL_HEADER_LEN as usize]) -> GlobalHeader {
    let mut first = [0u8; BLOCK];
    first.copy_from_slice(&bytes[..BLOCK]);
    let Some(h) = Ustar::decode(&first) else {
        return GlobalHeader::NotOurs;
    };
    if h.typeflag != b'g' || h.size > BLOCK as u64 {
        return GlobalHeader::NotOurs;
    }
    let Ok(records) = parse_pax(&bytes[BLOCK..BLOCK + h.size as usize]) else {
        return GlobalHeader::NotOurs;
    };
    let Some((_, comment)) = records.iter().find(|(k, _)| k == "comment") else {
        return GlobalHeader::NotOurs;
    };
    let comment = String::from_utf8_lossy(comment);
    let Some(rest) = comment
        .strip_prefix(SEGMENT_BRAND)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return GlobalHeader::NotOurs;
    };
    let mut words = rest.split(' ');
    let version = words.next().unwrap_or("");
    if version != SEGMENT_VERSION.to_string() {
        return GlobalHeader::Version(version.chars().take(16).collect());
    }
    let id = words.next().and_then(|w| w.parse::<SegmentId>().ok());
    let mode = match words.next() {
        Some("encrypted") => Some(true),
        Some("plain") => Some(false),
        _ => None,
    };
    match (id, mode) {
        (Some(id), Some(mode)) => GlobalHeader::V1(id, mode),
        _ => GlobalHeader::NotOurs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        for n in [0usize, 1, 5, 90, 95, 96, 97, 990, 995, 1000] {
            let mut out = Vec::new();
            pax_record(&mut out, "path", &vec![b'a'; n]);
            let space = out.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..space]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value length {n}");
            let parsed = parse_pax(&out).unwrap();
            assert_eq!(parsed, vec![("path".to_string(), vec![b'a'; n])]);
        }
    }

    #[test]
    fn ustar_round_trip_and_base256_size() {
        let h = Ustar {
            name: b"x".to_vec(),
            mode: 0o755,
            uid: 1000,
            gid: 100,
            size: 1 << 40,
            mtime: 1_700_000_000,
            typeflag: b'0',
            uname: b"alice".to_vec(),
            ..Ustar::default()
        };
        let block = h.encode();
        assert_eq!(block[124], 0x80);
        assert_eq!(Ustar::decode(&block).unwrap(), h);
        let mut bad = block;
        bad[0] ^= 1;
        assert!(Ustar::decode(&bad).is_none(), "checksum catches a flip");
    }

    #[test]
    fn global_header_round_trip() {
        let id = SegmentId::from_bytes([3; 16]);
        let bytes: [u8; 1024] = global_header(&id, true).try_into().unwrap();
        assert!(matches!(parse_global_header(&bytes), GlobalHeader::V1(i, true) if i == id));
    }
}
