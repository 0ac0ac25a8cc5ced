//! Unit tests of [`Node`]: every check of an upload, a revocation and a
//! re-encryption request, without HTTP.

use std::time::Duration;

use cbfs_core::umbral_pre::Capsule;
use cbfs_core::{
    AdminSecret, DelegationTerms, FsName, Grant, Keyset, Revocation, ScopeLabel, UserName,
    UserPublic, UserSecret, delegate, public_key_from_hex,
};
use cbfs_format::{Lockbox, SegmentId};

use super::*;
use crate::wire::{ReencryptBody, SignedReencrypt, decode_cfrag};

struct World {
    dir: tempfile::TempDir,
    admin: AdminSecret,
    keyset: Keyset,
    scope: ScopeLabel,
    user: UserSecret,
    user_pub: UserPublic,
    node: Node,
}

fn config(dir: &std::path::Path, policies: PolicySource, limits: Limits) -> NodeConfig {
    NodeConfig {
        data: dir.join("node"),
        keyset: dir.join("keyset.json"),
        policies,
        node_key: None,
        limits,
    }
}

fn world_with(policies: PolicySource, limits: Limits) -> World {
    let dir = tempfile::tempdir().unwrap();
    let admin = AdminSecret::generate();
    let scope = ScopeLabel::new("proj").unwrap();
    let mut keyset = Keyset::new(FsName::new("fs1").unwrap(), &admin);
    keyset.add_scope(&admin, &scope).unwrap();
    std::fs::write(
        dir.path().join("keyset.json"),
        keyset.to_signed_bytes(&admin).unwrap(),
    )
    .unwrap();
    let user = UserSecret::generate();
    let user_pub = UserPublic::from_secret(UserName::new("alice").unwrap(), &user);
    let node = Node::open(config(dir.path(), policies, limits)).unwrap();
    World {
        dir,
        admin,
        keyset,
        scope,
        user,
        user_pub,
        node,
    }
}

fn world() -> World {
    world_with(PolicySource::BuiltIn, Limits::default())
}

impl World {
    fn node_pk(&self) -> cbfs_core::umbral_pre::PublicKey {
        public_key_from_hex(&self.node.info().public_key).unwrap()
    }

    fn grants(&self, expires: Option<String>) -> Vec<Grant> {
        let terms = DelegationTerms {
            threshold: 2,
            shares: 3,
            expires,
        };
        delegate(
            &self.admin,
            &self.keyset,
            &self.scope,
            &self.user_pub,
            &terms,
        )
        .unwrap()
    }

    fn sealed(&self, grant: &Grant) -> Vec<u8> {
        grant
            .for_node(&self.node_pk())
            .seal_for_node(&self.admin)
            .unwrap()
    }

    fn upload_one(&self) -> Grant {
        let grant = self.grants(None).remove(0);
        self.node.upload(&self.sealed(&grant)).unwrap();
        grant
    }

    fn capsules(&self, n: usize) -> Vec<Capsule> {
        let pk = self.keyset.scope(&self.scope).unwrap();
        (0..n)
            .map(|_| {
                Lockbox::seal("proj", pk, SegmentId::random())
                    .unwrap()
                    .0
                    .capsule()
                    .clone()
            })
            .collect()
    }

    fn request(&self, path: &str, capsules: &[Capsule]) -> SignedReencrypt {
        ReencryptBody::new(
            &self.node_pk(),
            self.user_pub.name(),
            &self.scope,
            path,
            capsules,
        )
        .sign(&self.user.signer())
    }

    fn send(&self, request: &SignedReencrypt) -> Result<Cfrags, Refusal> {
        self.node.reencrypt(&serde_json::to_vec(request).unwrap())
    }

    fn audit_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node/audit/audit.log")).unwrap()
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, Refusal>) -> (&'static str, String) {
    let e = r.unwrap_err();
    (e.code, e.reason)
}

