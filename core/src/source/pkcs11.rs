//! `pkcs11:` key sources: a key wrapped by an AES key that lives in a
//! PKCS#11 token (a hardware security module, or SoftHSM) and never leaves
//! it.
//!
//! The source is an RFC 7512 URI. Its path attributes pick the key:
//! `token` (the token's label), `object` (the key's label), optionally `id`
//! (the key's CKA_ID, percent-encoded bytes), `slot-id`. Its query
//! attributes say how to reach it: `module-path` (the PKCS#11 library; else
//! `CBFS_PKCS11_MODULE`), `pin-source` (`file:PATH` or a path: a 0600 file
//! holding the PIN; `env:NAME`: an environment variable; else the variable
//! `CBFS_PKCS11_PIN`), and `x-wrapped` (the file that holds the wrapped
//! key). `pin-value` is refused: a PIN in a key source would be on a
//! command line.
//!
//! ```text
//! pkcs11:token=cbfs;object=cbfs-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/k/hsm.pin&x-wrapped=/k/admin.wrapped
//! ```
//!
//! The file holds one line, `cbfs-pkcs11-v1:` and the base64 of a 12-byte
//! IV, then the AES-GCM ciphertext and 16-byte tag of the 32-byte key, with
//! `cbfs pkcs11 wrap v1` as associated data. The token does the AES-GCM.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rand::RngCore;
use zeroize::Zeroizing;

use super::Rewrapped;
use super::file::{read_private, replace_private, write_new_private};
use super::pkcs11_uri::{PinSource, Pkcs11Uri};
use crate::error::{Error, Result};
use crate::keys::Seed;

const SERVICE: &str = "PKCS#11";
const PREFIX: &str = "cbfs-pkcs11-v1:";
const AAD: &[u8] = b"cbfs pkcs11 wrap v1";
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// The environment variable that names the PKCS#11 library.
pub const MODULE_ENV: &str = "CBFS_PKCS11_MODULE";
/// The environment variable that holds the PIN when the URI names no source.
pub const PIN_ENV: &str = "CBFS_PKCS11_PIN";

fn failure(uri: &Pkcs11Uri, op: &'static str, reason: impl Into<String>) -> Error {
    Error::Kms {
        service: SERVICE,
        op,
        location: uri.to_string(),
        reason: reason.into(),
        transient: false,
    }
}

/// The PIN, from the URI's pin-source or `CBFS_PKCS11_PIN`.
fn pin(uri: &Pkcs11Uri) -> Result<AuthPin> {
    let text = match &uri.pin_source {
        Some(PinSource::File(path)) => {
            let bytes = read_private(path)?;
            let text = std::str::from_utf8(&bytes).map_err(|_| Error::Malformed {
                location: format!("PIN file {}", path.display()),
                reason: "it is not UTF-8".into(),
            })?;
            Zeroizing::new(text.lines().next().unwrap_or_default().to_owned())
        }
        Some(PinSource::Env(var)) => {
            Zeroizing::new(std::env::var(var).map_err(|_| Error::LockedKey {
                location: uri.to_string(),
                what: "a token PIN",
                hint: "the environment variable named by pin-source=env:NAME is not set",
            })?)
        }
        None => Zeroizing::new(std::env::var(PIN_ENV).map_err(|_| Error::LockedKey {
            location: uri.to_string(),
            what: "a token PIN",
            hint: "give pin-source=file:PATH (a 0600 file) in the URI, or set CBFS_PKCS11_PIN",
        })?),
    };
    Ok(AuthPin::new(text.to_string()))
}

/// An open, logged-in session on the token and the handle of the key.
struct Token {
    session: Session,
    key: ObjectHandle,
    // Kept for as long as the session: dropping it finalizes the library.
    _ctx: Pkcs11,
}

fn open(uri: &Pkcs11Uri, op: &'static str) -> Result<Token> {
    let module = uri
        .module_path
        .clone()
        .or_else(|| std::env::var_os(MODULE_ENV).map(PathBuf::from))
        .ok_or_else(|| {
            failure(
                uri,
                op,
                "no PKCS#11 library: give module-path=PATH in the URI, or set CBFS_PKCS11_MODULE",
            )
        })?;
    if !module.is_file() {
        return Err(failure(
            uri,
            op,
            format!("the PKCS#11 library {} does not exist", module.display()),
        ));
    }
    let ctx = Pkcs11::new(&module).map_err(|e| {
        failure(
            uri,
            op,
            format!("cannot load the PKCS#11 library {}: {e}", module.display()),
        )
    })?;
    ctx.initialize(CInitializeArgs::OsThreads)
        .map_err(|e| failure(uri, op, format!("cannot initialize the library: {e}")))?;
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| failure(uri, op, format!("cannot list the slots: {e}")))?;
    let mut found = None;
    for slot in slots {
        if uri.slot_id.is_some_and(|s| s != slot.id()) {
            continue;
        }
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if info.label().trim_end() == uri.token {
            found = Some(slot);
            break;
        }
    }
    let slot = found.ok_or_else(|| {
        failure(
            uri,
            op,
            format!("no token labelled `{}` is present", uri.token),
        )
    })?;
    let session = ctx
        .open_ro_session(slot)
        .map_err(|e| failure(uri, op, format!("cannot open a session: {e}")))?;
    let pin = pin(uri)?;
    session.login(UserType::User, Some(&pin)).map_err(|e| {
        // A wrong PIN is a refusal of key material (exit 3), as a wrong
        // passphrase is; the PIN itself is never printed.
        failure(uri, op, format!("the token refused the PIN: {e}"))
    })?;
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(uri.object.as_bytes().to_vec()),
    ];
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    let keys = session
        .find_objects(&template)
        .map_err(|e| failure(uri, op, format!("cannot search the token: {e}")))?;
    let key = match keys.as_slice() {
        [k] => *k,
        [] => {
            return Err(Error::NotFound {
                location: uri.to_string(),
                hint: ": the token holds no secret key with that label (and id)",
            });
        }
        more => {
            return Err(failure(
                uri,
                op,
                format!(
                    "{} secret keys have that label: add id=... to the URI to pick one",
                    more.len()
                ),
            ));
        }
    };
    Ok(Token {
        session,
        key,
        _ctx: ctx,
    })
}

