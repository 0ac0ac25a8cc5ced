//! Big-endian, length-prefixed binary encoding shared by every object.
//!
//! Every object starts with an 8-byte brand and a big-endian `u16` version.
//! [`Dec`] is a bounds-checked cursor: it never panics and refuses trailing bytes.

use crate::error::{Error, ObjectKind};

/// Builds an object's bytes.
#[derive(Default)]
pub(crate) struct Enc(pub(crate) Vec<u8>);

impl Enc {
    pub(crate) fn with_brand(brand: &[u8; 8], version: u16) -> Self {
        let mut e = Enc(Vec::with_capacity(256));
        e.raw(brand);
        e.u16(version);
        e
    }
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.raw(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.raw(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.raw(&v.to_be_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.raw(&v.to_be_bytes());
    }
    /// `u8` length, then bytes. The caller has checked `bytes.len() <= 255`.
    pub(crate) fn bytes8(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.len() <= usize::from(u8::MAX));
        self.u8(bytes.len() as u8);
        self.raw(bytes);
    }
    /// `u16` length, then bytes. The caller has checked `bytes.len() <= 65535`.
    pub(crate) fn bytes16(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.len() <= usize::from(u16::MAX));
        self.u16(bytes.len() as u16);
        self.raw(bytes);
    }
    /// `u32` length, then bytes. The caller has checked the length fits.
    pub(crate) fn bytes32(&mut self, bytes: &[u8]) {
        debug_assert!(u32::try_from(bytes.len()).is_ok());
        self.u32(bytes.len() as u32);
        self.raw(bytes);
    }
    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// Reads an object's bytes, strictly.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    object: ObjectKind,
}

impl<'a> Dec<'a> {
    pub(crate) fn new(buf: &'a [u8], object: ObjectKind) -> Self {
        Dec {
            buf,
            pos: 0,
            object,
        }
    }

    /// Checks the brand, then reads the version and returns it.
    pub(crate) fn brand(
        buf: &'a [u8],
        brand: &[u8; 8],
        object: ObjectKind,
    ) -> Result<(Self, u16), Error> {
        if buf.len() < 8 || &buf[..8] != brand {
            return Err(Error::BadBrand { object });
        }
        let mut d = Dec {
            buf,
            pos: 8,
            object,
        };
        let version = d.u16()?;
        Ok((d, version))
    }

    pub(crate) fn unknown_version(object: ObjectKind, version: u16) -> Error {
        Error::UnknownVersion {
            object,
            found: version.to_string(),
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// An error at the current position.
    pub(crate) fn err(&self, reason: impl Into<String>) -> Error {
        self.err_at(self.pos, reason)
    }

    pub(crate) fn err_at(&self, pos: usize, reason: impl Into<String>) -> Error {
        Error::Malformed {
            object: self.object,
            offset: pos as u64,
            reason: reason.into(),
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.remaining() < n {
            return Err(self.err(format!(
                "needs {n} more bytes, only {} left",
                self.remaining()
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, Error> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub(crate) fn bytes8(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    pub(crate) fn bytes16(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    /// `u32` length, at most `max`, then bytes.
    pub(crate) fn bytes32(&mut self, max: usize) -> Result<&'a [u8], Error> {
        let at = self.pos;
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.err_at(at, format!("length {n} exceeds the limit {max}")));
        }
        self.take(n)
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), Error> {
        if self.remaining() != 0 {
            return Err(self.err(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dec_is_bounds_checked() {
        let mut d = Dec::new(&[0, 5, 1, 2], ObjectKind::Summary);
        assert!(d.bytes16().is_err());
        let mut d = Dec::new(&[0, 0, 0, 9], ObjectKind::Summary);
        assert!(d.bytes32(8).is_err());
        let d = Dec::new(&[1], ObjectKind::Summary);
        assert!(d.finish().is_err());
    }

    #[test]
    fn brand_and_version() {
        let e = Enc::with_brand(b"CBFSTEST", 7).into_vec();
        let (_, v) = Dec::brand(&e, b"CBFSTEST", ObjectKind::Summary).unwrap();
        assert_eq!(v, 7);
        assert!(matches!(
            Dec::brand(&e, b"CBFSXXXX", ObjectKind::Summary),
            Err(Error::BadBrand { .. })
        ));
        assert!(matches!(
            Dec::brand(b"CBF", b"CBFSTEST", ObjectKind::Summary),
            Err(Error::BadBrand { .. })
        ));
    }
}
