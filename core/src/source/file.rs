//! `file:PATH` key sources.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use secrecy::SecretString;
use zeroize::Zeroizing;

use super::{Protection, Rewrapped, Unlock};
use crate::error::{Error, Result};
use crate::keys::{SEED_LEN, Seed};

const AGE_BINARY: &[u8] = b"age-encryption.org/";
const AGE_ARMOR: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
/// Large enough for an age file wrapping a key for many recipients.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Opens a secret file for reading, refusing one that group or others can
/// access, as ssh does.
pub(crate) fn open_private(path: &Path) -> Result<File> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                location: format!("file:{}", path.display()),
                hint: "",
            }
        } else {
            Error::io("cannot open key file", path, e)
        }
    })?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("cannot stat key file", path, e))?;
    if !meta.is_file() {
        return Err(Error::Malformed {
            location: format!("file:{}", path.display()),
            reason: "it is not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(file)
}

/// Reads a whole secret file (bounded) into zeroizing memory.
pub fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let file = open_private(path)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("cannot read key file", path, e))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(Error::Malformed {
            location: format!("file:{}", path.display()),
            reason: "it is far larger than any key file".into(),
        });
    }
    Ok(bytes)
}

/// Creates `path` with mode 0600 and writes `bytes`, durably. Never
/// overwrites: a key lost to an overwrite is data lost for good.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::AlreadyExists {
                    location: format!("file:{}", path.display()),
                }
            } else {
                Error::io("cannot create key file", path, e)
            }
        })?;
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("cannot write key file", path, e));
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result?;
    sync_parent(path);
    Ok(())
}

/// Replaces `path` atomically with a new 0600 file holding `bytes`.
pub fn replace_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    write_new_private(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("cannot replace key file", path, e)
    })?;
    sync_parent(path);
    Ok(())
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        let dir = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

pub(super) fn store_new(path: &Path, seed: &Seed, protection: &Protection) -> Result<()> {
    write_new_private(path, &protected(path, seed, protection)?)
}

/// Wraps the key of `path` again under `protection`, in place: the same
/// key, a new passphrase or new recipients (or none: the raw key).
pub(super) fn rewrap(path: &Path, unlock: &Unlock, protection: &Protection) -> Result<Rewrapped> {
    let before = describe(&read_private(path)?);
    let seed = load(path, unlock)?;
    replace_private(path, &protected(path, &seed, protection)?)?;
    Ok(Rewrapped {
        from: before.into(),
        to: match protection {
            Protection::None => "no protection (the raw key)",
            Protection::Passphrase(_) => "an age passphrase",
            Protection::Recipients(_) => "age recipients",
        }
        .into(),
        from_version: None,
        to_version: None,
    })
}

fn describe(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(AGE_BINARY) || bytes.starts_with(AGE_ARMOR) {
        "an age wrapping"
    } else {
        "no protection (the raw key)"
    }
}

