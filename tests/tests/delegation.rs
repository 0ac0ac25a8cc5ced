//! End-to-end tests of the delegation service: real `cbfs-delegation serve`
//! processes on 127.0.0.1, keys and delegations made with the real
//! `cbfs-keytool` (`delegate --node`, `revoke`), and the client library
//! fetching cfrags for lockbox capsules and opening the lockboxes.
//!
//! The bar of the issue, one test each: 2-of-3 survives one dead node and
//! fails clearly with two; a revoked user, an expired delegation, a path
//! the policy excludes, a forged and a replayed request are refused; a node
//! that returns tampered cfrags is detected and named; one node re-encrypts
//! a 1,000-capsule batch into verified cfrags; a slow node does not hold
//! a restore up. Then the operations: audit
//! log verification, `check-policies`, SIGHUP reload, SIGTERM, and no
//! secret in any node log or audit log.

#![forbid(unsafe_code)]

#[path = "delegation/cluster.rs"]
mod cluster;
#[path = "delegation/liar.rs"]
mod liar;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cbfs_client::{FetchError, NodeProblem};
use cbfs_core::{ScopeLabel, UserName, UserSecret, public_key_from_hex};
use cbfs_tests::{Fault, FaultPlan, FaultyProxy, cbfs_cmd, http_client, run_fail, run_ok};
use cbfs_wire::{NodeInfo, ReencryptBody, SignedReencrypt};
use cluster::{Cluster, SCOPE, USER, text};
use liar::{Lie, LyingProxy};

/// The codes of the nodes' refusals in a failed fetch.
fn refusal_codes(err: &FetchError) -> Vec<String> {
    err.failures()
        .iter()
        .filter_map(|f| match &f.problem {
            NodeProblem::Refused { code, .. } => Some(code.clone()),
            _ => None,
        })
        .collect()
}

fn expect_refused(result: Result<cbfs_client::Fetched, FetchError>, code: &str) -> String {
    let err = result.expect_err("the fetch must be refused");
    let message = err.to_string();
    let codes = refusal_codes(&err);
    assert!(
        codes.len() >= 2 && codes.iter().all(|c| c == code),
        "expected every node to refuse with `{code}`, got {codes:?}:\n{message}"
    );
    message
}

fn policy_folder(work: &cbfs_tests::Workdir, name: &str) -> PathBuf {
    let dir = work.mkdir(name);
    for (file, body) in cbfs_delegation::DEFAULT_POLICIES {
        fs::write(dir.join(file), body).unwrap();
    }
    dir
}

const NO_PRIVATE: &str = r#"@id("no-private")
forbid (principal, action == Cbfs::Action::"unlock", resource)
when { context.path like "/private/*" };
"#;

fn repo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default")
}

#[test]
fn two_of_three_survives_one_dead_node_and_fails_clearly_with_two() {
    let mut c = Cluster::start(3, &[]);
    let out = c.delegate(2, &[]);
    let said = text(&out.stdout);
    assert_eq!(said.matches(": stored").count(), 3, "{said}");
    assert!(said.contains("cannot be revoked"), "{said}");

    let lockboxes = c.lockboxes(12);
    let all = c.urls();
    let fetched = c.fetch(&all, "/projects/", &lockboxes).unwrap();
    assert_eq!(fetched.answered.len(), 2);
    c.open_all(fetched, &lockboxes);

    // One node down: the restore still succeeds.
    c.nodes[2].kill();
    let fetched = c.fetch(&all, "/projects/", &lockboxes).unwrap();
    assert_eq!(fetched.answered, &all[..2]);
    c.open_all(fetched, &lockboxes);

    // Two down: a clear failure naming the dead nodes.
    c.nodes[1].kill();
    let err = c.fetch(&all, "/projects/", &lockboxes).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("2 of the 3 delegation nodes must answer")
            && message.contains("only 1 did"),
        "{message}"
    );
    for dead in &all[1..] {
        assert!(
            message.contains(&format!("node {dead} is down")),
            "{message}"
        );
    }
    assert_eq!(err.failures().len(), 2);
    c.assert_no_secrets();
}

