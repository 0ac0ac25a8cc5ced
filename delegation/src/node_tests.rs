//! Unit tests of [`Node`]: every check of an upload, a revocation and a
//! re-encryption request, without HTTP (but for the request timeout, which
//! is the server's). Time comes from a [`FakeClock`]: no test sleeps for it.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cbfs_core::umbral_pre::{Capsule, DefaultSerialize as _};
use cbfs_core::{
    AdminSecret, Delegation, DelegationTerms, FakeClock, FsName, Keyset, Revocation, ScopeLabel,
    UserName, UserPublic, UserSecret, delegate, public_key_from_hex,
};
use cbfs_format::{Lockbox, SegmentId};
use cbfs_wire::{GrantUpload, ReencryptBody, SignedReencrypt, decode_cfrag};
use serde::{Deserialize, Serialize};

use super::*;

/// 2023-11-14T22:13:20Z: where every fake clock starts.
const T0: i64 = 1_700_000_000;

struct World {
    dir: tempfile::TempDir,
    admin: AdminSecret,
    keyset: Keyset,
    scope: ScopeLabel,
    user: UserSecret,
    user_pub: UserPublic,
    clock: Arc<FakeClock>,
    /// The two other nodes of every 2-of-3 delegation (this node holds share 1).
    others: Vec<UserSecret>,
    node: Node,
}

