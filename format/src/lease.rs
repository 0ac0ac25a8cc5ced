//! The collector's lease: which garbage collector may delete, until when.
//!
//! Leases are write-once objects numbered by generation
//! (`gc/lease/<generation>.lease`); the one with the highest generation is
//! the lease's state. A collector takes, renews or releases the lease by
//! creating the next generation with a conditional write: of two
//! collectors, only one can create it, and the other refuses to go on,
//! naming the holder.
//!
//! ```text
//! "CBFSLEAS" u16 version = 1
//! u64 generation  holder id (16)  i64 acquired  i64 expires
//! u8 state        1 held, 2 released
//! bytes8 host     UTF-8, the holder's host name (for people)
//! u32 pid         the holder's process id on that host
//! ```

use crate::codec::{Dec, Enc};
use crate::error::{Error, ObjectKind};
use crate::ids::RecordId;

const BRAND: &[u8; 8] = b"CBFSLEAS";
pub(crate) const VERSION: u16 = 1;

/// One generation of the collector's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Its generation: the highest one in the store is the lease's state.
    pub generation: u64,
    /// The collector run holding it.
    pub holder: RecordId,
    /// When the holder took it (seconds since the Unix epoch).
    pub acquired_unix: i64,
    /// When it runs out unless renewed.
    pub expires_unix: i64,
    /// Whether the holder gave it back.
    pub released: bool,
    /// The holder's host name.
    pub host: String,
    /// The holder's process id.
    pub pid: u32,
}

impl Lease {
    /// The canonical bytes. The host name is cut to 255 bytes (at a
    /// character boundary).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut e = Enc::with_brand(BRAND, VERSION);
        e.u64(self.generation);
        e.raw(self.holder.as_bytes());
        e.i64(self.acquired_unix);
        e.i64(self.expires_unix);
        e.u8(if self.released { 2 } else { 1 });
        let mut end = self.host.len().min(255);
        while !self.host.is_char_boundary(end) {
            end -= 1;
        }
        e.bytes8(&self.host.as_bytes()[..end]);
        e.u32(self.pid);
        e.into_vec()
    }

    /// Parses strictly.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (mut d, version) = Dec::brand(bytes, BRAND, ObjectKind::Lease)?;
        if version != VERSION {
            return Err(Dec::unknown_version(ObjectKind::Lease, version));
        }
        let generation = d.u64()?;
        let holder = RecordId::from_bytes(d.array()?);
        let acquired_unix = d.i64()?;
        let expires_unix = d.i64()?;
        let at = d.pos();
        let released = match d.u8()? {
            1 => false,
            2 => true,
            s => return Err(d.err_at(at, format!("unknown state {s}"))),
        };
        let at = d.pos();
        let host = std::str::from_utf8(d.bytes8()?)
            .ok()
            .filter(|h| !h.contains('\0'))
            .ok_or_else(|| d.err_at(at, "the host name is not UTF-8 without NUL"))?
            .to_owned();
        let pid = d.u32()?;
        d.finish()?;
        Ok(Lease {
            generation,
            holder,
            acquired_unix,
            expires_unix,
            released,
            host,
            pid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let l = Lease {
            generation: 7,
            holder: RecordId::random(),
            acquired_unix: 100,
            expires_unix: 200,
            released: false,
            host: "büro-1".into(),
            pid: 4242,
        };
        let bytes = l.to_bytes();
        assert_eq!(Lease::from_bytes(&bytes).unwrap(), l);
        let mut b = bytes.clone();
        let state = 8 + 2 + 8 + 16 + 8 + 8;
        b[state] = 3;
        assert!(Lease::from_bytes(&b).is_err());
        let long = Lease {
            host: "é".repeat(200),
            ..l
        };
        let parsed = Lease::from_bytes(&long.to_bytes()).unwrap();
        assert!(parsed.host.len() <= 255 && long.host.starts_with(&parsed.host));
    }
}
