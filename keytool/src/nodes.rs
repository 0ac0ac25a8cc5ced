//! Talking to delegation nodes: fetch a node's key, upload a sealed grant,
//! send a revocation. The JSON is `cbfs-delegation`'s wire format (see its
//! `wire` module); only the fields the keytool needs are read here, so the
//! keytool does not link the node's server, database or policy engine.

use std::time::Duration;

use cbfs_core::umbral_pre::PublicKey;
use cbfs_core::{fingerprint, public_key_from_hex};
use serde::Deserialize;

/// Fewer nodes did what was asked than the operation needs (exit code 6).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TooFewNodes(pub String);

/// Why one node did not do what was asked.
#[derive(Debug)]
pub enum NodeError {
    /// Unreachable, or the connection broke.
    Down(String),
    /// The node refused, with its code and reason.
    Refused {
        status: u16,
        code: String,
        reason: String,
    },
    /// The node answered something that is not the protocol.
    Protocol(String),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Down(e) => write!(f, "unreachable: {e}"),
            NodeError::Refused {
                status,
                code,
                reason,
            } => write!(f, "refused ({status} {code}): {reason}"),
            NodeError::Protocol(e) => write!(f, "not a cbfs delegation node? {e}"),
        }
    }
}

#[derive(Deserialize)]
struct NodeInfo {
    public_key: String,
    fingerprint: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    reason: String,
}

/// What a node says after storing a grant.
#[derive(Debug, Deserialize)]
pub struct Stored {
    /// The share it holds now.
    pub share: u32,
}

/// What a node says after a revocation.
#[derive(Debug, Deserialize)]
pub struct Revoked {
    /// It recorded the revocation.
    pub revoked: bool,
    /// It held a kfrag and deleted it.
    pub deleted: bool,
    /// m of the grant it deleted, if it deleted one.
    pub threshold: Option<u32>,
}

/// A blocking HTTP client for nodes.
pub struct Nodes {
    http: reqwest::blocking::Client,
}

/// A node URL without the trailing slash, or why it is not one.
pub fn check_url(url: &str) -> Result<String, String> {
    let url = url.trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("node URL `{url}` must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(format!("node URL `{url}` has no host"));
    }
    Ok(url.to_owned())
}

/// reqwest's message without the URL it repeats (the report names the node).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text
            .replace(&format!(" ({url})"), "")
            .replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Nodes {
    /// A client whose every request gives up after `timeout`.
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()?;
        Ok(Nodes { http })
    }

    fn answer<T: serde::de::DeserializeOwned>(
        response: reqwest::Result<reqwest::blocking::Response>,
    ) -> Result<T, NodeError> {
        let response = response.map_err(|e| NodeError::Down(without_url(&e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .map_err(|e| NodeError::Down(without_url(&e)))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => NodeError::Refused {
                    status: status.as_u16(),
                    code: body.error,
                    reason: body.reason,
                },
                Err(_) => NodeError::Protocol(format!("it answered {status}")),
            });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| NodeError::Protocol(format!("unexpected answer: {e}")))
    }

    /// The node's public key (`GET /v1/node`), checked against the
    /// fingerprint it states.
    pub fn key(&self, url: &str) -> Result<PublicKey, NodeError> {
        let info: NodeInfo = Self::answer(self.http.get(format!("{url}/v1/node")).send())?;
        let key = public_key_from_hex(&info.public_key).map_err(NodeError::Protocol)?;
        if fingerprint(&key) != info.fingerprint {
            return Err(NodeError::Protocol(
                "its key and fingerprint disagree".into(),
            ));
        }
        Ok(key)
    }

    /// Uploads a sealed grant (`POST /v1/grants`).
    pub fn upload(&self, url: &str, sealed: Vec<u8>) -> Result<Stored, NodeError> {
        Self::answer(
            self.http
                .post(format!("{url}/v1/grants"))
                .header("content-type", "application/json")
                .body(sealed)
                .send(),
        )
    }

    /// Sends a signed revocation (`POST /v1/revoke`).
    pub fn revoke(&self, url: &str, revocation: Vec<u8>) -> Result<Revoked, NodeError> {
        Self::answer(
            self.http
                .post(format!("{url}/v1/revoke"))
                .header("content-type", "application/json")
                .body(revocation)
                .send(),
        )
    }
}

/// Runs `f` on every node at once; results in the order of `urls`.
pub fn on_each<T: Send>(urls: &[String], f: impl Fn(usize, &str) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let f = &f;
                s.spawn(move || f(i, url))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("node requests do not panic"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            check_url("http://127.0.0.1:7600/").unwrap(),
            "http://127.0.0.1:7600"
        );
        assert_eq!(
            check_url("https://node.example").unwrap(),
            "https://node.example"
        );
        assert!(check_url("127.0.0.1:7600").is_err());
        assert!(check_url("http://").is_err());
    }

    #[test]
    fn a_node_that_is_not_there_is_down() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nodes = Nodes::new(Duration::from_secs(2)).unwrap();
        let err = nodes.key(&format!("http://127.0.0.1:{port}")).unwrap_err();
        assert!(matches!(err, NodeError::Down(_)), "{err}");
    }
}