fn config(
    dir: &std::path::Path,
    policies: PolicySource,
    limits: Limits,
    clock: Arc<FakeClock>,
) -> NodeConfig {
    NodeConfig {
        data: dir.join("node"),
        keyset: dir.join("keyset.json"),
        policies,
        node_key: None,
        limits,
        clock,
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
    let clock = FakeClock::at(T0);
    let node = Node::open(config(dir.path(), policies, limits, clock.clone())).unwrap();
    World {
        dir,
        admin,
        keyset,
        scope,
        user,
        user_pub,
        clock,
        others: vec![UserSecret::generate(), UserSecret::generate()],
        node,
    }
}

fn world() -> World {
    world_with(PolicySource::BuiltIn, Limits::default())
}

/// The message a grant's signature covers: the same fields, in the same
/// order, as `cbfs_core` signs them. Lets a test make grants the key tool
/// never would (an issue time or expiry that does not parse), signed by the
/// genuine administrator.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    format: String,
    version: u32,
    fs: String,
    scope: String,
    user: String,
    user_public_key: String,
    user_verifying_key: String,
    scope_public_key: String,
    admin_verifying_key: String,
    threshold: u32,
    shares: u32,
    share: u32,
    issued: String,
    expires: Option<String>,
    kfrag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

impl World {
    fn node_pk(&self) -> cbfs_core::umbral_pre::PublicKey {
        public_key_from_hex(&self.node.info().public_key).unwrap()
    }

    /// This node first, then the two others.
    fn node_keys(&self) -> Vec<cbfs_core::umbral_pre::PublicKey> {
        let mut keys = vec![self.node_pk()];
        keys.extend(self.others.iter().map(UserSecret::public_key));
        keys
    }

    /// A 2-of-3 delegation issued at the clock's now; share 1 is this node's.
    fn delegation(&self, expires: Option<String>) -> Delegation {
        self.delegation_by(&self.admin, &self.keyset, expires)
    }

    fn delegation_by(
        &self,
        admin: &AdminSecret,
        keyset: &Keyset,
        expires: Option<String>,
    ) -> Delegation {
        let terms = DelegationTerms {
            threshold: 2,
            shares: 3,
            expires,
        };
        delegate(
            admin,
            keyset,
            &self.scope,
            &self.user_pub,
            &terms,
            &self.node_keys(),
            self.clock.as_ref(),
        )
        .unwrap()
    }

    /// The upload body of share `i` (0-based) of `d`.
    fn upload_of(&self, d: &Delegation, i: usize) -> Vec<u8> {
        let sealed = d.grants[i].seal_for_node(&self.admin).unwrap();
        serde_json::to_vec(&GrantUpload::new(&sealed, &d.record)).unwrap()
    }

    fn upload_one(&self) -> Delegation {
        let d = self.delegation(None);
        self.node.upload(&self.upload_of(&d, 0)).unwrap();
        d
    }

    /// The upload of this node's share of `d`, its grant re-signed by the
    /// genuine administrator after `edit` changed its terms.
    fn edited_upload(&self, d: &Delegation, edit: impl FnOnce(&mut GrantBody)) -> Vec<u8> {
        let signed = d.grants[0].to_signed_bytes(&self.admin).unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&signed).unwrap();
        value.as_object_mut().unwrap().remove("signature");
        let mut body: GrantBody = serde_json::from_value(value).unwrap();
        edit(&mut body);
        let mut message = b"cbfs-grant/v1\0".to_vec();
        message.extend_from_slice(&serde_json::to_vec(&body).unwrap());
        let signature = self.admin.signer().sign(&message);
        let mut doc = serde_json::to_value(&body).unwrap();
        doc["signature"] = hex::encode(signature.to_der_bytes()).into();
        let grant = serde_json::to_vec(&doc).unwrap();
        let (capsule, ciphertext) =
            cbfs_core::umbral_pre::encrypt(&self.node_pk(), &grant).unwrap();
        let sealed = serde_json::json!({
            "format": "cbfs-sealed-grant",
            "version": 1,
            "node": self.node.info().public_key,
            "capsule": B64.encode(capsule.to_bytes().unwrap()),
            "ciphertext": B64.encode(&ciphertext),
        });
        serde_json::to_vec(&GrantUpload::new(
            &serde_json::to_vec(&sealed).unwrap(),
            &d.record,
        ))
        .unwrap()
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

    fn body(&self, path: &str, capsules: &[Capsule]) -> ReencryptBody {
        ReencryptBody::new(
            &self.node_pk(),
            self.user_pub.name(),
            &self.scope,
            path,
            capsules,
            self.clock.unix(),
        )
    }

    fn request(&self, path: &str, capsules: &[Capsule]) -> SignedReencrypt {
        self.body(path, capsules).sign(&self.user.signer())
    }

    fn send(&self, request: &SignedReencrypt) -> Result<Cfrags, Refusal> {
        self.node
            .reencrypt(&serde_json::to_vec(request).unwrap(), None)
    }

    fn revoke(&self) -> RevokeDone {
        let revocation = Revocation::new(
            &self.admin,
            &self.scope,
            &self.user_pub,
            self.clock.as_ref(),
        );
        self.node
            .revoke(&revocation.to_signed_bytes(&self.admin).unwrap())
            .unwrap()
    }

    fn audit_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node/audit/audit.log")).unwrap()
    }

    fn audit_entries(&self) -> Vec<serde_json::Value> {
        self.audit_text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, Refusal>) -> (&'static str, String) {
    let e = r.unwrap_err();
    (e.code, e.reason)
}

fn rfc3339(unix: i64) -> String {
    FakeClock::at(unix).rfc3339()
}

#[test]
fn a_grant_for_this_node_reencrypts_a_thousand_capsules() {
    let w = world();
    let d = w.upload_one();
    assert_eq!(w.node.grant_count(), 1);
    let capsules = w.capsules(1000);
    let started = std::time::Instant::now();
    let answer = w.send(&w.request("/projects/", &capsules)).unwrap();
    eprintln!("1000 capsules re-encrypted in {:?}", started.elapsed());
    assert_eq!(answer.cfrags.len(), 1000);
    // The answer carries the administrator's record of the delegation.
    let record =
        cbfs_wire::record_from_value(&answer.delegation, "t", &w.admin.verifying_key()).unwrap();
    assert_eq!(record, d.record);
    assert_eq!((record.threshold(), record.shares()), (2, 3));
    let admin = w.admin.verifying_key();
    for (text, capsule) in answer.cfrags.iter().zip(&capsules).take(20) {
        decode_cfrag(text)
            .unwrap()
            .verify(
                capsule,
                &admin,
                d.grants[0].scope_public_key(),
                &w.user.public_key(),
            )
            .unwrap();
    }
    let entries = w.audit_entries();
    let last = entries.last().unwrap();
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

    let mallory = UserSecret::generate();
    let forged = w.body("/", &capsules).sign(&mallory.signer());
    assert_eq!(code(w.send(&forged)).0, "unauthenticated");

    let mut altered = w.request("/", &capsules);
    altered.request.path = "/other".into();
    assert_eq!(code(w.send(&altered)).0, "unauthenticated");

    let good = w.request("/", &capsules);
    w.send(&good).unwrap();
    let (c, reason) = code(w.send(&good));
    assert_eq!(c, "replayed", "{reason}");

    let mut old = w.body("/", &capsules);
    old.timestamp -= 3600;
    assert_eq!(code(w.send(&old.sign(&w.user.signer()))).0, "stale_request");

    let elsewhere = ReencryptBody::new(
        &UserSecret::generate().public_key(),
        w.user_pub.name(),
        &w.scope,
        "/",
        &capsules,
        w.clock.unix(),
    );
    assert_eq!(
        code(w.send(&elsewhere.sign(&w.user.signer()))).0,
        "wrong_node"
    );

    // A user the node holds nothing for cannot be authenticated at all.
    let stranger = ReencryptBody::new(
        &w.node_pk(),
        &UserName::new("bob").unwrap(),
        &w.scope,
        "/",
        &capsules,
        w.clock.unix(),
    );
    assert_eq!(
        code(w.send(&stranger.sign(&w.user.signer()))).0,
        "unauthenticated"
    );
    // A known user, rightly signed, asking for a scope the node holds no
    // delegation of.
    let mut other_scope = w.body("/", &capsules);
    other_scope.scope = ScopeLabel::new("other").unwrap();
    assert_eq!(
        code(w.send(&other_scope.sign(&w.user.signer()))).0,
        "no_delegation"
    );

    assert_eq!(
        code(w.node.reencrypt(b"{not json", None)).0,
        "unauthenticated"
    );
    assert_eq!(
        code(w.send(&w.request("relative", &capsules))).0,
        "bad_request"
    );
    let mut bad_capsule = w.body("/", &capsules);
    bad_capsule.capsules[1] = "AAAA".into();
    let (c, reason) = code(w.send(&bad_capsule.sign(&w.user.signer())));
    assert_eq!(c, "bad_request");
    assert!(reason.contains("capsule 1"), "{reason}");

    let audit = w.audit_text();
    for needed in [
        "unauthenticated",
        "replayed",
        "stale_request",
        "wrong_node",
        "no_delegation",
    ] {
        assert!(audit.contains(needed), "audit lacks {needed}");
    }
}

#[test]
fn the_signature_is_checked_before_anything_about_delegations_is_said() {
    let w = world();
    w.upload_one();
    let capsules = w.capsules(1);
    let mallory = UserSecret::generate();
    let forge = |scope: &str| {
        let mut body = w.body("/", &capsules);
        body.scope = ScopeLabel::new(scope).unwrap();
        body.sign(&mallory.signer())
    };

    // A delegation that exists, and one that does not: the same refusal.
    let existing = w.send(&forge("proj")).unwrap_err();
    let missing = w.send(&forge("nothing-here")).unwrap_err();
    assert_eq!((existing.status, existing.code), (401, "unauthenticated"));
    assert_eq!(existing, missing, "a prober tells the two apart");

    // Once revoked: a forger still learns nothing, alice learns it is revoked.
    assert!(w.revoke().deleted);
    let revoked = w.send(&forge("proj")).unwrap_err();
    assert_eq!(revoked, existing);
    let (c, reason) = code(w.send(&w.request("/", &capsules)));
    assert_eq!(c, "revoked", "{reason}");
    // And a rightly signed request for a scope never delegated is no_delegation.
    let mut other = w.body("/", &capsules);
    other.scope = ScopeLabel::new("nothing-here").unwrap();
    assert_eq!(
        code(w.send(&other.sign(&w.user.signer()))).0,
        "no_delegation"
    );

    // The user's key survives a restart with no grant left.
    let data = w.dir.path().to_path_buf();
    let clock = w.clock.clone();
    drop(w.node);
    let node = Node::open(config(
        &data,
        PolicySource::BuiltIn,
        Limits::default(),
        clock,
    ))
    .unwrap();
    assert_eq!(node.grant_count(), 0);
    let body = ReencryptBody::new(
        &public_key_from_hex(&node.info().public_key).unwrap(),
        w.user_pub.name(),
        &w.scope,
        "/",
        &capsules,
        w.clock.unix(),
    );
    let (c, reason) = code(node.reencrypt(
        &serde_json::to_vec(&body.clone().sign(&w.user.signer())).unwrap(),
        None,
    ));
    assert_eq!(c, "revoked", "{reason}");
    let (c, _) = code(node.reencrypt(
        &serde_json::to_vec(&body.sign(&mallory.signer())).unwrap(),
        None,
    ));
    assert_eq!(c, "unauthenticated");
}

#[test]
fn unauthenticated_requests_beyond_the_rate_are_not_audited_one_by_one() {
    let limits = Limits {
        unauthenticated_per_minute: 8,
        ..Limits::default()
    };
    let w = world_with(PolicySource::BuiltIn, limits);
    w.upload_one();
    let capsules = w.capsules(1);
    let mallory = UserSecret::generate();
    let before = w.audit_entries().len();
    let mut codes = Vec::new();
    for _ in 0..40 {
        let r = w
            .send(&w.body("/", &capsules).sign(&mallory.signer()))
            .unwrap_err();
        codes.push((r.status, r.code));
    }
    let audited = w.audit_entries().len() - before;
    let limited = codes
        .iter()
        .filter(|c| **c == (429, "rate_limited"))
        .count();
    let refused = codes
        .iter()
        .filter(|c| **c == (401, "unauthenticated"))
        .count();
    assert_eq!(limited + refused, 40, "{codes:?}");
    assert_eq!(audited, refused, "one audit entry per 401, none per 429");
    // A burst of 8 / 4 = 2, and a few more if the minute moved on.
    assert!((1..=4).contains(&refused), "{codes:?}");
    assert!(limited >= 36, "{codes:?}");
    // Alice is not held up by mallory's flood.
    w.send(&w.request("/", &capsules)).unwrap();
}

#[test]
fn timestamps_at_the_ends_of_time_are_stale_not_a_crash() {
    let w = world();
    w.upload_one();
    let capsules = w.capsules(1);
    for timestamp in [i64::MIN, i64::MIN + 1, i64::MAX, -1, 0] {
        let mut body = w.body("/", &capsules);
        body.timestamp = timestamp;
        let r = w.send(&body.sign(&w.user.signer())).unwrap_err();
        assert_eq!((r.status, r.code), (401, "stale_request"), "{timestamp}");
    }
    // The same with the node's clock at the ends of its range.
    for now in [i64::MIN / 1_000_000_000, 0, i64::MAX / 1_000_000_000] {
        w.clock.set(now);
        for timestamp in [i64::MIN, i64::MAX] {
            let mut body = w.body("/", &capsules);
            body.timestamp = timestamp;
            let r = w.send(&body.sign(&w.user.signer())).unwrap_err();
            assert_eq!(r.code, "stale_request", "{timestamp} at {now}");
        }
    }
    // The skew is inclusive, and one second more is refused.
    w.clock.set(T0);
    let skew = Limits::default().clock_skew.as_secs() as i64;
    for (offset, ok) in [
        (-skew, true),
        (skew, true),
        (-skew - 1, false),
        (skew + 1, false),
    ] {
        let mut body = w.body("/", &capsules);
        body.timestamp = T0 + offset;
        let r = w.send(&body.sign(&w.user.signer()));
        assert_eq!(r.is_ok(), ok, "offset {offset}: {r:?}");
    }
}

#[test]
fn uploads_are_checked() {
    let w = world();
    let d = w.delegation(None);

    // Share 2 is sealed for another node.
    assert_eq!(code(w.node.upload(&w.upload_of(&d, 1))).0, "wrong_node");

    // Signed by another administrator.
    let rogue = AdminSecret::generate();
    let mut rogue_keyset = Keyset::new(FsName::new("fs1").unwrap(), &rogue);
    rogue_keyset.add_scope(&rogue, &w.scope).unwrap();
    let forged = w.delegation_by(&rogue, &rogue_keyset, None);
    let sealed = forged.grants[0].seal_for_node(&rogue).unwrap();
    let body = serde_json::to_vec(&GrantUpload::new(&sealed, &forged.record)).unwrap();
    let (c, reason) = code(w.node.upload(&body));
    assert_eq!(c, "bad_grant");
    assert!(reason.contains("administrator key"), "{reason}");

    // A genuine share with the record of another delegation.
    w.clock.advance(5);
    let later = w.delegation(None);
    let sealed = d.grants[0].seal_for_node(&w.admin).unwrap();
    let mixed = serde_json::to_vec(&GrantUpload::new(&sealed, &later.record)).unwrap();
    let (c, reason) = code(w.node.upload(&mixed));
    assert_eq!(c, "bad_grant");
    assert!(reason.contains("different delegations"), "{reason}");

    assert_eq!(code(w.node.upload(b"garbage")).0, "bad_grant");
    assert_eq!(w.node.grant_count(), 0);
    w.node.upload(&w.upload_of(&later, 0)).unwrap();
    assert_eq!(w.node.grant_count(), 1);
    // An older delegation does not replace a newer one.
    let (c, reason) = code(w.node.upload(&w.upload_of(&d, 0)));
    assert_eq!(c, "stale_grant", "{reason}");
}

#[test]
fn revocation_deletes_and_refuses_the_old_grant() {
    let w = world();
    let d = w.upload_one();
    let capsules = w.capsules(1);
    w.send(&w.request("/", &capsules)).unwrap();

    let revocation = Revocation::new(&w.admin, &w.scope, &w.user_pub, w.clock.as_ref());
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
    assert_eq!(code(w.node.upload(&w.upload_of(&d, 0))).0, "revoked");
    // So is one issued in the revocation's second.
    let same_second = w.delegation(None);
    assert_eq!(
        code(w.node.upload(&w.upload_of(&same_second, 0))).0,
        "revoked"
    );
    // Revoking again complies, with nothing to delete.
    let again = w
        .node
        .revoke(&revocation.to_signed_bytes(&w.admin).unwrap())
        .unwrap();
    assert!(again.revoked && !again.deleted);
    // A revocation the administrator did not sign is refused.
    let rogue = AdminSecret::generate();
    let forged = Revocation::new(&rogue, &w.scope, &w.user_pub, w.clock.as_ref())
        .to_signed_bytes(&rogue)
        .unwrap();
    assert_eq!(code(w.node.revoke(&forged)).0, "bad_revocation");

    // State survives a restart.
    let data = w.dir.path().to_path_buf();
    drop(w.node);
    let node = Node::open(config(
        &data,
        PolicySource::BuiltIn,
        Limits::default(),
        w.clock.clone(),
    ))
    .unwrap();
    assert_eq!(node.grant_count(), 0);
    let w = World { node, ..w };
    assert_eq!(code(w.node.upload(&w.upload_of(&d, 0))).0, "revoked");

    // A delegation issued after the revocation is honoured again, and an
    // older revocation replayed does not take it away.
    w.clock.advance(1);
    w.node.upload(&w.upload_of(&w.delegation(None), 0)).unwrap();
    w.send(&w.request("/", &capsules)).unwrap();
    let replayed = w
        .node
        .revoke(&revocation.to_signed_bytes(&w.admin).unwrap())
        .unwrap();
    assert!(replayed.revoked && !replayed.deleted);
    w.send(&w.request("/", &capsules)).unwrap();
}

#[test]
fn a_revocation_covers_a_grant_whose_times_do_not_parse() {
    let w = world();
    let d = w.delegation(None);
    // The genuine administrator signed an issue time that is not a time:
    // a revocation on file refuses it (it cannot be shown to be newer).
    w.clock.advance(10);
    assert!(!w.revoke().deleted);
    w.clock.advance(10);
    let garbled = w.edited_upload(&d, |b| b.issued = "not a time".into());
    let (c, reason) = code(w.node.upload(&garbled));
    assert_eq!(c, "revoked", "{reason}");
    // An expiry that does not parse counts as expired.
    let garbled = w.edited_upload(&d, |b| b.expires = Some("some day".into()));
    let (c, reason) = code(w.node.upload(&garbled));
    assert_eq!(c, "expired", "{reason}");
    assert_eq!(w.node.grant_count(), 0);
    // Edited times that do parse still need the record to agree.
    let edited = w.edited_upload(&d, |b| b.issued = rfc3339(T0 + 3600));
    let (c, reason) = code(w.node.upload(&edited));
    assert_eq!(c, "bad_grant", "{reason}");
    assert_eq!(w.node.grant_count(), 0);
}

#[test]
fn expired_delegations_are_refused() {
    let w = world();
    let d = w.delegation(Some(rfc3339(T0 + 2)));
    w.node.upload(&w.upload_of(&d, 0)).unwrap();
    let capsules = w.capsules(1);
    w.send(&w.request("/", &capsules)).unwrap();
    w.clock.advance(1);
    w.send(&w.request("/", &capsules)).unwrap();
    // Expiry is at the second itself.
    w.clock.advance(1);
    let (c, reason) = code(w.send(&w.request("/", &capsules)));
    assert_eq!(c, "expired", "{reason}");
    // An expired grant is not taken either.
    assert_eq!(code(w.node.upload(&w.upload_of(&d, 0))).0, "expired");
    // Nor does the client take its answers: it judges by its own clock.
    let record = cbfs_wire::record_from_value(
        &serde_json::from_slice(d.record.to_bytes()).unwrap(),
        "t",
        &w.admin.verifying_key(),
    )
    .unwrap();
    assert!(record.is_expired(w.clock.as_ref()));
    assert!(!record.is_expired(FakeClock::at(T0 + 1).as_ref()));
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

#[test]
fn an_answer_given_up_on_is_audited_as_a_timeout() {
    let w = world();
    w.upload_one();
    let ticket = Ticket::default();
    assert!(ticket.drop_answer());
    let body = serde_json::to_vec(&w.request("/", &w.capsules(2))).unwrap();
    let r = w.node.reencrypt(&body, Some(&ticket)).unwrap_err();
    assert_eq!((r.status, r.code), (503, "timeout"));
    let last = w.audit_entries().pop().unwrap();
    assert_eq!(
        (&last["event"], &last["decision"], &last["code"]),
        (
            &serde_json::json!("reencrypt"),
            &serde_json::json!("deny"),
            &serde_json::json!("timeout")
        ),
        "{last}"
    );
    // A claimed answer is sent, and the handler cannot drop it any more.
    let ticket = Ticket::default();
    let body = serde_json::to_vec(&w.request("/", &w.capsules(2))).unwrap();
    w.node.reencrypt(&body, Some(&ticket)).unwrap();
    assert!(!ticket.drop_answer());
}

/// A node served over HTTP on a runtime whose single blocking thread the
/// test holds: every decision waits behind it, so the request's time runs
/// out on the node with the answer not yet made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_times_out_on_the_node_is_audited_as_refused_never_allowed() {
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let w = world_with(PolicySource::BuiltIn, limits);
    w.upload_one();
    let node = Arc::new(w.node);
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = {
        let node = node.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                // Hold the one blocking thread until the test lets go.
                let _held = tokio::task::spawn_blocking(move || release_rx.recv());
                crate::server::serve(
                    node,
                    listener,
                    async {
                        let _ = stop_rx.await;
                    },
                    futures::stream::pending(),
                )
                .await
                .unwrap();
            });
        })
    };
    let addr = addr_rx.recv().unwrap();
    let url = format!("http://{addr}");
    let nodes = cbfs_client::NodeSet::new([url.as_str()])
        .unwrap()
        .with_clock(w.clock.clone());
    let access =
        cbfs_wire::Access::from_keyset(&w.keyset, w.user_pub.name().clone(), w.scope.clone())
            .unwrap();
    let capsules = {
        let pk = w.keyset.scope(&w.scope).unwrap();
        (0..50)
            .map(|_| {
                Lockbox::seal("proj", pk, SegmentId::random())
                    .unwrap()
                    .0
                    .capsule()
                    .clone()
            })
            .collect::<Vec<_>>()
    };
    let started = std::time::Instant::now();
    let err = cbfs_client::fetch_cfrags(&nodes, &w.user, &access, "/", &capsules)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    let failures = err.failures();
    assert!(
        matches!(&failures[0].problem, cbfs_client::NodeProblem::Refused { status: 503, code, .. } if code == "timeout"),
        "{err}"
    );
    // Let the blocked work run: it decides, finds the answer given up on,
    // and audits the refusal.
    release_tx.send(()).unwrap();
    let audit = w.dir.path().join("node/audit/audit.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reencrypts = loop {
        let text = std::fs::read_to_string(&audit).unwrap();
        let found: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["event"] == "reencrypt")
            .collect();
        if !found.is_empty() {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit entry:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reencrypts.len(), 1, "{reencrypts:?}");
    assert_eq!(reencrypts[0]["decision"], "deny", "{}", reencrypts[0]);
    assert_eq!(reencrypts[0]["code"], "timeout", "{}", reencrypts[0]);
    assert_eq!(reencrypts[0]["capsules"], 50);
    // Nothing was released: the metrics agree.
    assert!(
        node.metrics()
            .render()
            .contains("cbfs_delegation_capsules_reencrypted_total 50"),
        "the work ran, and its answer was dropped"
    );
    stop_tx.send(()).unwrap();
    server.join().unwrap();
}

