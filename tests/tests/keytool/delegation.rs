//! The cryptographic bar of delegation: the shares `delegate` writes for
//! scope A open only for their own delegation node, never for the user;
//! the kfrags inside re-encrypt what is sealed under scope A for their user,
//! m of n, and nothing sealed under scope B, whatever the proxies do.

use cbfs_core::umbral_pre::{
    Capsule, CapsuleFrag, PublicKey, SecretKey, VerifiedCapsuleFrag, decrypt_original,
    decrypt_reencrypted, encrypt, reencrypt,
};
use cbfs_core::{Grant, UserPublic, public_key_hex};
use cbfs_tests::{Workdir, assert_no_secret, random_bytes, run_ok};
use serde_json::Value;

use crate::{
    Secrets, admin_from, init_node, keytool, kfrag_bytes, label, load_keyset, node_key_args,
    node_secret, node_seed, open_share, raw_key_file, read, share_files, stdout_json, text,
    user_from, words,
};

const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// Re-encrypts `capsule` with each grant's kfrag, as the proxies would.
fn cfrags(capsule: &Capsule, grants: &[Grant]) -> Vec<VerifiedCapsuleFrag> {
    grants
        .iter()
        .map(|g| reencrypt(capsule, g.kfrag().clone()))
        .collect()
}

/// The cfrags as they arrive over the network: not yet verified.
fn unverified(cfrags: &[VerifiedCapsuleFrag]) -> Vec<CapsuleFrag> {
    cfrags.iter().map(|c| c.clone().unverify()).collect()
}