#[test]
fn a_grant_for_this_node_reencrypts_a_thousand_capsules() {
    let w = world();
    let grant = w.upload_one();
    assert_eq!(w.node.grant_count(), 1);
    let capsules = w.capsules(1000);
    let started = std::time::Instant::now();
    let answer = w.send(&w.request("/projects/", &capsules)).unwrap();
    eprintln!("1000 capsules re-encrypted in {:?}", started.elapsed());
    assert_eq!(answer.cfrags.len(), 1000);
    let admin = w.admin.verifying_key();
    for (text, capsule) in answer.cfrags.iter().zip(&capsules).take(20) {
        decode_cfrag(text)
            .unwrap()
            .verify(
                capsule,
                &admin,
                grant.scope_public_key(),
                &w.user.public_key(),
            )
            .unwrap();
    }
    let audit = w.audit_text();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "reencrypt");
    assert_eq!(last["decision"], "allow");
    assert_eq!(last["user"], "alice");
    assert_eq!(last["scope"], "proj");
    assert_eq!(last["capsules"], 1000);
    assert_eq!(last["policies"][0], "live-delegation");
    assert!(
        w.node
            .metrics()
            .render()
            .contains("cbfs_delegation_capsules_reencrypted_total 1000")
    );
    crate::audit::verify(&w.dir.path().join("node")).unwrap();
}

#[test]
fn forged_replayed_stale_and_misaddressed_requests_are_refused() {
    let w = world();
    w.upload_one();
    let capsules = w.capsules(2);

    let mut forged = w.request("/", &capsules);
    let mallory = UserSecret::generate();
    forged = forged.request.sign(&mallory.signer());
    assert_eq!(code(w.send(&forged)).0, "bad_signature");

    let mut altered = w.request("/", &capsules);
    altered.request.path = "/other".into();
    assert_eq!(code(w.send(&altered)).0, "bad_signature");

    let good = w.request("/", &capsules);
    w.send(&good).unwrap();
    let (c, reason) = code(w.send(&good));
    assert_eq!(c, "replayed", "{reason}");

    let mut old = ReencryptBody::new(&w.node_pk(), w.user_pub.name(), &w.scope, "/", &capsules);
    old.timestamp -= 3600;
    assert_eq!(code(w.send(&old.sign(&w.user.signer()))).0, "stale_request");

    let elsewhere = ReencryptBody::new(
        &UserSecret::generate().public_key(),
        w.user_pub.name(),
        &w.scope,
        "/",
        &capsules,
    );
    assert_eq!(
        code(w.send(&elsewhere.sign(&w.user.signer()))).0,
        "wrong_node"
    );

    let stranger = ReencryptBody::new(
        &w.node_pk(),
        &UserName::new("bob").unwrap(),
        &w.scope,
        "/",
        &capsules,
    );
    assert_eq!(
        code(w.send(&stranger.sign(&w.user.signer()))).0,
        "no_delegation"
    );

    assert_eq!(code(w.node.reencrypt(b"{not json")).0, "bad_request");
    assert_eq!(
        code(w.send(&w.request("relative", &capsules))).0,
        "bad_request"
    );
    let mut bad_capsule = w.request("/", &capsules);
    bad_capsule.request.capsules[1] = "AAAA".into();
    let signed = bad_capsule.request.sign(&w.user.signer());
    let (c, reason) = code(w.send(&signed));
    assert_eq!(c, "bad_request");
    assert!(reason.contains("capsule 1"), "{reason}");

    let audit = w.audit_text();
    for needed in [
        "bad_signature",
        "replayed",
        "stale_request",
        "wrong_node",
        "no_delegation",
    ] {
        assert!(audit.contains(needed), "audit lacks {needed}");
    }
}

#[test]
fn uploads_are_checked() {
    let w = world();
    let grants = w.grants(None);

    // Bound to and sealed for another node.
    let other = UserSecret::generate().public_key();
    let elsewhere = grants[0].for_node(&other).seal_for_node(&w.admin).unwrap();
    assert_eq!(code(w.node.upload(&elsewhere)).0, "wrong_node");

    // Signed by another administrator.
    let rogue = AdminSecret::generate();
    let mut rogue_keyset = Keyset::new(FsName::new("fs1").unwrap(), &rogue);
    rogue_keyset.add_scope(&rogue, &w.scope).unwrap();
    let terms = DelegationTerms {
        threshold: 1,
        shares: 1,
        expires: None,
    };
    let forged = delegate(&rogue, &rogue_keyset, &w.scope, &w.user_pub, &terms).unwrap()[0]
        .for_node(&w.node_pk())
        .seal_for_node(&rogue)
        .unwrap();
    let (c, reason) = code(w.node.upload(&forged));
    assert_eq!(c, "bad_grant");
    assert!(reason.contains("administrator key"), "{reason}");

    assert_eq!(code(w.node.upload(b"garbage")).0, "bad_grant");
    w.node.upload(&w.sealed(&grants[2])).unwrap();
    assert_eq!(w.node.grant_count(), 1);
}

