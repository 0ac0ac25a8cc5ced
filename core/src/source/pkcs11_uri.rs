//! The `pkcs11:` key source URI (RFC 7512), parsed without the PKCS#11
//! library, so that every build reads and prints it.

use std::fmt;
use std::path::PathBuf;

/// A parsed `pkcs11:` URI: which key, in which token, and how to get in.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// The token's label.
    pub token: String,
    /// The key object's label.
    pub object: String,
    /// The key object's CKA_ID, if given.
    pub id: Option<Vec<u8>>,
    /// The slot, if given.
    pub slot_id: Option<u64>,
    /// The PKCS#11 library.
    pub module_path: Option<PathBuf>,
    /// Where the PIN comes from.
    pub pin_source: Option<PinSource>,
    /// The file that holds the wrapped key.
    pub wrapped: PathBuf,
}

/// Where a token's PIN comes from: never the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// A 0600 file holding it (its first line).
    File(PathBuf),
    /// An environment variable holding it.
    Env(String),
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

fn pct_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("`{s}`: a `%` without two hex digits"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("`{s}`: bad `%{hex}`"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn pct_text(s: &str) -> std::result::Result<String, String> {
    String::from_utf8(pct_decode(s)?).map_err(|_| format!("`{s}` is not UTF-8"))
}

fn pct_encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Pkcs11Uri {
    /// Parses the part after `pkcs11:`.
    pub fn parse(rest: &str) -> std::result::Result<Self, String> {
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, q),
            None => (rest, ""),
        };
        let mut token = None;
        let mut object = None;
        let mut id = None;
        let mut slot_id = None;
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| format!("path attribute `{attr}` has no `=`"))?;
            match name {
                "token" => token = Some(pct_text(value)?),
                "object" => object = Some(pct_text(value)?),
                "id" => id = Some(pct_decode(value)?),
                "slot-id" => {
                    slot_id = Some(
                        value
                            .parse()
                            .map_err(|_| format!("slot-id `{value}` is not a number"))?,
                    )
                }
                "type" if value == "secret-key" => {}
                "type" => return Err(format!("type `{value}`: the wrapping key is a secret-key")),
                "manufacturer"
                | "model"
                | "serial"
                | "library-description"
                | "library-manufacturer"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer" => {}
                other => return Err(format!("unknown path attribute `{other}`")),
            }
        }
        let mut module_path = None;
        let mut pin_source = None;
        let mut wrapped = None;
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| format!("query attribute `{attr}` has no `=`"))?;
            match name {
                "module-path" => module_path = Some(PathBuf::from(pct_text(value)?)),
                "pin-source" => {
                    let v = pct_text(value)?;
                    pin_source = Some(if let Some(var) = v.strip_prefix("env:") {
                        PinSource::Env(var.to_owned())
                    } else {
                        let p = v
                            .strip_prefix("file://")
                            .or_else(|| v.strip_prefix("file:"))
                            .unwrap_or(&v);
                        PinSource::File(PathBuf::from(p))
                    });
                }
                "pin-value" => {
                    return Err(
                        "pin-value is refused: a PIN in a key source would be on a command line; use pin-source=file:PATH (a 0600 file) or the CBFS_PKCS11_PIN variable".into(),
                    );
                }
                "x-wrapped" => wrapped = Some(PathBuf::from(pct_text(value)?)),
                "module-name" => {
                    return Err("module-name is not supported: give module-path".into());
                }
                other => return Err(format!("unknown query attribute `{other}`")),
            }
        }
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or("it names no token (token=LABEL)")?;
        let object = object
            .filter(|o| !o.is_empty())
            .ok_or("it names no key object (object=LABEL)")?;
        let wrapped = wrapped
            .filter(|w| !w.as_os_str().is_empty())
            .ok_or("it names no file for the wrapped key (?x-wrapped=PATH)")?;
        Ok(Pkcs11Uri {
            token,
            object,
            id,
            slot_id,
            module_path,
            pin_source,
            wrapped,
        })
    }

    /// The same URI naming another key object of the same token.
    pub fn with_object(&self, object: &str) -> Self {
        Pkcs11Uri {
            object: object.to_owned(),
            id: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keep = b":/@!$'()*+,";
        write!(
            f,
            "pkcs11:token={};object={}",
            pct_encode(self.token.as_bytes(), keep),
            pct_encode(self.object.as_bytes(), keep)
        )?;
        if let Some(id) = &self.id {
            write!(f, ";id={}", pct_encode(id, b""))?;
        }
        if let Some(s) = self.slot_id {
            write!(f, ";slot-id={s}")?;
        }
        let mut query = Vec::new();
        if let Some(m) = &self.module_path {
            query.push(format!(
                "module-path={}",
                pct_encode(m.as_os_str().as_encoded_bytes(), b"/:")
            ));
        }
        match &self.pin_source {
            Some(PinSource::File(p)) => query.push(format!(
                "pin-source=file:{}",
                pct_encode(p.as_os_str().as_encoded_bytes(), b"/:")
            )),
            Some(PinSource::Env(v)) => query.push(format!("pin-source=env:{v}")),
            None => {}
        }
        query.push(format!(
            "x-wrapped={}",
            pct_encode(self.wrapped.as_os_str().as_encoded_bytes(), b"/:")
        ));
        write!(f, "?{}", query.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7512_uris_and_round_trips() {
        let u = Pkcs11Uri::parse(
            "token=cbfs%20hsm;object=kek;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/k/pin&x-wrapped=/k/admin.wrapped",
        )
        .unwrap();
        assert_eq!(u.token, "cbfs hsm");
        assert_eq!(u.object, "kek");
        assert_eq!(u.id.as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(u.pin_source, Some(PinSource::File("/k/pin".into())));
        assert_eq!(u.wrapped, PathBuf::from("/k/admin.wrapped"));
        let text = u.to_string();
        assert_eq!(
            Pkcs11Uri::parse(text.strip_prefix("pkcs11:").unwrap()).unwrap(),
            u
        );
        let env = Pkcs11Uri::parse("token=t;object=o?pin-source=env:HSM_PIN&x-wrapped=w").unwrap();
        assert_eq!(env.pin_source, Some(PinSource::Env("HSM_PIN".into())));
    }

    #[test]
    fn refuses_pins_on_the_command_line_and_incomplete_uris() {
        let err = Pkcs11Uri::parse("token=t;object=o?pin-value=1234&x-wrapped=w").unwrap_err();
        assert!(err.contains("pin-value is refused"), "{err}");
        assert!(!err.contains("1234"));
        assert!(
            Pkcs11Uri::parse("token=t?x-wrapped=w")
                .unwrap_err()
                .contains("object")
        );
        assert!(
            Pkcs11Uri::parse("object=o?x-wrapped=w")
                .unwrap_err()
                .contains("token")
        );
        assert!(
            Pkcs11Uri::parse("token=t;object=o")
                .unwrap_err()
                .contains("x-wrapped")
        );
        assert!(Pkcs11Uri::parse("token=t;object=o;type=private?x-wrapped=w").is_err());
    }
}
