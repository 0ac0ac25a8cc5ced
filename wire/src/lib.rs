//! # cbfs-wire
//!
//! What travels between users, the key tool and delegation nodes, as JSON
//! over HTTP, and how each piece is checked; and how a request to
//! `cbfs-gateway` is signed ([`gateway`]). Formats only: no runtime and no
//! network, so that `cbfs-recover` can link it. The HTTP client that asks m
//! of n nodes is `cbfs-client`; serving is `cbfs-serve`.
//!
//! | endpoint | request | answer |
//! |---|---|---|
//! | `GET /v1/node` | — | [`NodeInfo`] |
//! | `POST /v1/grants` | [`GrantUpload`] (a sealed grant and its delegation record) | [`GrantStored`] |
//! | `POST /v1/revoke` | a signed `cbfs_core::Revocation` | [`RevokeDone`] |
//! | `POST /v1/reencrypt` | [`SignedReencrypt`] | [`Cfrags`] |
//!
//! Every refusal is an [`ErrorBody`] with a stable `error` code and a
//! `reason` for people. No body ever carries a secret; the kfrags travel
//! only inside grants sealed for one node.
//!
//! A client trusts nothing a node says on its own: [`verify_answer`] checks
//! the administrator-signed [`DelegationRecord`](cbfs_core::DelegationRecord)
//! an answer carries (m, n and the nodes' keys come from it) and every cfrag.
//!
//! ```
//! use cbfs_core::{ScopeLabel, UserName, UserSecret};
//! use cbfs_wire::{ReencryptBody, SignedReencrypt};
//!
//! let alice = UserSecret::generate();
//! let node = UserSecret::generate().public_key();
//! let (capsule, _) = cbfs_core::umbral_pre::encrypt(&node, b"a group key").unwrap();
//! let body = ReencryptBody::new(
//!     &node,
//!     &UserName::new("alice").unwrap(),
//!     &ScopeLabel::new("proj").unwrap(),
//!     "/proj/",
//!     &[capsule],
//!     1_700_000_000,
//! );
//! let signed: SignedReencrypt = body.sign(&alice.signer());
//! assert!(signed.verify(&alice.verifying_key()));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
mod answer;
pub mod gateway;
mod request;
mod verify;

pub use answer::{
    CFRAGS_FORMAT, CFRAGS_VERSION, Cfrags, ErrorBody, GrantStored, GrantUpload, NODE_FORMAT,
    NODE_KEY_FORMAT, NODE_VERSION, NodeInfo, NodePublicFile, RevokeDone, UPLOAD_FORMAT,
    UPLOAD_VERSION, record_from_value,
};
pub use request::{
    MAX_PATH_LEN, REENCRYPT_DOMAIN, REENCRYPT_FORMAT, REENCRYPT_VERSION, ReencryptBody,
    SignedReencrypt, check_path, decode_capsule, decode_cfrag, encode_capsule, encode_cfrag,
};
pub use verify::{Access, Rejected, VerifiedAnswer, kfrag_id, verify_answer, verify_cfrags};