#[test]
fn two_nodes_reencrypt_a_thousand_capsules_into_verified_cfrags() {
    let c = Cluster::start(3, &[]);
    c.delegate(2, &[]);
    let lockboxes = c.lockboxes(1000);
    let started = Instant::now();
    let fetched = c.fetch(&c.urls()[..2], "/", &lockboxes).unwrap();
    eprintln!(
        "1000 capsules: re-encrypted and verified in {:?}",
        started.elapsed()
    );
    assert_eq!(fetched.cfrags.len(), 1000);
    assert!(
        fetched
            .cfrags
            .iter()
            .all(|per_capsule| per_capsule.len() == 2)
    );
    assert!(fetched.failures.is_empty());
    // One request, not a thousand.
    let metrics = http_client()
        .get(format!("{}/metrics", c.urls()[0]))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("cbfs_delegation_capsules_reencrypted_total 1000"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cbfs_delegation_batch_seconds_count{decision=\"allow\"} 1"),
        "{metrics}"
    );
    let audit = fs::read_to_string(c.nodes[0].audit_path()).unwrap();
    assert!(audit.contains("\"capsules\":1000"), "{audit}");
}

#[test]
fn a_revoked_user_is_refused() {
    let mut c = Cluster::start(3, &[]);
    c.delegate(2, &[]);
    // The same delegation again, written sealed for the nodes instead of
    // sent, to try uploading an old share again after the revocation.
    let mut offline = cluster::keytool(c.work.root());
    offline
        .args(cluster::words(&format!(
            "delegate --admin file:admin.key --keyset keyset.json --scope {SCOPE} --to {USER}.pub --threshold 2 --out grants"
        )))
        .args(
            c.nodes
                .iter()
                .flat_map(|n| ["--node-key".into(), n.data.join("node.pub")]),
        );
    run_ok(&mut offline);
    let lockboxes = c.lockboxes(3);
    let all = c.urls();
    c.open_all(c.fetch(&all, "/", &lockboxes).unwrap(), &lockboxes);

    // One node down: 2 of 3 comply, and n - m + 1 = 2 is enough.
    c.nodes[2].kill();
    let out = run_ok(&mut c.revoke_cmd(&["--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["complied"], 2, "{report:#}");
    assert_eq!(report["needed"], 2);
    assert_eq!(report["threshold"], 2);
    assert_eq!(report["holds"], true);
    assert_eq!(report["nodes"][0]["deleted"], true);
    assert_eq!(report["nodes"][2]["complied"], false);

    let message = expect_refused(c.fetch(&all, "/", &lockboxes), "revoked");
    assert!(message.contains("was revoked at"), "{message}");

    // The old grant, uploaded again, is refused.
    let sealed = fs::read(c.work.path(format!("grants/{SCOPE}.{USER}.1-of-3.share"))).unwrap();
    let answer = http_client()
        .post(format!("{}/v1/grants", all[0]))
        .body(sealed)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 403);
    let body: serde_json::Value = answer.json().unwrap();
    assert_eq!(body["error"], "revoked", "{body}");

    // With two nodes down, the revocation cannot hold: exit 6, saying why.
    c.nodes[1].kill();
    let out = run_fail(&mut c.revoke_cmd(&[]));
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        said.contains("1 of 3 nodes complied") && said.contains("does not hold"),
        "{said}"
    );
    assert!(said.contains("cannot be revoked"), "{said}");

    // A new delegation after the revocation is honoured again.
    drop(c.nodes.remove(2));
    drop(c.nodes.remove(1));
    // Issued must be after the revocation's second: the clock moves on.
    cluster::move_clock(c.work.root(), 2);
    let mut cmd = cluster::keytool(c.work.root());
    cmd.args(cluster::words(&format!(
        "delegate --admin file:admin.key --keyset keyset.json --scope {SCOPE} --to {USER}.pub --threshold 1 --node {}",
        all[0]
    )));
    run_ok(&mut cmd);
    c.open_all(c.fetch(&all[..1], "/", &lockboxes).unwrap(), &lockboxes);
    c.assert_no_secrets();
}

#[test]
fn an_expired_delegation_is_refused() {
    let c = Cluster::start(3, &[]);
    let out = c.delegate(2, &["--expires", "8s"]);
    assert!(
        text(&out.stdout).contains("until "),
        "{}",
        text(&out.stdout)
    );
    let lockboxes = c.lockboxes(2);
    let all = c.urls();
    c.open_all(c.fetch(&all, "/", &lockboxes).unwrap(), &lockboxes);
    // Nine seconds later, by the nodes' clock (no test sleeps for it).
    cluster::move_clock(c.work.root(), 9);
    let message = expect_refused(c.fetch(&all, "/", &lockboxes), "expired");
    assert!(message.contains("expired at"), "{message}");
    // And an expired delegation cannot be sent again either.
    let out = run_fail(&mut c.delegate_cmd(2, &["--expires", "2001-01-01T00:00:00Z"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn a_path_the_policy_excludes_is_refused() {
    let work = cbfs_tests::Workdir::new();
    let policies = policy_folder(&work, "policies");
    fs::write(policies.join("private.cedar"), NO_PRIVATE).unwrap();
    let c = Cluster::start(3, &["--policies".into(), policies.display().to_string()]);
    c.delegate(2, &[]);
    let lockboxes = c.lockboxes(2);
    let all = c.urls();
    c.open_all(
        c.fetch(&all, "/public/reports/", &lockboxes).unwrap(),
        &lockboxes,
    );
    let message = expect_refused(c.fetch(&all, "/private/payroll/", &lockboxes), "denied");
    assert!(message.contains("forbidden by no-private"), "{message}");
    let audit = fs::read_to_string(c.nodes[0].audit_path()).unwrap();
    let denial = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["decision"] == "deny" && e["event"] == "reencrypt")
        .expect("a denial in the audit log");
    assert_eq!(denial["user"], USER);
    assert_eq!(denial["scope"], SCOPE);
    assert_eq!(denial["path"], "/private/payroll/");
    assert_eq!(denial["capsules"], 2);
    assert_eq!(denial["code"], "denied");
    assert_eq!(denial["policies"][0], "no-private");
}

/// A request signed by `signer`, as the client library would make it.
fn raw_request(c: &Cluster, url: &str, signer: &UserSecret) -> SignedReencrypt {
    let info: NodeInfo = http_client()
        .get(format!("{url}/v1/node"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let node_pk = public_key_from_hex(&info.public_key).unwrap();
    let capsules: Vec<_> = c
        .lockboxes(2)
        .iter()
        .map(|(l, _)| l.capsule().clone())
        .collect();
    ReencryptBody::new(
        &node_pk,
        &UserName::new(USER).unwrap(),
        &ScopeLabel::new(SCOPE).unwrap(),
        "/",
        &capsules,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    )
    .sign(&signer.signer())
}

fn post(url: &str, request: &SignedReencrypt) -> (u16, serde_json::Value) {
    let answer = http_client()
        .post(format!("{url}/v1/reencrypt"))
        .json(request)
        .send()
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().unwrap())
}

#[test]
fn forged_and_replayed_requests_are_refused() {
    let c = Cluster::start(3, &[]);
    c.delegate(2, &[]);
    let url = &c.urls()[0];

    let mallory = UserSecret::generate();
    let (status, body) = post(url, &raw_request(&c, url, &mallory));
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );

    let mut altered = raw_request(&c, url, &c.user);
    altered.request.path = "/somewhere/else".into();
    let (status, body) = post(url, &altered);
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );

    let good = raw_request(&c, url, &c.user);
    let (status, body) = post(url, &good);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cfrags"].as_array().unwrap().len(), 2);
    let (status, body) = post(url, &good);
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("replayed")),
        "{body}"
    );

    // The same request at another node is addressed to the wrong node.
    let (status, body) = post(&c.urls()[1], &good);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("wrong_node")),
        "{body}"
    );

    let metrics = http_client()
        .get(format!("{url}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("cbfs_delegation_decisions_total{code=\"replayed\",decision=\"deny\",kind=\"reencrypt\"} 1"),
        "{metrics}"
    );
    c.assert_no_secrets();
}

#[test]
fn a_node_that_returns_tampered_cfrags_is_detected_and_named() {
    let mut c = Cluster::start(3, &[]);
    c.delegate(2, &[]);
    let liar = LyingProxy::start(&c.nodes[1].url);
    let urls = vec![c.urls()[0].clone(), liar.url.clone(), c.urls()[2].clone()];
    let lockboxes = c.lockboxes(4);

    // Two honest nodes answer: the liar does not stop the restore.
    let fetched = c.fetch(&urls, "/", &lockboxes).unwrap();
    assert!(!fetched.answered.contains(&liar.url) || liar.lies.load(Ordering::SeqCst) == 0);
    if fetched.failures.iter().any(|f| f.lied()) {
        assert_eq!(fetched.failures[0].node, liar.url);
    }
    c.open_all(fetched, &lockboxes);

    // One honest node left: the fetch fails, and names the liar.
    c.nodes[2].kill();
    let err = c.fetch(&urls, "/", &lockboxes).unwrap_err();
    let message = err.to_string();
    assert!(liar.lies.load(Ordering::SeqCst) >= 1);
    let lied: Vec<_> = err.failures().iter().filter(|f| f.lied()).collect();
    assert_eq!(lied.len(), 1, "{message}");
    assert_eq!(lied[0].node, liar.url);
    assert!(
        message.contains(&format!("node {} LIED", liar.url)) && message.contains("does not verify"),
        "{message}"
    );
    assert!(message.contains("faulty or compromised"), "{message}");
}

/// The threshold comes from the administrator's signed delegation record,
/// never from what a node says: a node that answers with a record claiming
/// "one answer is enough" is refused (the record no longer verifies), and
/// its answer cannot end the fetch with fewer than m honest shares.
#[test]
fn a_node_that_claims_a_threshold_of_one_cannot_end_the_fetch() {
    let mut c = Cluster::start(2, &[]);
    c.delegate(2, &[]);
    let liar = LyingProxy::lying(&c.nodes[0].url, Lie::ClaimThresholdOne);
    let lockboxes = c.lockboxes(2);
    // The liar first, the honest node killed: one share at most.
    c.nodes[1].kill();
    let urls = vec![liar.url.clone(), c.urls()[1].clone()];
    let err = c.fetch(&urls, "/", &lockboxes).unwrap_err();
    assert!(
        liar.lies.load(Ordering::SeqCst) >= 1,
        "the liar changed nothing"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("node {} LIED", liar.url))
            && message.contains("delegation record")
            && message.contains("does not verify"),
        "{message}"
    );
}

