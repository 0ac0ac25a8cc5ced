//! `awskms:KEY_ID:PATH` key sources: a key wrapped by an AWS KMS key,
//! unwrapped in memory at each use.
//!
//! The file at PATH holds one line, `cbfs-awskms-v1:` and the base64 of the
//! KMS ciphertext blob. The blob is made with the encryption context
//! `{"cbfs": "key-source-v1"}`, so `aws kms decrypt` needs the same context.
//!
//! Credentials, region and endpoint are read as the AWS CLI reads them:
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, else the
//! profile `AWS_PROFILE` (default `default`) of `~/.aws/credentials` and
//! `~/.aws/config` (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`); the
//! region from `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile; the
//! endpoint from `AWS_ENDPOINT_URL_KMS`, `AWS_ENDPOINT_URL` or the
//! profile's `endpoint_url`, else `https://kms.REGION.amazonaws.com`.
//! Requests are signed with AWS Signature Version 4.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use cbfs_core::source_backend::{read_private, replace_private, write_new_private};
use cbfs_core::{Error, Result, Rewrapped, Seed};

const SERVICE: &str = "AWS KMS";
const PREFIX: &str = "cbfs-awskms-v1:";
const CONTEXT_KEY: &str = "cbfs";
const CONTEXT_VALUE: &str = "key-source-v1";

fn location(key: &str, path: &Path) -> String {
    format!("awskms:{key}:{}", path.display())
}

fn kms_error(op: &'static str, loc: &str, reason: impl Into<String>, transient: bool) -> Error {
    Error::Kms {
        service: SERVICE,
        op,
        location: loc.to_owned(),
        reason: reason.into(),
        transient,
    }
}

/// Static credentials, as the AWS CLI finds them.
struct Credentials {
    access_key: String,
    secret_key: SecretString,
    session_token: Option<SecretString>,
}

/// The settings of one profile, from `~/.aws/credentials` and `~/.aws/config`.
#[derive(Default)]
struct Profile {
    values: BTreeMap<String, String>,
}

impl Profile {
    fn load(name: &str) -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let file = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
        };
        let mut values = BTreeMap::new();
        // The config file names sections `[profile NAME]` (but `[default]`);
        // the credentials file `[NAME]`. Credentials win over config.
        if let Some(text) = file("AWS_CONFIG_FILE", "config").and_then(|p| read_ini(&p)) {
            let section = if name == "default" {
                "default".to_owned()
            } else {
                format!("profile {name}")
            };
            values.extend(ini_section(&text, &section));
        }
        if let Some(text) =
            file("AWS_SHARED_CREDENTIALS_FILE", "credentials").and_then(|p| read_ini(&p))
        {
            values.extend(ini_section(&text, name));
        }
        Profile { values }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

fn read_ini(path: &Path) -> Option<Zeroizing<String>> {
    std::fs::read_to_string(path).ok().map(Zeroizing::new)
}

/// The `key = value` pairs of one `[section]` of an INI file.
fn ini_section(text: &str, section: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    out
}

struct Kms {
    endpoint: reqwest::Url,
    region: String,
    credentials: Credentials,
    client: reqwest::blocking::Client,
}