#[test]
fn a_newer_keyset_retires_the_old_scope_key_until_the_grant_is_issued_again() {
    let mut w = world();
    w.upload_one();
    assert!(w.send(&w.request("/p", &w.capsules(2))).is_ok());

    // The administrator rotates the scope and gives the node the keyset.
    let mut next = w.keyset.clone();
    next.rotate_scope(&w.admin, &w.scope).unwrap();
    let bytes = next.to_signed_bytes(&w.admin).unwrap();
    let stored = w.node.update_keyset(&bytes).unwrap();
    assert!(stored.updated && stored.serial == next.serial());
    // Again: nothing changes; an older one is refused; another
    // administrator's is refused.
    assert!(!w.node.update_keyset(&bytes).unwrap().updated);
    let old = w.keyset.to_signed_bytes(&w.admin).unwrap();
    assert_eq!(code(w.node.update_keyset(&old)).0, "stale_keyset");
    let rogue = AdminSecret::generate();
    let mut other = Keyset::new(FsName::new("fs1").unwrap(), &rogue);
    for i in 0..5 {
        other
            .add_scope(&rogue, &ScopeLabel::new(format!("s{i}")).unwrap())
            .unwrap();
    }
    assert_eq!(
        code(
            w.node
                .update_keyset(&other.to_signed_bytes(&rogue).unwrap())
        )
        .0,
        "bad_keyset"
    );

    // The delegation of the retired key is refused, saying what to do.
    let (c, reason) = code(w.send(&w.request("/p", &w.capsules(1))));
    assert_eq!(c, "retired_key");
    assert!(reason.contains("--reissue"), "{reason}");
    // The listing (administrator only) names it, for re-issuing.
    let list = cbfs_wire::admin::ListBody::new(&w.node_pk(), next.fs(), &w.scope, T0);
    let body = serde_json::to_vec(&list.clone().sign(&w.admin.signer())).unwrap();
    assert_eq!(w.node.delegations(&body).unwrap().delegations.len(), 1);
    let by_user = serde_json::to_vec(&list.sign(&w.user.signer())).unwrap();
    assert_eq!(code(w.node.delegations(&by_user)).0, "unauthenticated");

    // Issued again under the new key: accepted, and it works.
    w.keyset = next;
    let d = w.delegation(None);
    w.node.upload(&w.upload_of(&d, 0)).unwrap();
    assert!(w.send(&w.request("/p", &w.capsules(2))).is_ok());

    // The node keeps the newer keyset across a restart: the older one is
    // still refused.
    let World {
        dir,
        node,
        clock,
        keyset,
        admin,
        ..
    } = w;
    drop(node);
    let node = Node::open(config(
        dir.path(),
        PolicySource::BuiltIn,
        Limits::default(),
        clock,
    ))
    .unwrap();
    assert!(node.info().fs == "fs1");
    assert_eq!(code(node.update_keyset(&old)).0, "stale_keyset");
    assert!(
        !node
            .update_keyset(&keyset.to_signed_bytes(&admin).unwrap())
            .unwrap()
            .updated
    );
}