/// One node reached under two URLs (here through a plain relay) holds one
/// share: it counts once, so 2-of-2 is not met by it alone.
#[test]
fn the_same_node_under_two_urls_counts_once() {
    let mut c = Cluster::start(2, &[]);
    c.delegate(2, &[]);
    let upstream = c.nodes[0]
        .url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let relay = FaultyProxy::start(upstream, FaultPlan::new());
    let lockboxes = c.lockboxes(2);
    c.nodes[1].kill();
    let urls = vec![c.urls()[0].clone(), relay.endpoint()];
    let err = c.fetch(&urls, "/", &lockboxes).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("2 of the 2 delegation nodes must answer") && message.contains("only 1"),
        "{message}"
    );
}

/// `cbfs-keytool revoke` takes m and n from the delegation record the
/// administrator signed (every node returns it, and the tool checks it with
/// the administrator's key), never from a node's word: a node that claims
/// m = n ("my compliance alone is enough") cannot make a revocation that 2
/// nodes still escape look as if it held, and a node that edits the signed
/// record is named as lying and not counted.
#[test]
fn a_node_that_claims_m_equals_n_cannot_make_a_revocation_hold() {
    let mut c = Cluster::start(3, &[]);
    c.delegate(2, &[]);
    let liar = LyingProxy::lying(&c.nodes[0].url, Lie::ClaimRevokeTerms(3, 3));
    // Two nodes keep their shares: 2 of 3 can still unlock, so the
    // revocation does not hold with one node complying.
    c.nodes[1].kill();
    c.nodes[2].kill();
    let urls = vec![liar.url.clone(), c.urls()[1].clone(), c.urls()[2].clone()];
    let revoke = |lie_urls: &[String]| {
        let mut cmd = cluster::keytool(c.work.root());
        cmd.args(cluster::words(&format!(
            "--json revoke --admin file:admin.key --scope {SCOPE} --user {USER}.pub"
        )))
        .args(Cluster::node_args(lie_urls));
        run_fail(&mut cmd)
    };
    let out = revoke(&urls);
    assert!(
        liar.lies.load(Ordering::SeqCst) >= 1,
        "the liar changed nothing"
    );
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    let report = first_json(&out.stdout);
    assert_eq!(report["threshold"], 2, "{report:#}");
    assert_eq!(report["shares"], 3, "{report:#}");
    assert_eq!(report["terms"], "as the administrator signed it");
    assert_eq!(report["needed"], 2, "{report:#}");
    assert_eq!(report["complied"], 1, "{report:#}");
    assert_eq!(report["holds"], false, "{report:#}");

    // The same revocation again, through a node that edits the signed
    // record (the node answers with the record of the share it deleted).
    drop(liar);
    let forger = LyingProxy::lying(&c.nodes[0].url, Lie::ForgeRevokeRecord(3));
    let urls = vec![forger.url.clone(), c.urls()[1].clone(), c.urls()[2].clone()];
    let out = revoke(&urls);
    assert!(
        forger.lies.load(Ordering::SeqCst) >= 1,
        "the forger changed nothing"
    );
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    let report = first_json(&out.stdout);
    assert_eq!(report["complied"], 0, "{report:#}");
    let lied = report["nodes"][0]["lied"].as_str().unwrap_or_default();
    assert!(lied.contains("not the administrator's"), "{report:#}");
    // Said to people too.
    let mut cmd = cluster::keytool(c.work.root());
    cmd.args(cluster::words(&format!(
        "revoke --admin file:admin.key --scope {SCOPE} --user {USER}.pub"
    )))
    .args(Cluster::node_args(&urls));
    let out = run_fail(&mut cmd);
    let said = text(&out.stdout);
    assert!(said.contains(&format!("{}: LIED", forger.url)), "{said}");
}