/// The bytes of a key file for `seed` under `protection`.
fn protected(path: &Path, seed: &Seed, protection: &Protection) -> Result<Zeroizing<Vec<u8>>> {
    let location = || format!("file:{}", path.display());
    let bytes: Zeroizing<Vec<u8>> = match protection {
        Protection::None => Zeroizing::new(seed.expose_secret_bytes().to_vec()),
        Protection::Passphrase(pass) => age_wrap(
            age::Encryptor::with_user_passphrase(pass.clone()),
            seed,
            path,
        )?,
        Protection::Recipients(list) => {
            let mut recipients: Vec<age::x25519::Recipient> = Vec::new();
            for r in list {
                recipients.push(r.parse().map_err(|e| Error::BadSource {
                    spec: location(),
                    reason: format!(
                        "age recipient `{r}` is not an x25519 recipient (age1...): {e}"
                    ),
                })?);
            }
            if recipients.is_empty() {
                return Err(Error::BadSource {
                    spec: location(),
                    reason: "no age recipient given".into(),
                });
            }
            let enc = age::Encryptor::with_recipients(
                recipients.iter().map(|r| r as &dyn age::Recipient),
            )
            .map_err(|e| Error::AgeUnwrap {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            age_wrap(enc, seed, path)?
        }
    };
    Ok(bytes)
}

fn age_wrap(enc: age::Encryptor, seed: &Seed, path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Vec::new();
    let mut writer = enc
        .wrap_output(&mut out)
        .map_err(|e| Error::io("cannot wrap key", path, e))?;
    writer
        .write_all(seed.expose_secret_bytes())
        .and_then(|()| writer.finish().map(|_| ()))
        .map_err(|e| Error::io("cannot wrap key", path, e))?;
    Ok(Zeroizing::new(out))
}

pub(super) fn load(path: &Path, unlock: &Unlock) -> Result<Seed> {
    let location = format!("file:{}", path.display());
    let bytes = read_private(path)?;
    if bytes.starts_with(AGE_BINARY) || bytes.starts_with(AGE_ARMOR) {
        return age_unwrap(path, &bytes, unlock);
    }
    if bytes.len() != SEED_LEN {
        return Err(Error::Malformed {
            location,
            reason: format!(
                "a key file holds exactly {SEED_LEN} bytes of key (or an age file wrapping them); this one has {} bytes",
                bytes.len()
            ),
        });
    }
    Seed::from_slice(&bytes, &location)
}

fn age_unwrap(path: &Path, bytes: &[u8], unlock: &Unlock) -> Result<Seed> {
    let unwrap_err = |reason: String| Error::AgeUnwrap {
        path: path.to_owned(),
        reason,
    };
    let reader = age::armor::ArmoredReader::new(BufReader::new(bytes));
    let decryptor = age::Decryptor::new_buffered(BufReader::new(reader))
        .map_err(|e| unwrap_err(e.to_string()))?;
    let location = format!("file:{}", path.display());
    let mut plain = Zeroizing::new(Vec::new());
    if decryptor.is_scrypt() {
        let pass = passphrase(path, unlock)?;
        let identity = age::scrypt::Identity::new(pass);
        let mut r = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .map_err(|e| unwrap_err(format!("{e} (wrong passphrase?)")))?;
        r.read_to_end(&mut plain)
            .map_err(|e| unwrap_err(e.to_string()))?;
    } else {
        let Some(id_path) = &unlock.age_identity else {
            return Err(Error::LockedKey {
                location,
                what: "age recipients",
                hint: "give the identity file with --age-identity PATH or CBFS_AGE_IDENTITY",
            });
        };
        let id_file = age::IdentityFile::from_file(id_path.display().to_string())
            .map_err(|e| Error::io("cannot read age identity", id_path, e))?;
        let identities = id_file
            .into_identities()
            .map_err(|e| unwrap_err(e.to_string()))?;
        let mut r = decryptor
            .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| unwrap_err(format!("{e} (wrong identity?)")))?;
        r.read_to_end(&mut plain)
            .map_err(|e| unwrap_err(e.to_string()))?;
    }
    Seed::from_slice(&plain, &location)
}

fn passphrase(path: &Path, unlock: &Unlock) -> Result<SecretString> {
    if let Some(pf) = &unlock.passphrase_file {
        let bytes = read_private(pf)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::Malformed {
            location: format!("passphrase file {}", pf.display()),
            reason: "it is not UTF-8".into(),
        })?;
        let line = text.lines().next().unwrap_or_default();
        return Ok(SecretString::from(line.to_owned()));
    }
    if unlock.allow_prompt
        && let Some(local) = unlock.local
    {
        let prompt = format!("Passphrase for {}: ", path.display());
        return local
            .prompt_passphrase(&prompt)
            .map_err(|e| Error::io("cannot read passphrase for", path, e));
    }
    Err(Error::LockedKey {
        location: format!("file:{}", path.display()),
        what: "a passphrase",
        hint: "run on a terminal to be asked for it, or set CBFS_PASSPHRASE_FILE to a 0600 file that holds it",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_key_round_trip_is_0600_and_only_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let seed = Seed::generate();
        store_new(&path, &seed, &Protection::None).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), seed.expose_secret_bytes());
        let back = load(&path, &Unlock::default()).unwrap();
        assert_eq!(back.expose_secret_bytes(), seed.expose_secret_bytes());
    }

    #[test]
    fn refuses_group_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        store_new(&path, &Seed::generate(), &Protection::None).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path, &Unlock::default()).unwrap_err().to_string();
        assert!(
            err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        store_new(&path, &Seed::generate(), &Protection::None).unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = store_new(&path, &Seed::generate(), &Protection::None).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn x25519_wrapped_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.age");
        let id = age::x25519::Identity::generate();
        let id_path = dir.path().join("id.txt");
        use secrecy::ExposeSecret;
        std::fs::write(&id_path, id.to_string().expose_secret()).unwrap();
        let seed = Seed::generate();
        store_new(
            &path,
            &seed,
            &Protection::Recipients(vec![id.to_public().to_string()]),
        )
        .unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert!(raw.starts_with(AGE_BINARY));
        let locked = load(&path, &Unlock::default()).unwrap_err().to_string();
        assert!(locked.contains("--age-identity"), "{locked}");
        let unlock = Unlock {
            age_identity: Some(id_path),
            ..Unlock::default()
        };
        assert_eq!(
            load(&path, &unlock).unwrap().expose_secret_bytes(),
            seed.expose_secret_bytes()
        );
        let other = dir.path().join("other.txt");
        std::fs::write(
            &other,
            age::x25519::Identity::generate()
                .to_string()
                .expose_secret(),
        )
        .unwrap();
        let unlock = Unlock {
            age_identity: Some(other),
            ..Unlock::default()
        };
        assert!(load(&path, &unlock).is_err());
    }

    #[test]
    fn wrong_length_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new_private(&path, b"too short").unwrap();
        let err = load(&path, &Unlock::default()).unwrap_err().to_string();
        assert!(
            err.contains("exactly 32 bytes") && err.contains("9 bytes"),
            "{err}"
        );
    }
}