#[test]
fn revocation_deletes_and_refuses_the_old_grant() {
    let w = world();
    let grant = w.upload_one();
    let capsules = w.capsules(1);
    w.send(&w.request("/", &capsules)).unwrap();

    let revocation = Revocation::new(&w.admin, &w.scope, &w.user_pub);
    let done = w
        .node
        .revoke(&revocation.to_signed_bytes(&w.admin).unwrap())
        .unwrap();
    assert!(done.revoked && done.deleted);
    assert_eq!(done.threshold, Some(2));
    assert_eq!(w.node.grant_count(), 0);
    let (c, reason) = code(w.send(&w.request("/", &capsules)));
    assert_eq!(c, "revoked", "{reason}");
    // The same old grant, uploaded again, is refused.
    assert_eq!(code(w.node.upload(&w.sealed(&grant))).0, "revoked");
    // Revoking again complies, with nothing to delete.
    let again = w
        .node
        .revoke(&revocation.to_signed_bytes(&w.admin).unwrap())
        .unwrap();
    assert!(again.revoked && !again.deleted);
    // A revocation the administrator did not sign is refused.
    let rogue = AdminSecret::generate();
    let forged = Revocation::new(&rogue, &w.scope, &w.user_pub)
        .to_signed_bytes(&rogue)
        .unwrap();
    assert_eq!(code(w.node.revoke(&forged)).0, "bad_revocation");

    // State survives a restart.
    let data = w.dir.path().to_path_buf();
    drop(w.node);
    let node = Node::open(config(&data, PolicySource::BuiltIn, Limits::default())).unwrap();
    assert_eq!(node.grant_count(), 0);
    let sealed = grant.for_node(&public_key_from_hex(&node.info().public_key).unwrap());
    assert_eq!(
        code(node.upload(&sealed.seal_for_node(&w.admin).unwrap())).0,
        "revoked"
    );
}

#[test]
fn expired_delegations_are_refused() {
    let w = world();
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let soon = soon
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let grants = w.grants(Some(soon));
    w.node.upload(&w.sealed(&grants[0])).unwrap();
    let capsules = w.capsules(1);
    w.send(&w.request("/", &capsules)).unwrap();
    std::thread::sleep(Duration::from_millis(3100));
    let (c, reason) = code(w.send(&w.request("/", &capsules)));
    assert_eq!(c, "expired", "{reason}");
    // An expired grant is not taken either.
    assert_eq!(code(w.node.upload(&w.sealed(&grants[1]))).0, "expired");
}

#[test]
fn limits_and_policies_refuse() {
    let policies = tempfile::tempdir().unwrap();
    for (name, text) in crate::DEFAULT_POLICIES {
        std::fs::write(policies.path().join(name), text).unwrap();
    }
    std::fs::write(
        policies.path().join("private.cedar"),
        "@id(\"no-private\")\nforbid (principal, action, resource) when { context.path like \"/private*\" };\n",
    )
    .unwrap();
    let limits = Limits {
        max_batch: 3,
        rate_per_minute: 1,
        burst: 3,
        ..Limits::default()
    };
    let w = world_with(PolicySource::Dir(policies.path().to_path_buf()), limits);
    w.upload_one();
    let (c, reason) = code(w.send(&w.request("/private/x", &w.capsules(1))));
    assert_eq!(c, "denied");
    assert!(reason.contains("no-private"), "{reason}");
    assert_eq!(code(w.send(&w.request("/", &w.capsules(4)))).0, "too_large");
    w.send(&w.request("/", &w.capsules(3))).unwrap();
    w.send(&w.request("/", &w.capsules(1))).unwrap();
    let (c, reason) = code(w.send(&w.request("/", &w.capsules(1))));
    assert_eq!(c, "rate_limited", "{reason}");

    // Reload: a broken folder keeps the old policies, a good one takes over.
    std::fs::write(policies.path().join("broken.cedar"), "permit (").unwrap();
    assert!(w.node.reload_policies().is_err());
    assert!(w.node.policy_ids().contains(&"no-private".to_owned()));
    std::fs::remove_file(policies.path().join("broken.cedar")).unwrap();
    std::fs::remove_file(policies.path().join("private.cedar")).unwrap();
    assert_eq!(w.node.reload_policies().unwrap(), ["live-delegation"]);
    let audit = w.audit_text();
    assert!(audit.contains("\"policy-reload\""));
    assert!(audit.contains("forbidden by no-private"));
}
