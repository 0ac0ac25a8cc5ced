//! The issue's walk-through: create-admin, add-scope, create-user, delegate,
//! show, list, export-scope, copy and add-writer, in the exact forms the
//! issue gives, with relative paths as a user would type them. `delegate`
//! takes the form it has now that no user may hold threshold-many kfrags:
//! one `--node-key NODE.pub` per share (the nodes' key pairs made with
//! `cbfs-delegation init`) and `--out DIR` for the shares, sealed for them.

use std::collections::BTreeMap;

use cbfs_core::{Grant, UserPublic, fingerprint, public_key_hex};
use cbfs_tests::{Workdir, assert_no_secret, run_ok};
use serde_json::{Value, json};

use crate::{
    Secrets, admin_from, at, init_node, keytool, kfrag_bytes, label, load_keyset, mode,
    node_key_args, node_secret, node_seed, open_share, raw_key_file, read, stderr, stdout_json,
    text, user_from, words,
};

const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// `{label: fingerprint}` from the `scopes` (or `writers`) list of
/// `show`/`list --json`.
fn fingerprints(list: &Value, key: &str) -> BTreeMap<String, String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|item| {
            (
                at(item, &format!("/{key}")).as_str().unwrap().to_string(),
                at(item, "/fingerprint").as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn walkthrough_in_the_issues_own_words() {
    let work = Workdir::new();
    let dir = work.root();
    let kt = || keytool(dir);

    // --- cbfs-keytool create-admin --fs NAME --secret SOURCE --keyset KEYSET.json
    let out = run_ok(kt().args(words(
        "create-admin --fs projects --secret file:admin.key --keyset keyset.json",
    )));
    let admin_bytes = raw_key_file(&work.path("admin.key"));
    let admin = admin_from(&admin_bytes);
    let keyset = load_keyset(&work.path("keyset.json"));
    assert_eq!(keyset.fs().as_str(), "projects");
    assert_eq!(keyset.serial(), 0);
    assert_eq!(keyset.admin_verifying_key(), &admin.verifying_key());
    assert_eq!(
        keyset
            .scopes()
            .keys()
            .map(|l| l.as_str())
            .collect::<Vec<_>>(),
        ["default"],
        "a new keyset holds the default scope only"
    );
    let admin_fp = fingerprint(&admin.verifying_key());
    let said = text(&out.stdout);
    assert!(
        said.contains("`projects`") && said.contains(&admin_fp),
        "create-admin names the file system and the admin key: {said}"
    );

    // --- cbfs-keytool add-scope --admin SOURCE --keyset KEYSET.json --scope LABEL
    let out = run_ok(kt().args(words(
        "add-scope --admin file:admin.key --keyset keyset.json --scope alice",
    )));
    let alice_fp = fingerprint(&admin.scope(&label("alice")).public_key());
    assert!(
        text(&out.stdout).contains(&alice_fp),
        "{}",
        text(&out.stdout)
    );
    let keyset = load_keyset(&work.path("keyset.json"));
    assert_eq!(keyset.serial(), 1);
    assert_eq!(
        keyset.scope(&label("alice")),
        Some(&admin.scope(&label("alice")).public_key()),
        "the scope key is the one derived from the root seed"
    );
    // Again, as JSON: nothing changes, and it says so.
    let before = read(&work.path("keyset.json"));
    let out = run_ok(kt().args(words(
        "add-scope --json --admin file:admin.key --keyset keyset.json --scope alice",
    )));
    assert_eq!(
        stdout_json(&out),
        json!({ "scope": "alice", "added": false, "serial": 1, "scope_fingerprint": alice_fp })
    );
    assert_eq!(read(&work.path("keyset.json")), before, "keyset unchanged");
    let out = run_ok(kt().args(words(
        "--json add-scope --admin file:admin.key --keyset keyset.json --scope bob",
    )));
    let bob_fp = fingerprint(&admin.scope(&label("bob")).public_key());
    assert_eq!(
        stdout_json(&out),
        json!({ "scope": "bob", "added": true, "serial": 2, "scope_fingerprint": bob_fp })
    );

    // --- cbfs-keytool create-user NAME --secret SOURCE --public NAME.pub
    let out = run_ok(kt().args(words(
        "create-user alice --secret file:alice.key --public alice.pub",
    )));
    let alice_bytes = raw_key_file(&work.path("alice.key"));
    let alice = user_from(&alice_bytes);
    let alice_pub = UserPublic::load(&work.path("alice.pub")).unwrap();
    assert_eq!(alice_pub.name().as_str(), "alice");
    assert_eq!(alice_pub.public_key(), &alice.public_key());
    assert_eq!(alice_pub.verifying_key(), &alice.verifying_key());
    assert!(text(&out.stdout).contains(&fingerprint(&alice.public_key())));

    // --- cbfs-delegation init --data DIR, for each of three nodes; then
    // --- cbfs-keytool delegate --admin SOURCE --keyset KEYSET.json --scope LABEL
    //     --to NAME.pub --threshold M --node-key NODE.pub... --out DIR
    let nodes: Vec<_> = NODES.iter().map(|n| init_node(&work, n)).collect();
    let node_sks: Vec<_> = nodes.iter().map(|d| node_secret(d)).collect();
    let node_fps: Vec<String> = node_sks
        .iter()
        .map(|sk| fingerprint(&sk.public_key()))
        .collect();
    let out = run_ok(kt().args(words(&format!(
        "delegate --admin file:admin.key --keyset keyset.json --scope alice \
         --to alice.pub --threshold 2 {} --out grants/",
        node_key_args(&NODES)
    ))));
    let said = text(&out.stdout);
    assert_eq!(
        mode(&work.path("grants")),
        0o700,
        "the share directory is 0700"
    );
    let mut names: Vec<String> = std::fs::read_dir(work.path("grants"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "alice.alice.1-of-3.share",
            "alice.alice.2-of-3.share",
            "alice.alice.3-of-3.share"
        ]
    );
    let mut kfrags = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path = work.path("grants").join(name);
        assert_eq!(mode(&path), 0o600, "{name} is 0600");
        // Each file is named with the node it is sealed for.
        let line = said
            .lines()
            .find(|l| l.contains(name.as_str()))
            .unwrap_or_else(|| panic!("delegate does not name {name}: {said}"));
        assert!(
            line.contains(&format!("sealed for node {}", node_fps[i])),
            "{line}"
        );
        // Share i opens with node i's key (as `cbfs-delegation import` does)
        // and with no other node's, nor with the user's.
        let grant: Grant = open_share(&path, &node_sks[i], keyset.admin_verifying_key())
            .unwrap_or_else(|e| panic!("{name} must open for {}: {e}", NODES[i]));
        for (j, sk) in node_sks.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(
                open_share(&path, sk, keyset.admin_verifying_key()).is_err(),
                "{name} opened for {}",
                NODES[j]
            );
        }
        assert!(open_share(&path, &alice.secret_key(), keyset.admin_verifying_key()).is_err());
        assert_eq!(grant.scope().as_str(), "alice");
        assert_eq!(grant.user().as_str(), "alice");
        assert_eq!(grant.fs().as_str(), "projects");
        assert_eq!((grant.threshold(), grant.shares()), (2, 3));
        assert_eq!(grant.share() as usize, i + 1);
        assert_eq!(grant.expires(), None);
        assert_eq!(grant.node(), Some(&node_sks[i].public_key()));
        assert_eq!(
            grant.scope_public_key(),
            &admin.scope(&label("alice")).public_key(),
            "the delegating key is the scope's, never the root's"
        );
        assert_eq!(grant.user_public_key(), &alice.public_key());
        kfrags.push(kfrag_bytes(&grant));
    }
    assert!(
        said.contains("only that node can open it") && said.contains("cbfs-delegation import"),
        "delegate says where the shares go: {said}"
    );
    // A second delegation, as JSON, with an expiry, into the existing directory.
    let out = run_ok(kt().args(words(
        "--json delegate --admin file:admin.key --keyset keyset.json --scope bob \
         --to alice.pub --threshold 1 --node-key node2/node.pub --expires 30d --out grants",
    )));
    let v = stdout_json(&out);
    assert_eq!(v["scope"], "bob");
    assert_eq!(v["user"], "alice");
    assert_eq!(
        (v["threshold"].as_u64(), v["shares"].as_u64()),
        (Some(1), Some(1))
    );
    let expires = v["expires"].as_str().expect("an expiry time").to_string();
    assert_eq!(v["files"], json!(["grants/bob.alice.1-of-1.share"]));
    assert_eq!(v["nodes"], json!([]), "written, not sent: {v}");
    assert!(!v.to_string().contains("kfrag"), "{v}");
    let bob_share = open_share(
        &work.path("grants/bob.alice.1-of-1.share"),
        &node_sks[1],
        keyset.admin_verifying_key(),
    )
    .unwrap();
    assert_eq!(bob_share.scope().as_str(), "bob");
    assert_eq!(bob_share.expires(), Some(expires.as_str()));
    kfrags.push(kfrag_bytes(&bob_share));

    // --- show / list, as text and as JSON
    let out = run_ok(kt().args(["show", "--keyset", "keyset.json"]));
    let said = text(&out.stdout);
    for needle in [
        "`projects`",
        "serial 2",
        &admin_fp,
        "alice",
        &alice_fp,
        "bob",
        &bob_fp,
    ] {
        assert!(said.contains(needle), "show lacks {needle}: {said}");
    }
    let keyset = load_keyset(&work.path("keyset.json"));
    let out = run_ok(kt().args(["show", "--json", "--keyset", "keyset.json"]));
    let v = stdout_json(&out);
    let ks = at(&v, "/keyset");
    assert_eq!(ks["fs"], "projects");
    assert_eq!(ks["serial"], 2);
    assert_eq!(ks["updated"], keyset.updated());
    assert_eq!(ks["admin_fingerprint"], admin_fp.as_str());
    let default_fp = fingerprint(&admin.scope(&label("default")).public_key());
    assert_eq!(
        fingerprints(&ks["scopes"], "scope"),
        BTreeMap::from([
            ("alice".to_string(), alice_fp.clone()),
            ("bob".to_string(), bob_fp.clone()),
            ("default".to_string(), default_fp.clone()),
        ])
    );
    assert_eq!(ks["writers"], json!([]));

    let out = run_ok(kt().args(["show", "--json", "--user", "alice.pub"]));
    let v = stdout_json(&out);
    assert_eq!(v["user"]["name"], "alice");
    assert_eq!(v["user"]["created"], alice_pub.created());
    assert_eq!(v["user"]["fingerprint"], fingerprint(&alice.public_key()));
    assert_eq!(
        v["user"]["verifying_fingerprint"],
        fingerprint(&alice.verifying_key())
    );

    let out = run_ok(kt().args(words(
        "show --json --keyset keyset.json --share grants/alice.alice.2-of-3.share",
    )));
    let g = stdout_json(&out)["share"].clone();
    assert_eq!(g["file"], "grants/alice.alice.2-of-3.share");
    assert_eq!(g["scope"], "alice");
    assert_eq!(g["user"], "alice");
    assert_eq!(g["fs"], "projects");
    assert_eq!(
        (g["threshold"].as_u64(), g["shares"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(g["nodes"], json!(node_fps), "the nodes, in share order");
    assert_eq!(g["expired"], false);
    assert_eq!(g["expires"], Value::Null);
    assert!(
        !g.to_string().contains("kfrag"),
        "show prints no kfrag: {g}"
    );
    let out = run_ok(kt().args(words(
        "show --keyset keyset.json --share grants/alice.alice.2-of-3.share",
    )));
    let said = text(&out.stdout);
    assert!(
        said.contains("grants/alice.alice.2-of-3.share")
            && said.contains("scope `alice` to `alice`, 2 of 3")
            && said.contains("no expiry"),
        "{said}"
    );

    let out = run_ok(kt().args(["list", "--keyset", "keyset.json", "--shares", "grants"]));
    let said = text(&out.stdout);
    for needle in [
        "alice.alice.1-of-3.share",
        "alice.alice.3-of-3.share",
        "bob.alice.1-of-1.share",
        "expires ",
        "no expiry",
        &default_fp,
    ] {
        assert!(said.contains(needle), "list lacks {needle}: {said}");
    }
    let out = run_ok(kt().args(words("list --json --keyset keyset.json --shares grants")));
    let v = stdout_json(&out);
    assert_eq!(v["fs"], "projects");
    assert_eq!(v["admin_fingerprint"], admin_fp.as_str());
    let shares = v["shares"].as_array().expect("a shares list");
    let summary: Vec<(String, String, u64, u64, bool)> = shares
        .iter()
        .map(|g| {
            (
                g["file"].as_str().unwrap().to_string(),
                g["scope"].as_str().unwrap().to_string(),
                g["threshold"].as_u64().unwrap(),
                g["shares"].as_u64().unwrap(),
                g["expired"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "grants/alice.alice.1-of-3.share".into(),
                "alice".into(),
                2,
                3,
                false
            ),
            (
                "grants/alice.alice.2-of-3.share".into(),
                "alice".into(),
                2,
                3,
                false
            ),
            (
                "grants/alice.alice.3-of-3.share".into(),
                "alice".into(),
                2,
                3,
                false
            ),
            (
                "grants/bob.alice.1-of-1.share".into(),
                "bob".into(),
                1,
                1,
                false
            ),
        ]
    );
    assert!(
        shares
            .iter()
            .all(|g| g["user"] == "alice" && g["fs"] == "projects")
    );
    assert_eq!(shares[3]["nodes"], json!([node_fps[1]]));
    assert_eq!(shares[3]["expires"], expires.as_str());
    let issued = cbfs_core::parse_time(shares[3]["issued"].as_str().unwrap()).unwrap();
    let lifetime = (cbfs_core::parse_time(&expires).unwrap() - issued).whole_seconds();
    assert!(
        (30 * 86400 - 5..=30 * 86400 + 5).contains(&lifetime),
        "--expires 30d gave a delegation that lives {lifetime} s"
    );

    // --- export-scope: one scope's seed, which opens that scope only
    let out = run_ok(kt().args(words(
        "export-scope --admin file:admin.key --keyset keyset.json \
         --scope alice --secret file:alice-scope.key",
    )));
    assert!(text(&out.stdout).contains("alice"), "{}", text(&out.stdout));
    let exported = raw_key_file(&work.path("alice-scope.key"));
    assert_eq!(
        exported.as_slice(),
        admin.scope(&label("alice")).seed().expose_secret_bytes(),
        "export-scope writes the scope's seed"
    );
    assert_ne!(exported, admin_bytes);
    let out = run_ok(kt().args(words(
        "show --json --keyset keyset.json --secret file:alice-scope.key",
    )));
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the secret of scope `alice`"
    );

    // --- copy: a second, identical 0600 copy of the root secret
    let out = run_ok(kt().args(words("copy --from file:admin.key --to file:backup.key")));
    assert!(
        text(&out.stdout).contains("file:backup.key"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(raw_key_file(&work.path("backup.key")), admin_bytes);
    let out = run_ok(kt().args(words("show --keyset keyset.json --secret file:backup.key")));
    assert!(
        text(&out.stdout).contains("file:backup.key is the root secret of file system `projects`"),
        "{}",
        text(&out.stdout)
    );
    let out = run_ok(kt().args(["show", "--user", "alice.pub", "--secret", "file:alice.key"]));
    assert!(
        text(&out.stdout).contains("is the secret of user `alice`"),
        "{}",
        text(&out.stdout)
    );

    // --- add-writer: a tiering agent's signing key in the keyset
    run_ok(kt().args(words(
        "create-user agent1 --secret file:agent1.key --public agent1.pub",
    )));
    let agent = user_from(&raw_key_file(&work.path("agent1.key")));
    let out = run_ok(kt().args(words(
        "--json add-writer --admin file:admin.key --keyset keyset.json --public agent1.pub",
    )));
    assert_eq!(
        stdout_json(&out),
        json!({ "writer": "agent1", "added": true, "serial": 3 })
    );
    let keyset = load_keyset(&work.path("keyset.json"));
    assert_eq!(
        keyset
            .writers()
            .get(&cbfs_core::UserName::new("agent1").unwrap()),
        Some(&agent.verifying_key()),
        "the writer's verifying key is registered"
    );
    let out = run_ok(kt().args(words(
        "add-writer --admin file:admin.key --keyset keyset.json --public agent1.pub",
    )));
    assert!(
        text(&out.stdout).contains("already registered"),
        "{}",
        text(&out.stdout)
    );
    let out = run_ok(kt().args(["list", "--json", "--keyset", "keyset.json"]));
    let v = stdout_json(&out);
    assert_eq!(v["serial"], 3);
    assert_eq!(
        fingerprints(&v["writers"], "writer"),
        BTreeMap::from([("agent1".to_string(), fingerprint(&agent.verifying_key()))])
    );
    assert_eq!(v.get("shares"), None, "no --shares, no shares list");
    let out = run_ok(kt().args(["list", "--keyset", "keyset.json"]));
    assert!(
        text(&out.stdout).contains("writers:"),
        "{}",
        text(&out.stdout)
    );

    // The public files name only public keys.
    let ks_json: Value = serde_json::from_slice(&read(&work.path("keyset.json"))).unwrap();
    assert_eq!(
        ks_json["admin_verifying_key"],
        public_key_hex(&admin.verifying_key())
    );

    // Nothing above printed or took as an argument any of the secrets.
    let mut secrets = Secrets::default();
    secrets.add_admin("projects", &admin, &["default", "alice", "bob"]);
    secrets.add("user alice seed", &alice_bytes);
    secrets.add("agent1 seed", agent.seed().expose_secret_bytes());
    for (name, data) in NODES.iter().zip(&nodes) {
        secrets.add(format!("{name} seed"), node_seed(data));
    }
    secrets.assert_absent_from_commands();
    // Nor any kfrag: those reach their nodes only, sealed.
    for (i, kfrag) in kfrags.iter().enumerate() {
        assert_no_secret(
            &cbfs_tests::captured_output(),
            kfrag,
            &format!("the commands of the walkthrough (kfrag {i})"),
        );
    }
    assert!(
        stderr(&out).is_empty(),
        "quiet by default: {}",
        stderr(&out)
    );
}

#[test]
fn completions_are_generated_for_the_usual_shells() {
    let work = Workdir::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = run_ok(keytool(work.root()).args(["completions", shell]));
        let script = text(&out.stdout);
        for sub in ["create-admin", "add-scope", "delegate", "rewrap"] {
            assert!(script.contains(sub), "{shell} completions lack {sub}");
        }
    }
}
