//! Fixtures shared by the store's integration tests: a store of each kind,
//! and the servers behind it.
//!
//! The harness's servers are driven with blocking HTTP, so fixtures are set
//! up outside the async runtime, and each case then runs inside one
//! ([`Fixture::run`]).

#![allow(dead_code)] // not every test file uses every helper

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cbfs_store::{RetryPolicy, S3Config, SecretString, Store, StoreOptions};
use cbfs_tests::{CephServer, FaultPlan, FaultyProxy, S3Server};

/// The part size the tests use: the smallest S3 accepts.
pub const PART: usize = 5 * 1024 * 1024;

/// One `moto_server` per test process, shared by its tests; each test gets a
/// bucket of its own. Under nextest every test is its own process and so has
/// its own server. The server dies with the process.
pub fn moto() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(S3Server::start)
}

/// A fresh bucket on the shared server.
pub fn new_bucket() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "cbfs-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    moto().create_bucket(&name);
    name
}

/// Retries quick enough for tests, yet enough to ride out the faults the
/// fault plans inject.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy::new(
        5,
        Duration::from_millis(10),
        Duration::from_millis(200),
        Duration::from_secs(30),
    )
}

/// Explicit settings for an S3 endpoint: the harness's variables, passed as
/// configuration rather than through the process environment (which tests
/// running in parallel threads would share).
pub fn s3_config(endpoint: &str, secret: &str) -> S3Config {
    s3_config_as(endpoint, "test", secret)
}

/// [`s3_config`] for the user `access_key`.
pub fn s3_config_as(endpoint: &str, access_key: &str, secret: &str) -> S3Config {
    S3Config::new()
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_credentials(access_key, SecretString::from(secret.to_string()))
        .with_allow_http(true)
        .with_retry(fast_retry())
        .with_timeouts(Duration::from_secs(5), Duration::from_secs(60))
}

pub fn options() -> StoreOptions {
    StoreOptions::new().with_part_size(PART)
}

/// The kind of store a fixture holds, and what it needs kept alive.
pub enum Kind {
    Local(tempfile::TempDir),
    S3 { bucket: String },
    Faulty { bucket: String, proxy: FaultyProxy },
}

/// A store under test.
pub struct Fixture {
    pub store: Store,
    pub kind: Kind,
}

impl Fixture {
    /// A store in a fresh temporary directory.
    pub fn local() -> Fixture {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open_local(dir.path().join("store"), options()).expect("open local");
        Fixture {
            store,
            kind: Kind::Local(dir),
        }
    }

    /// A store in a fresh bucket of the shared `moto_server`.
    pub fn s3() -> Fixture {
        let bucket = new_bucket();
        let config = s3_config(&moto().endpoint(), "test");
        let store = Store::open_s3(&bucket, "cbfs/fs1", &config, options()).expect("open s3");
        Fixture {
            store,
            kind: Kind::S3 { bucket },
        }
    }

    /// A store in a fresh bucket of a Ceph cluster (radosgw), reached at
    /// `endpoint` (the cluster's own, or a proxy's in front of it).
    pub fn ceph(ceph: &CephServer, endpoint: &str) -> Fixture {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let bucket = format!("cbfs-ceph-{}", COUNTER.fetch_add(1, Ordering::SeqCst));
        ceph.create_bucket(&bucket);
        let config = s3_config_as(endpoint, ceph.access_key(), ceph.secret_key());
        let store = Store::open_s3(&bucket, "cbfs/fs1", &config, options()).expect("open s3");
        Fixture {
            store,
            kind: Kind::S3 { bucket },
        }
    }

    /// A store in a fresh bucket, reached through a [`FaultyProxy`] whose
    /// first requests get 503 and 500 answers and connections closed before
    /// the answer. None of those reach the server, so every outcome is the
    /// same as without the proxy.
    pub fn faulty() -> Fixture {
        Fixture::behind_proxy(
            FaultPlan::new()
                .then(cbfs_tests::Fault::SlowDown)
                .then(cbfs_tests::Fault::DropBeforeResponse)
                .then(cbfs_tests::Fault::InternalError)
                .then(cbfs_tests::Fault::Pass)
                .then(cbfs_tests::Fault::DropBeforeResponse)
                .then(cbfs_tests::Fault::Pass)
                .then(cbfs_tests::Fault::SlowDown),
        )
    }

    /// A store in a fresh bucket behind a proxy with `plan`.
    pub fn behind_proxy(plan: FaultPlan) -> Fixture {
        Fixture::behind_proxy_with(plan, fast_retry())
    }

    /// [`Fixture::behind_proxy`] with another retry policy.
    pub fn behind_proxy_with(plan: FaultPlan, retry: RetryPolicy) -> Fixture {
        let bucket = new_bucket();
        let proxy = FaultyProxy::start(moto().socket_addr(), plan);
        let config = s3_config(&proxy.endpoint(), "test").with_retry(retry);
        let store = Store::open_s3(&bucket, "cbfs/fs1", &config, options()).expect("open s3");
        Fixture {
            store,
            kind: Kind::Faulty { bucket, proxy },
        }
    }

    /// Runs an async test case on a fresh runtime.
    pub fn run<'a, F, Fut>(&'a self, case: F)
    where
        F: FnOnce(&'a Fixture) -> Fut,
        Fut: Future<Output = ()>,
    {
        runtime().block_on(case(self));
    }

    /// The proxy, for a fixture behind one.
    pub fn proxy(&self) -> Option<&FaultyProxy> {
        match &self.kind {
            Kind::Faulty { proxy, .. } => Some(proxy),
            _ => None,
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self.kind, Kind::Local(_))
    }
}

/// A multi-threaded runtime with two workers (the machines have two cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Deterministic pseudo-random bytes (xorshift), different for each seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