#[test]
fn after_a_hand_over_the_old_administrator_key_alone_is_refused() {
    let mut w = world();
    w.upload_one();
    let mut next = w.keyset.clone();
    let copy = AdminSecret::from_seed(
        cbfs_core::Seed::from_slice(w.admin.seed().expose_secret_bytes(), "t").unwrap(),
    );
    let new_admin = next.rotate_admin(copy).unwrap();
    w.node
        .update_keyset(&next.to_signed_bytes(&new_admin).unwrap())
        .unwrap();
    assert_eq!(
        w.node.info().admin_fingerprint,
        cbfs_core::fingerprint(next.admin_verifying_key())
    );
    // The grant the old key signed is refused ...
    assert_eq!(
        code(w.send(&w.request("/p", &w.capsules(1)))).0,
        "stale_admin"
    );
    // ... a new one the old key signs is refused ...
    let d = w.delegation(None);
    assert_eq!(code(w.node.upload(&w.upload_of(&d, 0))).0, "bad_grant");
    // ... and one the new key signs works.
    w.keyset = next;
    w.admin = new_admin;
    let d = w.delegation(None);
    w.node.upload(&w.upload_of(&d, 0)).unwrap();
    assert!(w.send(&w.request("/p", &w.capsules(1))).is_ok());
}