impl Token {
    fn wrap(&self, uri: &Pkcs11Uri, seed: &Seed) -> Result<String> {
        let mut iv = [0u8; IV_LEN];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, AAD, ((TAG_LEN * 8) as u64).into())
            .map_err(|e| failure(uri, "encrypt", e.to_string()))?;
        let sealed = self
            .session
            .encrypt(&Mechanism::AesGcm(params), self.key, seed.expose_secret_bytes())
            .map_err(|e| {
                failure(
                    uri,
                    "encrypt",
                    format!("the token cannot encrypt with the key (an AES key allowed to encrypt is needed): {e}"),
                )
            })?;
        let mut blob = iv.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}\n", B64.encode(blob)))
    }

    fn unwrap(&self, uri: &Pkcs11Uri, blob: &[u8]) -> Result<Seed> {
        if blob.len() <= IV_LEN + TAG_LEN {
            return Err(Error::Malformed {
                location: uri.to_string(),
                reason: "the wrapped key is too short".into(),
            });
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&blob[..IV_LEN]);
        let params = GcmParams::new(&mut iv, AAD, ((TAG_LEN * 8) as u64).into())
            .map_err(|e| failure(uri, "decrypt", e.to_string()))?;
        let plain = Zeroizing::new(
            self.session
                .decrypt(&Mechanism::AesGcm(params), self.key, &blob[IV_LEN..])
                .map_err(|e| {
                    failure(
                        uri,
                        "decrypt",
                        format!(
                            "the token cannot unwrap it: it was wrapped by another key, or altered ({e})"
                        ),
                    )
                })?,
        );
        Seed::from_slice(&plain, &uri.to_string())
    }

    /// Whether the key's value can leave the token (a warning, not an error).
    fn extractable(&self) -> bool {
        self.session
            .get_attributes(
                self.key,
                &[AttributeType::Extractable, AttributeType::Sensitive],
            )
            .map(|attrs| {
                attrs.iter().any(|a| {
                    matches!(a, Attribute::Extractable(true))
                        || matches!(a, Attribute::Sensitive(false))
                })
            })
            .unwrap_or(false)
    }
}

fn read_wrapped(uri: &Pkcs11Uri) -> Result<Vec<u8>> {
    let bytes = read_private(&uri.wrapped)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Error::Malformed {
        location: uri.to_string(),
        reason: "the wrapped key is not text".into(),
    })?;
    let b64 = text
        .trim()
        .strip_prefix(PREFIX)
        .ok_or_else(|| Error::Malformed {
            location: uri.to_string(),
            reason: format!("it does not hold a PKCS#11-wrapped key ({PREFIX}...)"),
        })?;
    B64.decode(b64).map_err(|_| Error::Malformed {
        location: uri.to_string(),
        reason: "the wrapped key is not base64".into(),
    })
}

pub(super) fn store_new(uri: &Pkcs11Uri, seed: &Seed) -> Result<()> {
    if uri.wrapped.exists() {
        return Err(Error::AlreadyExists {
            location: uri.to_string(),
        });
    }
    let token = open(uri, "encrypt")?;
    if token.extractable() {
        tracing::warn!(
            source = %uri,
            "the wrapping key can leave the token (extractable, or not sensitive)"
        );
    }
    let line = token.wrap(uri, seed)?;
    // Prove the token opens what it sealed before the file names it.
    let check = token.unwrap(uri, &read_line(&line))?;
    if check.expose_secret_bytes() != seed.expose_secret_bytes() {
        return Err(failure(
            uri,
            "encrypt",
            "the token does not decrypt what it encrypted",
        ));
    }
    write_new_private(&uri.wrapped, line.as_bytes())
}

fn read_line(line: &str) -> Vec<u8> {
    B64.decode(line.trim().trim_start_matches(PREFIX))
        .expect("we wrote base64")
}

pub(super) fn load(uri: &Pkcs11Uri) -> Result<Seed> {
    let blob = read_wrapped(uri)?;
    let token = open(uri, "decrypt")?;
    token.unwrap(uri, &blob)
}

/// Unwraps with the URI's key and wraps again with `to` (another key
/// object of the token; the same one, with a fresh IV, when `None`).
pub(super) fn rewrap(uri: &Pkcs11Uri, to: Option<&str>) -> Result<Rewrapped> {
    let blob = read_wrapped(uri)?;
    let seed = open(uri, "decrypt")?.unwrap(uri, &blob)?;
    let target = uri.with_object(to.unwrap_or(&uri.object));
    let token = open(&target, "encrypt")?;
    let line = token.wrap(&target, &seed)?;
    if token
        .unwrap(&target, &read_line(&line))?
        .expose_secret_bytes()
        != seed.expose_secret_bytes()
    {
        return Err(failure(
            &target,
            "encrypt",
            "the token does not decrypt what it encrypted",
        ));
    }
    replace_private(&uri.wrapped, line.as_bytes())?;
    Ok(Rewrapped {
        from: format!("key object `{}`", uri.object),
        to: format!("key object `{}`", target.object),
        from_version: None,
        to_version: None,
    })
}