impl Kms {
    fn from_env(loc: &str) -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let profile_name = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let profile = Profile::load(&profile_name);
        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key), Some(secret)) => Credentials {
                access_key,
                secret_key: SecretString::from(secret),
                session_token: var("AWS_SESSION_TOKEN").map(SecretString::from),
            },
            _ => match (
                profile.get("aws_access_key_id"),
                profile.get("aws_secret_access_key"),
            ) {
                (Some(a), Some(s)) => Credentials {
                    access_key: a.to_owned(),
                    secret_key: SecretString::from(s.to_owned()),
                    session_token: profile
                        .get("aws_session_token")
                        .map(|t| SecretString::from(t.to_owned())),
                },
                _ => {
                    return Err(kms_error(
                        "connect",
                        loc,
                        format!(
                            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give them in profile `{profile_name}` of ~/.aws/credentials"
                        ),
                        false,
                    ));
                }
            },
        };
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| profile.get("region").map(str::to_owned))
            .ok_or_else(|| {
                kms_error(
                    "connect",
                    loc,
                    format!(
                        "no AWS region: set AWS_REGION, or `region` in profile `{profile_name}` of ~/.aws/config"
                    ),
                    false,
                )
            })?;
        let endpoint = var("AWS_ENDPOINT_URL_KMS")
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .or_else(|| profile.get("endpoint_url").map(str::to_owned))
            .unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com"));
        let endpoint = reqwest::Url::parse(&endpoint).map_err(|e| {
            kms_error(
                "connect",
                loc,
                format!("the endpoint `{endpoint}` is not a URL: {e}"),
                false,
            )
        })?;
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| kms_error("connect", loc, e.to_string(), false))?;
        Ok(Kms {
            endpoint,
            region,
            credentials,
            client,
        })
    }

    /// Calls one KMS action (`TrentService.<action>`) and returns the
    /// answer's JSON text, kept in zeroizing memory (it may hold key
    /// material).
    fn call(
        &self,
        op: &'static str,
        action: &str,
        loc: &str,
        body: &Value,
    ) -> Result<Zeroizing<String>> {
        let payload = Zeroizing::new(serde_json::to_vec(body).expect("requests serialize"));
        let now = time::OffsetDateTime::now_utc();
        let headers = self.sign(action, &payload, now);
        let mut request = self.client.post(self.endpoint.clone());
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.expose_secret());
        }
        let resp = request.body(payload.to_vec()).send().map_err(|e| {
            kms_error(
                op,
                loc,
                format!("cannot reach {}: {}", self.endpoint, e.without_url()),
                true,
            )
        })?;
        let status = resp.status();
        let text = Zeroizing::new(
            resp.text()
                .map_err(|e| kms_error(op, loc, e.without_url().to_string(), true))?,
        );
        if status.is_success() {
            return Ok(text);
        }
        // Error answers carry a type and a message, never key material.
        let parsed = serde_json::from_str::<Value>(&text).ok();
        let kind = parsed
            .as_ref()
            .and_then(|v| v.get("__type"))
            .and_then(Value::as_str)
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
            .unwrap_or_default();
        let message = parsed
            .as_ref()
            .and_then(|v| v.get("message").or_else(|| v.get("Message")))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let transient = status.is_server_error()
            || status.as_u16() == 429
            || matches!(
                kind.as_str(),
                "ThrottlingException"
                    | "KMSInternalException"
                    | "DependencyTimeoutException"
                    | "LimitExceededException"
            );
        let hint = match kind.as_str() {
            "DisabledException" => {
                ": the KMS key is disabled; enable it (aws kms enable-key) or use another key"
            }
            "KMSInvalidStateException" => {
                ": the KMS key cannot be used in its state (disabled, or pending deletion)"
            }
            "IncorrectKeyException" | "AccessDeniedException" | "InvalidCiphertextException" => {
                ": the secret was not wrapped by this key, or this identity may not use it"
            }
            "NotFoundException" => ": no such KMS key in this region",
            _ => "",
        };
        Err(kms_error(
            op,
            loc,
            format!("the service answered {status} {kind} {message}{hint}")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            transient,
        ))
    }

    /// The headers of a Signature Version 4 request for `action`.
    fn sign(
        &self,
        action: &str,
        payload: &[u8],
        now: time::OffsetDateTime,
    ) -> Vec<(String, SecretString)> {
        let amz_date = format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        let date = &amz_date[..8];
        let host = match (self.endpoint.host_str(), self.endpoint.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => String::new(),
        };
        let mut headers: Vec<(String, String)> = vec![
            ("content-type".into(), "application/x-amz-json-1.1".into()),
            ("host".into(), host),
            ("x-amz-date".into(), amz_date.clone()),
            ("x-amz-target".into(), format!("TrentService.{action}")),
        ];
        if let Some(token) = &self.credentials.session_token {
            headers.push((
                "x-amz-security-token".into(),
                token.expose_secret().to_owned(),
            ));
        }
        headers.sort();
        let canonical_headers: String = headers
            .iter()
            .map(|(k, v)| format!("{k}:{}\n", v.trim()))
            .collect();
        let signed_headers = headers
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let path = if self.endpoint.path().is_empty() {
            "/"
        } else {
            self.endpoint.path()
        };
        let canonical_request = format!(
            "POST\n{path}\n\n{canonical_headers}\n{signed_headers}\n{}",
            hex::encode(Sha256::digest(payload))
        );
        let scope = format!("{date}/{}/kms/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let secret = Zeroizing::new(format!(
            "AWS4{}",
            self.credentials.secret_key.expose_secret()
        ));
        let k_date = hmac(secret.as_bytes(), date.as_bytes());
        let k_region = hmac(&k_date[..], self.region.as_bytes());
        let k_service = hmac(&k_region[..], b"kms");
        let k_signing = hmac(&k_service[..], b"aws4_request");
        let signature = hex::encode(hmac(&k_signing[..], string_to_sign.as_bytes()).as_slice());
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.credentials.access_key
        );
        let mut out: Vec<(String, SecretString)> = headers
            .into_iter()
            .filter(|(k, _)| k != "host")
            .map(|(k, v)| (k, SecretString::from(v)))
            .collect();
        out.push(("authorization".into(), SecretString::from(authorization)));
        out
    }

    /// Fails with a clear error when the key is not enabled. A principal
    /// that may not describe keys skips the check: the key operation that
    /// follows then says the same.
    fn check_enabled(&self, key: &str, loc: &str) -> Result<()> {
        let text = match self.call("use", "DescribeKey", loc, &json!({ "KeyId": key })) {
            Ok(t) => t,
            Err(Error::Kms { reason, .. }) if reason.contains("AccessDenied") => return Ok(()),
            Err(e) => return Err(e),
        };
        let state = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.pointer("/KeyMetadata/KeyState").cloned())
            .and_then(|s| s.as_str().map(str::to_owned))
            .unwrap_or_else(|| "Enabled".into());
        if state == "Enabled" {
            Ok(())
        } else {
            Err(kms_error(
                "use",
                loc,
                format!(
                    "the KMS key `{key}` is {state}: enable it (aws kms enable-key) or use another key"
                ),
                false,
            ))
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

fn context() -> Value {
    json!({ CONTEXT_KEY: CONTEXT_VALUE })
}

fn string_field(text: &str, name: &str, op: &'static str, loc: &str) -> Result<Zeroizing<String>> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| kms_error(op, loc, "the service's answer is not JSON", false))?;
    let out = value
        .get(name)
        .and_then(Value::as_str)
        .map(|s| Zeroizing::new(s.to_owned()))
        .ok_or_else(|| {
            kms_error(
                op,
                loc,
                format!("the service's answer has no {name}"),
                false,
            )
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
    let blob = text
        .trim()
        .strip_prefix(PREFIX)
        .ok_or_else(|| Error::Malformed {
            location: loc.to_owned(),
            reason: format!("it does not hold an AWS KMS ciphertext ({PREFIX}...)"),
        })?;
    if B64.decode(blob).is_err() {
        return Err(Error::Malformed {
            location: loc.to_owned(),
            reason: "the KMS ciphertext is not base64".into(),
        });
    }
    Ok(blob.to_owned())
}

fn encrypt(kms: &Kms, key: &str, loc: &str, seed: &Seed) -> Result<Zeroizing<String>> {
    let plaintext = Zeroizing::new(B64.encode(seed.expose_secret_bytes()));
    let text = kms.call(
        "encrypt",
        "Encrypt",
        loc,
        &json!({ "KeyId": key, "Plaintext": plaintext.as_str(), "EncryptionContext": context() }),
    )?;
    string_field(&text, "CiphertextBlob", "encrypt", loc)
}

pub(crate) fn store_new(key: &str, path: &Path, seed: &Seed) -> Result<()> {
    let loc = location(key, path);
    if path.exists() {
        return Err(Error::AlreadyExists { location: loc });
    }
    let kms = Kms::from_env(&loc)?;
    kms.check_enabled(key, &loc)?;
    let blob = encrypt(&kms, key, &loc, seed)?;
    write_new_private(path, format!("{PREFIX}{}\n", blob.as_str()).as_bytes())
}

pub(crate) fn load(key: &str, path: &Path) -> Result<Seed> {
    let loc = location(key, path);
    let blob = read_wrapped(path, &loc)?;
    let kms = Kms::from_env(&loc)?;
    kms.check_enabled(key, &loc)?;
    let text = kms.call(
        "decrypt",
        "Decrypt",
        &loc,
        &json!({ "KeyId": key, "CiphertextBlob": blob, "EncryptionContext": context() }),
    )?;
    let b64 = string_field(&text, "Plaintext", "decrypt", &loc)?;
    let bytes = Zeroizing::new(B64.decode(b64.as_bytes()).map_err(|_| Error::Malformed {
        location: loc.clone(),
        reason: "the unwrapped key is not base64".into(),
    })?);
    Seed::from_slice(&bytes, &loc)
}

/// Re-encrypts the wrapped secret under `to` (the same key when `None`:
/// its current key material, after a rotation), without the secret ever
/// leaving the service.
pub(crate) fn rewrap(key: &str, path: &Path, to: Option<&str>) -> Result<Rewrapped> {
    let loc = location(key, path);
    let blob = read_wrapped(path, &loc)?;
    let kms = Kms::from_env(&loc)?;
    let destination = to.unwrap_or(key);
    kms.check_enabled(key, &loc)?;
    kms.check_enabled(destination, &loc)?;
    let text = kms.call(
        "rewrap",
        "ReEncrypt",
        &loc,
        &json!({
            "CiphertextBlob": blob,
            "SourceKeyId": key,
            "SourceEncryptionContext": context(),
            "DestinationKeyId": destination,
            "DestinationEncryptionContext": context(),
        }),
    )?;
    let new = string_field(&text, "CiphertextBlob", "rewrap", &loc)?;
    let from = string_field(&text, "SourceKeyId", "rewrap", &loc)
        .map(|s| s.to_string())
        .unwrap_or_else(|_| key.to_owned());
    let to_arn = string_field(&text, "KeyId", "rewrap", &loc)
        .map(|s| s.to_string())
        .unwrap_or_else(|_| destination.to_owned());
    replace_private(path, format!("{PREFIX}{}\n", new.as_str()).as_bytes())?;
    Ok(Rewrapped {
        from: format!("KMS key {from}"),
        to: format!("KMS key {to_arn}"),
        from_version: None,
        to_version: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_profiles_as_the_cli_does() {
        let text = "[default]\nregion = eu-west-1\n\n[profile ops]\nregion=us-east-2 \n# c\nendpoint_url = http://127.0.0.1:5000\n";
        assert_eq!(ini_section(text, "default")["region"], "eu-west-1");
        let ops = ini_section(text, "profile ops");
        assert_eq!(ops["region"], "us-east-2");
        assert_eq!(ops["endpoint_url"], "http://127.0.0.1:5000");
        assert!(ini_section(text, "ops").is_empty());
    }

    /// The example of the AWS Signature Version 4 documentation's test
    /// suite, adapted to a KMS request: the signing key derivation and the
    /// shape of the Authorization header.
    #[test]
    fn signs_requests_with_sigv4() {
        let kms = Kms {
            endpoint: reqwest::Url::parse("http://127.0.0.1:5000").unwrap(),
            region: "us-east-1".into(),
            credentials: Credentials {
                access_key: "AKIDEXAMPLE".into(),
                secret_key: SecretString::from("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                session_token: None,
            },
            client: reqwest::blocking::Client::new(),
        };
        let now = time::macros::datetime!(2015-08-30 12:36:00 UTC);
        let headers = kms.sign("Encrypt", b"{}", now);
        let auth = headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1
            .expose_secret()
            .to_owned();
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/kms/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature="
        ), "{auth}");
        assert!(!auth.contains("wJalrXUtnFEMI"));
        // The documented signing key of this secret, date, region and `iam`.
        let k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20150830");
        let k = hmac(&k[..], b"us-east-1");
        let k = hmac(&k[..], b"iam");
        let k = hmac(&k[..], b"aws4_request");
        assert_eq!(
            hex::encode(&k[..]),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }
}
