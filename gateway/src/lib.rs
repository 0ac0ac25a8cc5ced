//! # cbfs-gateway
//!
//! The service in front of the tiering agent. Hosts push trees through it
//! and start tier-out runs, and users list, read the store's ciphertext and
//! relay their unlock requests to the delegation nodes, all authenticated
//! (requests signed with the caller's cbfs signing key, or client
//! certificates), decided by Cedar policy and audited. The gateway holds
//! each file system's writer key (it signs manifests) and nothing that
//! decrypts stored data: file keys are sealed under scope public keys, and
//! only the nodes, under their own policies, re-encrypt them for a user.
//!
//! | route | action | what |
//! |---|---|---|
//! | `PUT /v1/fs/{fs}/push?prefix=/P` | Push | a tar stream, tiered out under `/P` as one snapshot |
//! | `POST /v1/fs/{fs}/jobs` | TierOut | a tier-out run of the configured source (a durable job) |
//! | `GET /v1/fs/{fs}/jobs/{id}?wait=S` | TierOut | a job's state, waiting up to S seconds for its end |
//! | `GET /v1/fs/{fs}/ls?path=/P` | List | a snapshot's entries, filtered by policy |
//! | `GET /v1/fs/{fs}/store/{key}` | ReadStore | a store object, read-only, with `Range` |
//! | `POST /v1/fs/{fs}/ranges/{key}` | ReadStore | many ranges of a store object at once (a restore's member heads) |
//! | `POST /v1/fs/{fs}/nodes/{i}/v1/reencrypt` | Unlock | relayed to node i, answer returned as is |
//! | `POST /v1/fs/{fs}/recall?path=/P` | Recall | a released file back in place (see [`recall`]) |
//!
//! The whole table is [`openapi::ROUTES`], served as `/v1/openapi.json`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod error;
pub mod gateway;
pub mod jobs;
pub mod metrics;
pub mod openapi;
pub mod paths;
pub mod policy;
pub mod push;
pub mod recall;
pub mod server;

pub use config::Loaded;
pub use error::{Error, Result};
pub use gateway::Gateway;