/// A node that says it complied but will not give its key (so the key tool
/// cannot tell whether two URLs are one node, or whether it is a node of
/// the delegation at all) is not counted when the signed record sets the
/// terms: one node under two such URLs cannot pass for the two nodes a
/// 2-of-3 revocation needs.
#[test]
fn a_node_that_hides_its_key_is_not_counted_twice_under_two_urls() {
    let mut c = Cluster::start(3, &[]);
    c.delegate(2, &[]);
    let (a, b) = (
        LyingProxy::lying(&c.nodes[0].url, Lie::HideKey),
        LyingProxy::lying(&c.nodes[0].url, Lie::HideKey),
    );
    c.nodes[1].kill();
    c.nodes[2].kill();
    let urls = vec![a.url.clone(), b.url.clone(), c.urls()[2].clone()];
    let mut cmd = cluster::keytool(c.work.root());
    cmd.args(cluster::words(&format!(
        "--json revoke --admin file:admin.key --scope {SCOPE} --user {USER}.pub"
    )))
    .args(Cluster::node_args(&urls));
    let out = run_fail(&mut cmd);
    assert!(
        a.lies.load(Ordering::SeqCst) + b.lies.load(Ordering::SeqCst) >= 2,
        "the key tool never asked the nodes' keys"
    );
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    let report = first_json(&out.stdout);
    assert_eq!(report["terms"], "as the administrator signed it");
    assert_eq!(report["needed"], 2, "{report:#}");
    assert_eq!(report["complied"], 0, "{report:#}");
    assert_eq!(report["holds"], false, "{report:#}");
    for node in &report["nodes"].as_array().unwrap()[..2] {
        assert_eq!(node["complied"], true, "{report:#}");
        assert_eq!(node["counted"], false, "{report:#}");
    }
}

