//! `openbao:KEYNAME:PATH` key sources: a key wrapped by an OpenBao/Vault
//! transit key, unwrapped in memory at each use.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use cbfs_core::source_backend::{read_private, replace_private, write_new_private};
use cbfs_core::{Error, Result, Rewrapped, Seed};

struct Kms {
    addr: String,
    token: SecretString,
    mount: String,
    client: reqwest::blocking::Client,
}

fn location(key: &str, path: &Path) -> String {
    format!("openbao:{key}:{}", path.display())
}

impl Kms {
    fn from_env(loc: &str) -> Result<Self> {
        let var = |a: &str, b: &str| std::env::var(a).or_else(|_| std::env::var(b)).ok();
        let missing = |what: &str| Error::Kms {
            service: "OpenBao/Vault",
            op: "connect",
            location: loc.to_owned(),
            reason: format!("{what} is not set (BAO_ADDR/BAO_TOKEN or VAULT_ADDR/VAULT_TOKEN)"),
            transient: false,
        };
        let addr = var("BAO_ADDR", "VAULT_ADDR").ok_or_else(|| missing("the server address"))?;
        let token = var("BAO_TOKEN", "VAULT_TOKEN").ok_or_else(|| missing("the token"))?;
        let mount = std::env::var("CBFS_TRANSIT_MOUNT").unwrap_or_else(|_| "transit".into());
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Kms {
                service: "OpenBao/Vault",
                op: "connect",
                location: loc.to_owned(),
                reason: e.to_string(),
                transient: false,
            })?;
        Ok(Kms {
            addr: addr.trim_end_matches('/').to_owned(),
            token: SecretString::from(token),
            mount,
            client,
        })
    }

    /// POSTs to the transit engine and returns the `data` object. The
    /// response body is kept in zeroizing memory: it may hold key material.
    fn call(
        &self,
        op: &'static str,
        key: &str,
        loc: &str,
        body: &Value,
    ) -> Result<Zeroizing<String>> {
        let url = format!("{}/v1/{}/{op}/{key}", self.addr, self.mount);
        let err = |reason: String, transient: bool| Error::Kms {
            service: "OpenBao/Vault",
            op,
            location: loc.to_owned(),
            reason,
            transient,
        };
        let resp = self
            .client
            .post(&url)
            .header("X-Vault-Token", self.token.expose_secret())
            .json(body)
            .send()
            .map_err(|e| {
                err(
                    format!("cannot reach {}: {}", self.addr, e.without_url()),
                    true,
                )
            })?;
        let status = resp.status();
        let text = Zeroizing::new(
            resp.text()
                .map_err(|e| err(e.without_url().to_string(), true))?,
        );
        if !status.is_success() {
            // Error bodies carry messages, never key material.
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("errors").cloned())
                .map(|v| v.to_string())
                .unwrap_or_default();
            let transient = status.is_server_error() || status.as_u16() == 429;
            return Err(err(format!("server answered {status} {detail}"), transient));
        }
        Ok(text)
    }
}

fn field(text: &str, name: &str, op: &'static str, loc: &str) -> Result<Zeroizing<String>> {
    let value: Value = serde_json::from_str(text).map_err(|_| Error::Kms {
        service: "OpenBao/Vault",
        op,
        location: loc.to_owned(),
        reason: "the server's answer is not JSON".into(),
        transient: false,
    })?;
    let out = value
        .get("data")
        .and_then(|d| d.get(name))
        .and_then(Value::as_str)
        .map(|s| Zeroizing::new(s.to_owned()))
        .ok_or_else(|| Error::Kms {
            service: "OpenBao/Vault",
            op,
            location: loc.to_owned(),
            reason: format!("the server's answer has no data.{name}"),
            transient: false,
        });
    drop(Zeroizing::new(value.to_string()));
    out
}

fn read_wrapped(path: &Path, loc: &str) -> Result<String> {
    let bytes = read_private(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Error::Malformed {
        location: loc.to_owned(),
        reason: "the wrapped key is not text".into(),
    })?;
    let text = text.trim();
    if !text.starts_with("vault:v") {
        return Err(Error::Malformed {
            location: loc.to_owned(),
            reason: "it does not hold a transit ciphertext (vault:vN:...)".into(),
        });
    }
    Ok(text.to_owned())
}

fn version_of(ciphertext: &str) -> u32 {
    ciphertext
        .strip_prefix("vault:v")
        .and_then(|r| r.split(':').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn store_new(key: &str, path: &Path, seed: &Seed) -> Result<()> {
    let loc = location(key, path);
    if path.exists() {
        return Err(Error::AlreadyExists { location: loc });
    }
    let kms = Kms::from_env(&loc)?;
    let plaintext = Zeroizing::new(B64.encode(seed.expose_secret_bytes()));
    let text = kms.call(
        "encrypt",
        key,
        &loc,
        &json!({ "plaintext": plaintext.as_str() }),
    )?;
    let ciphertext = field(&text, "ciphertext", "encrypt", &loc)?;
    write_new_private(path, format!("{}\n", ciphertext.as_str()).as_bytes())
}

pub(crate) fn load(key: &str, path: &Path) -> Result<Seed> {
    let loc = location(key, path);
    let ciphertext = read_wrapped(path, &loc)?;
    let kms = Kms::from_env(&loc)?;
    let text = kms.call("decrypt", key, &loc, &json!({ "ciphertext": ciphertext }))?;
    let b64 = field(&text, "plaintext", "decrypt", &loc)?;
    let bytes = Zeroizing::new(B64.decode(b64.as_bytes()).map_err(|_| Error::Malformed {
        location: loc.clone(),
        reason: "the unwrapped key is not base64".into(),
    })?);
    Seed::from_slice(&bytes, &loc)
}

pub(crate) fn rewrap(key: &str, path: &Path) -> Result<Rewrapped> {
    let loc = location(key, path);
    let ciphertext = read_wrapped(path, &loc)?;
    let kms = Kms::from_env(&loc)?;
    let text = kms.call("rewrap", key, &loc, &json!({ "ciphertext": ciphertext }))?;
    let new = field(&text, "ciphertext", "rewrap", &loc)?;
    let (from, to) = (version_of(&ciphertext), version_of(&new));
    let outcome = Rewrapped {
        from: format!("transit key `{key}` version {from}"),
        to: format!("transit key `{key}` version {to}"),
        from_version: Some(from),
        to_version: Some(to),
    };
    if new.as_str() != ciphertext {
        replace_private(path, format!("{}\n", new.as_str()).as_bytes())?;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(version_of("vault:v1:abc"), 1);
        assert_eq!(version_of("vault:v12:abc"), 12);
        assert_eq!(version_of("garbage"), 0);
    }
}
