//! A store under test, local or S3, for the end-to-end tests of the tools
//! that write and read stores.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::ceph::CephServer;
use crate::s3::S3Server;

/// A store under test: where it is, how to reach it, and how to read it raw.
pub enum Backend {
    /// A local directory store.
    Local(PathBuf),
    /// A bucket of a real S3-compatible server, under the prefix `cbfs/`.
    S3 {
        /// The server.
        server: Box<S3Server>,
        /// The bucket.
        bucket: String,
        /// Another endpoint to reach it by (a faulty proxy), if any.
        endpoint: Option<String>,
    },
    /// A bucket of a one-machine Ceph cluster (radosgw), under the prefix
    /// `cbfs/`.
    Ceph {
        /// The cluster.
        server: Box<CephServer>,
        /// The bucket.
        bucket: String,
    },
}

impl Backend {
    /// The store spec the tools take.
    pub fn spec(&self) -> String {
        match self {
            Backend::Local(p) => p.display().to_string(),
            Backend::S3 { bucket, .. } | Backend::Ceph { bucket, .. } => {
                format!("s3://{bucket}/cbfs")
            }
        }
    }
    /// The environment the tools need to reach it.
    pub fn envs(&self) -> Vec<(String, String)> {
        match self {
            Backend::Local(_) => Vec::new(),
            Backend::S3 {
                server,
                endpoint: Some(e),
                ..
            } => server.envs_with_endpoint(e),
            Backend::S3 { server, .. } => server.envs(),
            Backend::Ceph { server, .. } => server.envs(),
        }
    }
    /// Every object: key (relative to the store) and bytes.
    pub fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        match self {
            Backend::Local(root) => {
                let mut out = BTreeMap::new();
                let mut stack = vec![root.clone()];
                while let Some(d) = stack.pop() {
                    for e in std::fs::read_dir(&d).unwrap() {
                        let p = e.unwrap().path();
                        if p.is_dir() {
                            stack.push(p);
                        } else {
                            let key = p.strip_prefix(root).unwrap().display().to_string();
                            if !key.starts_with('.') && !is_staging(&key) {
                                out.insert(key, std::fs::read(&p).unwrap());
                            }
                        }
                    }
                }
                out
            }
            Backend::S3 { server, bucket, .. } => under_prefix(server.list_objects(bucket), |k| {
                server.get_object(bucket, k)
            }),
            Backend::Ceph { server, bucket } => under_prefix(server.list_objects(bucket), |k| {
                server.get_object(bucket, k)
            }),
        }
    }
    /// The bytes of all its objects.
    pub fn total_bytes(&self) -> u64 {
        self.objects().values().map(|v| v.len() as u64).sum()
    }
}

/// Whether a file of a local store is the staging file of a write that was
/// cut short (`NAME#DIGITS`, as `object_store` names them): not an object,
/// and never listed or read by the store (the collector sweeps old ones).
fn is_staging(key: &str) -> bool {
    key.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The objects listed under the prefix `cbfs/`, keyed relative to it, with
/// their bytes fetched by `get`.
fn under_prefix(
    listed: Vec<(String, u64)>,
    get: impl Fn(&str) -> Vec<u8>,
) -> BTreeMap<String, Vec<u8>> {
    listed
        .into_iter()
        .filter_map(|(k, _)| Some((k.strip_prefix("cbfs/")?.to_owned(), get(&k))))
        .collect()
}