/// The first JSON document of `bytes` (a failing `--json` command prints
/// its report, then the error).
fn first_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<serde_json::Value>()
        .next()
        .expect("a JSON report")
        .unwrap_or_else(|e| panic!("{e}: {}", text(bytes)))
}

/// A node's answer is read only up to what the request can need: a node
/// that answers with 64 MiB is refused and named, and the others finish
/// the fetch.
#[test]
fn an_oversized_node_answer_is_refused_and_named() {
    let mut c = Cluster::start(3, &[]);
    c.delegate(2, &[]);
    let liar = LyingProxy::lying(&c.nodes[0].url, Lie::Oversized(64 << 20));
    let lockboxes = c.lockboxes(2);
    let urls = vec![liar.url.clone(), c.urls()[1].clone(), c.urls()[2].clone()];
    let fetched = c.fetch(&urls, "/", &lockboxes).unwrap();
    assert!(!fetched.answered.contains(&liar.url));
    c.open_all(fetched, &lockboxes);
    // With one honest node left, the failure names the liar and why.
    c.nodes[2].kill();
    let err = c.fetch(&urls, "/", &lockboxes).unwrap_err();
    let message = err.to_string();
    assert!(liar.lies.load(Ordering::SeqCst) >= 1);
    assert!(
        message.contains(&liar.url) && message.contains("more than the"),
        "{message}"
    );
}

#[test]
fn a_slow_node_does_not_hold_up_the_restore() {
    let mut c = Cluster::start(3, &[]);
    c.delegate(2, &[]);
    let upstream = c.nodes[0]
        .url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let slow = FaultyProxy::start(
        upstream,
        FaultPlan::first(100, Fault::Delay(Duration::from_secs(30))),
    );
    let urls = vec![slow.endpoint(), c.urls()[1].clone(), c.urls()[2].clone()];
    let lockboxes = c.lockboxes(3);
    let started = Instant::now();
    let fetched = c.fetch(&urls, "/", &lockboxes).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "waited {:?} for the slow node",
        started.elapsed()
    );
    assert_eq!(fetched.answered, &urls[1..]);
    c.open_all(fetched, &lockboxes);

    // With one fast node left, the slow one runs out of time, and is named.
    c.nodes[2].kill();
    let err = c
        .fetch_within(Duration::from_secs(2), &urls, "/", &lockboxes)
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!("node {} did not answer within 2 s", urls[0])),
        "{message}"
    );
    assert!(
        message.contains(&format!("node {} is down", urls[2])),
        "{message}"
    );
}