#[test]
fn a_scope_a_kfrag_never_opens_a_capsule_sealed_for_scope_b() {
    let work = Workdir::new();
    let kt = || keytool(work.root());
    run_ok(kt().args(words(
        "create-admin --fs fs1 --secret file:admin.key --keyset keyset.json",
    )));
    for scope in ["scope-a", "scope-b"] {
        run_ok(kt().args([
            "add-scope",
            "--admin",
            "file:admin.key",
            "--keyset",
            "keyset.json",
            "--scope",
            scope,
        ]));
    }
    run_ok(kt().args(words(
        "create-user ursula --secret file:ursula.key --public ursula.pub",
    )));
    let nodes: Vec<_> = NODES.iter().map(|n| init_node(&work, n)).collect();
    let out = run_ok(kt().args(words(&format!(
        "--json delegate --admin file:admin.key --keyset keyset.json --scope scope-a \
         --to ursula.pub --threshold 2 {} --out grants",
        node_key_args(&NODES)
    ))));
    let report = stdout_json(&out);

    // Everything below comes from the files the tools wrote.
    let keyset = load_keyset(&work.path("keyset.json"));
    let admin_vk = *keyset.admin_verifying_key();
    let pk_a: PublicKey = *keyset.scope(&label("scope-a")).unwrap();
    let pk_b: PublicKey = *keyset.scope(&label("scope-b")).unwrap();
    assert_ne!(pk_a, pk_b);
    let user_bytes = raw_key_file(&work.path("ursula.key"));
    let user = user_from(&user_bytes);
    let user_sk = user.secret_key();
    let user_pk = *UserPublic::load(&work.path("ursula.pub"))
        .unwrap()
        .public_key();
    assert_eq!(user_pk, user.public_key());
    let node_sks: Vec<SecretKey> = nodes.iter().map(|d| node_secret(d)).collect();
    let files = share_files(&work.path("grants"));
    assert_eq!(files.len(), 3, "{files:?}");

    // Each share opens with its own node's key, and with no other key: not
    // another node's, and not the user's, who must never hold m kfrags.
    let mut grants: Vec<Grant> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let grant = open_share(file, &node_sks[i], &admin_vk)
            .unwrap_or_else(|e| panic!("{} must open for node {}: {e}", file.display(), i + 1));
        assert_eq!(grant.share() as usize, i + 1, "{}", file.display());
        assert_eq!(grant.node(), Some(&node_sks[i].public_key()));
        for (j, other) in node_sks.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(
                open_share(file, other, &admin_vk).is_err(),
                "share {} opened with node {}'s key",
                i + 1,
                j + 1
            );
        }
        assert!(
            open_share(file, &user_sk, &admin_vk).is_err(),
            "share {} opened with the user's key",
            i + 1
        );
        grants.push(grant);
    }
    // Not a label check only: claiming the share is sealed for the user does
    // not make it decrypt with the user's key.
    let mut relabelled: Value = serde_json::from_slice(&read(&files[0])).unwrap();
    relabelled["grant"]["node"] = Value::from(public_key_hex(&user_pk));
    let relabelled = work.write("relabelled.share", serde_json::to_vec(&relabelled).unwrap());
    let err = open_share(&relabelled, &user_sk, &admin_vk)
        .expect_err("a share relabelled for the user must still not open with the user's key");
    assert!(err.to_string().contains("does not decrypt"), "{err}");

    for g in &grants {
        assert_eq!(g.scope().as_str(), "scope-a");
        assert_eq!(g.scope_public_key(), &pk_a);
        assert_eq!(g.user_public_key(), &user_pk);
        assert_eq!(g.admin_verifying_key(), &admin_vk);
        assert_eq!((g.threshold(), g.shares()), (2, 3));
    }
    // What the administrator and the user see holds no kfrag: neither the
    // report nor the share files (the kfrags in those are sealed).
    assert!(
        !report.to_string().contains("kfrag"),
        "delegate reports no kfrag: {report}"
    );
    assert_eq!(
        report["files"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    for (i, g) in grants.iter().enumerate() {
        let kfrag = kfrag_bytes(g);
        assert_no_secret(
            &out.stdout,
            &kfrag,
            &format!("delegate's report (kfrag {})", i + 1),
        );
        for file in &files {
            assert_no_secret(
                &read(file),
                &kfrag,
                &format!("{} (kfrag {})", file.display(), i + 1),
            );
        }
    }
    assert!(
        !text(&out.stderr).contains("kfrag"),
        "{}",
        text(&out.stderr)
    );

    // Positive control: a group key sealed for scope A reaches the user
    // through any 2 of the 3 grants, and every cfrag verifies.
    let group_key_a = random_bytes(32);
    let (capsule_a, sealed_a) = encrypt(&pk_a, &group_key_a).unwrap();
    assert!(
        decrypt_original(&user_sk, &capsule_a, &sealed_a).is_err(),
        "the user cannot open a scope's lockbox without re-encryption"
    );
    let frags_a = cfrags(&capsule_a, &grants);
    let checked_a: Vec<VerifiedCapsuleFrag> = unverified(&frags_a)
        .into_iter()
        .map(|c| {
            c.verify(&capsule_a, &admin_vk, &pk_a, &user_pk)
                .unwrap_or_else(|(e, _)| panic!("a scope-A cfrag must verify for scope A: {e}"))
        })
        .collect();
    for pair in [[0, 1], [0, 2], [1, 2]] {
        let chosen = pair.map(|i| checked_a[i].clone());
        let opened = decrypt_reencrypted(&user_sk, &pk_a, &capsule_a, chosen, &sealed_a)
            .unwrap_or_else(|e| panic!("shares {pair:?} must open scope A's capsule: {e}"));
        assert_eq!(&*opened, group_key_a.as_slice());
    }
    // Below the threshold, one share opens nothing.
    assert!(
        decrypt_reencrypted(
            &user_sk,
            &pk_a,
            &capsule_a,
            [checked_a[0].clone()],
            &sealed_a
        )
        .is_err(),
        "1 of a 2-of-3 delegation must not be enough"
    );

    // The bar: sealed for scope B, re-encrypted with scope A's kfrags.
    let group_key_b = random_bytes(32);
    let (capsule_b, sealed_b) = encrypt(&pk_b, &group_key_b).unwrap();
    let frags_b = cfrags(&capsule_b, &grants);
    for (i, cfrag) in unverified(&frags_b).into_iter().enumerate() {
        assert!(
            cfrag
                .verify(&capsule_b, &admin_vk, &pk_b, &user_pk)
                .is_err(),
            "cfrag {i} from a scope-A kfrag verified as a re-encryption under scope B"
        );
    }
    // Even skipping verification, as a careless or malicious client might,
    // the user opens nothing: neither with scope B's key as the delegating
    // key, nor with scope A's.
    for delegating in [&pk_b, &pk_a] {
        for pair in [[0, 1], [0, 2], [1, 2]] {
            let forced = pair.map(|i| unverified(&frags_b)[i].clone().skip_verification());
            assert!(
                decrypt_reencrypted(&user_sk, delegating, &capsule_b, forced, &sealed_b).is_err(),
                "scope-A shares {pair:?} opened a capsule sealed for scope B"
            );
        }
        let all = unverified(&frags_b)
            .into_iter()
            .map(CapsuleFrag::skip_verification);
        assert!(decrypt_reencrypted(&user_sk, delegating, &capsule_b, all, &sealed_b).is_err());
    }
    // Scope A's secret itself does not open scope B's capsule either, while
    // scope B's does: the keys are the ones the keyset lists.
    let admin = admin_from(&raw_key_file(&work.path("admin.key")));
    let scope_a = admin.scope(&label("scope-a"));
    let scope_b = admin.scope(&label("scope-b"));
    assert!(decrypt_original(scope_a.secret_key(), &capsule_b, &sealed_b).is_err());
    assert_eq!(
        &*decrypt_original(scope_b.secret_key(), &capsule_b, &sealed_b).unwrap(),
        group_key_b.as_slice()
    );

    // A share opened with its own node's key but checked against another
    // administrator's key is refused: its signature does not verify.
    let other = cbfs_core::AdminSecret::generate();
    assert!(open_share(&files[0], &node_sks[0], &other.verifying_key()).is_err());

    let mut secrets = Secrets::default();
    secrets.add_admin("fs1", &admin, &["default", "scope-a", "scope-b"]);
    secrets.add("user seed", &user_bytes);
    for (name, data) in NODES.iter().zip(&nodes) {
        secrets.add(format!("{name} seed"), node_seed(data));
    }
    secrets.assert_absent_from_commands();
    for file in &files {
        secrets.assert_absent(&read(file), &file.display().to_string());
    }
}