#[test]
fn the_audit_log_shows_edited_and_deleted_entries() {
    let mut c = Cluster::start(1, &[]);
    c.delegate(1, &[]);
    let lockboxes = c.lockboxes(2);
    for _ in 0..3 {
        c.fetch(&c.urls(), "/", &lockboxes).unwrap();
    }
    let mallory = UserSecret::generate();
    post(&c.urls()[0], &raw_request(&c, &c.urls()[0], &mallory));
    let node = &mut c.nodes[0];
    node.signal("TERM");
    assert!(node.wait_exit(Duration::from_secs(20)).success());
    let data = node.data.clone();
    let verify = || {
        cbfs_cmd("cbfs-delegation")
            .arg("audit")
            .arg("verify")
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("chain intact"),
        "{}",
        text(&out.stdout)
    );

    let path = node.audit_path();
    let original = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    // start, the keyset `delegate` sent (already in force), grant, 3 allows,
    // 1 deny, stop
    assert_eq!(lines.len(), 8, "{original}");
    assert!(lines[1].contains("\"keyset\""), "{}", lines[1]);
    assert!(
        lines[6].contains("\"unauthenticated\"") && lines[6].contains("\"deny\""),
        "{}",
        lines[6]
    );

    // Turn the denial into an allow.
    let edited = original.replacen(lines[6], &lines[6].replace("\"deny\"", "\"allow\""), 1);
    fs::write(&path, edited).unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("entry 8 does not chain")
            && text(&out.stderr).contains("entry 7 was edited"),
        "{}",
        text(&out.stderr)
    );

    // Delete one of the allows.
    let mut kept: Vec<&str> = lines.clone();
    kept.remove(3);
    fs::write(&path, kept.join("\n") + "\n").unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("line 4 has seq 5"),
        "{}",
        text(&out.stderr)
    );

    // A node does not append to a broken log.
    let restart = cbfs_cmd("cbfs-delegation")
        .args(["serve", "--listen", "127.0.0.1:1", "--data"])
        .arg(&data)
        .arg("--keyset")
        .arg(c.work.path("keyset.json"))
        .output()
        .unwrap();
    assert_eq!(restart.status.code(), Some(4), "{}", text(&restart.stderr));
    assert!(
        text(&restart.stderr).contains("will not append"),
        "{}",
        text(&restart.stderr)
    );

    fs::write(&path, &original).unwrap();
    assert!(verify().status.success());
    c.assert_no_secrets();
}

#[test]
fn check_policies_accepts_the_default_folder_and_refuses_a_broken_one() {
    let out = run_ok(
        cbfs_cmd("cbfs-delegation")
            .arg("check-policies")
            .arg(repo_policies()),
    );
    assert!(
        text(&out.stdout).contains("1 policy is valid against the schema: live-delegation"),
        "{}",
        text(&out.stdout)
    );

    let work = cbfs_tests::Workdir::new();
    let good = policy_folder(&work, "good");
    fs::write(good.join("private.cedar"), NO_PRIVATE).unwrap();
    let out = run_ok(cbfs_cmd("cbfs-delegation").arg("check-policies").arg(&good));
    assert!(
        text(&out.stdout).contains("2 policies are valid"),
        "{}",
        text(&out.stdout)
    );

    let syntax = policy_folder(&work, "syntax");
    fs::write(
        syntax.join("bad.cedar"),
        "permit (\n  principal,\n  action resource\n);\n",
    )
    .unwrap();
    let out = run_fail(
        cbfs_cmd("cbfs-delegation")
            .arg("check-policies")
            .arg(&syntax),
    );
    assert_eq!(out.status.code(), Some(4));
    let err = text(&out.stderr);
    assert!(err.contains("bad.cedar") && err.contains("line 3"), "{err}");

    let typo = policy_folder(&work, "typo");
    fs::write(
        typo.join("typo.cedar"),
        "forbid (principal, action, resource) when { context.size > 5 };\n",
    )
    .unwrap();
    let out = run_fail(cbfs_cmd("cbfs-delegation").arg("check-policies").arg(&typo));
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("do not validate"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn sighup_reloads_policies_without_dropping_requests() {
    let work = cbfs_tests::Workdir::new();
    let policies = policy_folder(&work, "policies");
    let c = Cluster::start(1, &["--policies".into(), policies.display().to_string()]);
    c.delegate(1, &[]);
    let url = c.urls();
    let lockboxes = c.lockboxes(2);
    c.open_all(
        c.fetch(&url, "/private/x/", &lockboxes).unwrap(),
        &lockboxes,
    );

    // Requests keep going while the policies change under them: before the
    // reload, and after the node shows the new policy (waited for by what
    // the node serves, not by the clock).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let served = std::sync::atomic::AtomicUsize::new(0);
    let wait_served = |at_least: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while served.load(Ordering::SeqCst) < at_least {
            assert!(Instant::now() < deadline, "the requests stopped");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    std::thread::scope(|s| {
        let background = s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                c.fetch(&url, "/public/", &lockboxes)
                    .expect("a request during the reload failed");
                served.fetch_add(1, Ordering::SeqCst);
            }
        });
        wait_served(1);
        fs::write(policies.join("private.cedar"), NO_PRIVATE).unwrap();
        c.nodes[0].signal("HUP");
        wait_for_policy(&url[0], "no-private", true);
        wait_served(served.load(Ordering::SeqCst) + 2);
        stop.store(true, Ordering::SeqCst);
        background.join().unwrap()
    });
    let message = expect_single_refusal(c.fetch(&url, "/private/x/", &lockboxes), "denied");
    assert!(message.contains("no-private"), "{message}");

    // A broken folder is refused on reload; the policies in force stay.
    fs::write(policies.join("broken.cedar"), "permit (").unwrap();
    c.nodes[0].signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.nodes[0].log_text().contains("NOT reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged:\n{}",
            c.nodes[0].log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.nodes[0].log_text().contains("broken.cedar"));
    wait_for_policy(&url[0], "no-private", true);
    expect_single_refusal(c.fetch(&url, "/private/x/", &lockboxes), "denied");
    c.open_all(c.fetch(&url, "/public/", &lockboxes).unwrap(), &lockboxes);
}

fn expect_single_refusal(result: Result<cbfs_client::Fetched, FetchError>, code: &str) -> String {
    let err = result.expect_err("the fetch must be refused");
    assert_eq!(refusal_codes(&err), [code], "{err}");
    err.to_string()
}

fn wait_for_policy(url: &str, id: &str, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health: serde_json::Value = http_client()
            .get(format!("{url}/healthz"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let has = health["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == id);
        if has == present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "policy {id} present={has} after 20 s: {health}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_stops_a_node_gracefully() {
    let mut c = Cluster::start(1, &[]);
    c.delegate(1, &[]);
    let node = &mut c.nodes[0];
    node.signal("TERM");
    let status = node.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", node.log_text());
    let audit = fs::read_to_string(node.audit_path()).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "stop");
    assert!(node.log_text().contains("SIGTERM: stopping gracefully"));
}

#[test]
fn delegate_sends_nothing_unless_every_node_answers() {
    let mut c = Cluster::start(3, &[]);
    c.nodes[1].kill();
    let out = run_fail(&mut c.delegate_cmd(2, &[]));
    assert_eq!(out.status.code(), Some(6));
    let err = text(&out.stderr);
    assert!(
        err.contains("nothing was delegated") && err.contains(&c.urls()[1]),
        "{err}"
    );
    for node in [&c.nodes[0], &c.nodes[2]] {
        let health: serde_json::Value = http_client()
            .get(format!("{}/healthz", node.url))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(health["grants"], 0);
    }
    // Each share needs a node of its own: one node named twice is refused.
    let first = c.urls()[0].clone();
    let out = run_fail(&mut c.delegate_cmd(2, &["--node", &first]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("given twice"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_says_that_released_keys_cannot_be_revoked() {
    let out = run_ok(cbfs_cmd("cbfs-keytool").args(["revoke", "--help"]));
    let help = text(&out.stdout);
    assert!(help.contains("CANNOT be revoked"), "{help}");
    assert!(help.contains("n - m + 1"), "{help}");
    let out = run_ok(cbfs_cmd("cbfs-keytool").args(["delegate", "--help"]));
    assert!(text(&out.stdout).contains("cannot be revoked"));
    let out = run_ok(cbfs_cmd("cbfs-delegation").arg("--help"));
    assert!(text(&out.stdout).contains("cannot be taken back"));
}

/// The grants each node holds, from its health report.
fn grants_on(c: &Cluster) -> Vec<u64> {
    c.nodes
        .iter()
        .map(|n| {
            let health: serde_json::Value = http_client()
                .get(format!("{}/healthz", n.url))
                .send()
                .unwrap()
                .json()
                .unwrap();
            health["grants"].as_u64().unwrap()
        })
        .collect()
}

/// `--node URL --node-key NODE.pub` pins each node's key: a share is sealed
/// only for the key the administrator pinned. A server answering at a
/// node's URL with any other key (here: the pins of nodes 2 and 3 swapped,
/// as if each URL were answered by another machine) gets nothing, and
/// neither does any other node.
#[test]
fn a_node_that_answers_another_key_than_its_pin_gets_no_share() {
    let c = Cluster::start(3, &[]);
    let urls = c.urls();
    let pinned = |order: [usize; 3]| -> Vec<String> {
        order
            .iter()
            .zip(&urls)
            .flat_map(|(&i, url)| {
                [
                    "--node".to_owned(),
                    url.clone(),
                    "--node-key".to_owned(),
                    c.nodes[i].data.join("node.pub").display().to_string(),
                ]
            })
            .collect()
    };
    let delegate = |args: &[String]| {
        let mut cmd = cluster::keytool(c.work.root());
        cmd.args(cluster::words(&format!(
            "delegate --admin file:admin.key --keyset keyset.json --scope {SCOPE} --to {USER}.pub --threshold 2"
        )))
        .args(args);
        cmd
    };
    let out = run_fail(&mut delegate(&pinned([0, 2, 1])));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("nothing was delegated")
            && err.contains(&urls[1])
            && err.contains(&urls[2])
            && !err.contains(&format!("{} answered", urls[0])),
        "{err}"
    );
    assert_eq!(grants_on(&c), [0, 0, 0]);

    // One key fewer than nodes: a usage error, nothing sent.
    let mut short = pinned([0, 1, 2]);
    short.truncate(short.len() - 2);
    let out = run_fail(&mut delegate(&short));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("3 nodes, 2 keys"));
    assert_eq!(grants_on(&c), [0, 0, 0]);

    // The right pins: every node gets its share.
    run_ok(&mut delegate(&pinned([0, 1, 2])));
    assert_eq!(grants_on(&c), [1, 1, 1]);
}

/// Over plain HTTP to another machine, a node's key would be whatever
/// answered: without pins the key tool refuses before it asks anyone.
#[test]
fn plain_http_to_another_machine_needs_pinned_node_keys() {
    let c = Cluster::start(3, &[]);
    // 192.0.2.0/24 is reserved for documentation: nothing answers there,
    // and the refusal comes before any connection.
    let out = run_fail(&mut c.delegate_cmd(2, &["--node", "http://192.0.2.7:7600"]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("http://192.0.2.7:7600") && err.contains("--node-key"),
        "{err}"
    );
    assert!(
        !err.contains(&c.urls()[0]),
        "loopback nodes are fine: {err}"
    );
    assert_eq!(grants_on(&c), [0, 0, 0]);
}

/// `delegate --reissue` sends shares only to node keys the administrator's
/// signed delegations already name: a node that was never one of them
/// (here a fourth node, given in place of the third) gets nothing.
#[test]
fn reissue_sends_nothing_to_a_node_its_delegations_do_not_name() {
    let c = Cluster::start(4, &[]);
    let urls = c.urls();
    let mut cmd = cluster::keytool(c.work.root());
    cmd.args(cluster::words(&format!(
        "delegate --admin file:admin.key --keyset keyset.json --scope {SCOPE} --to {USER}.pub --threshold 2"
    )))
    .args(Cluster::node_args(&urls[..3]));
    run_ok(&mut cmd);
    assert_eq!(grants_on(&c), [1, 1, 1, 0]);

    let reissue = |nodes: &[String]| {
        let mut cmd = cluster::keytool(c.work.root());
        cmd.args(cluster::words(&format!(
            "--json delegate --reissue --admin file:admin.key --keyset keyset.json --scope {SCOPE}"
        )))
        .args(Cluster::node_args(nodes));
        cmd
    };
    let stranger = [urls[0].clone(), urls[1].clone(), urls[3].clone()];
    let out = run_fail(&mut reissue(&stranger));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("nothing was issued") && err.contains(&urls[3]) && err.contains(USER),
        "{err}"
    );
    assert_eq!(grants_on(&c), [1, 1, 1, 0], "nothing was sent");

    // The delegation's own nodes: issued again.
    let out = run_ok(&mut reissue(&urls[..3]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reissued"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(grants_on(&c)[3], 0);
}
