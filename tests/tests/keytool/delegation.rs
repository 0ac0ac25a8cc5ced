//! The cryptographic bar of delegation: the grants `delegate` writes for
//! scope A re-encrypt what is sealed under scope A for their user, m of n,
//! and nothing sealed under scope B, whatever the proxies do.

use std::path::PathBuf;

use cbfs_core::umbral_pre::{
    Capsule, CapsuleFrag, PublicKey, VerifiedCapsuleFrag, decrypt_original, decrypt_reencrypted,
    encrypt, reencrypt,
};
use cbfs_core::{Grant, UserPublic};
use cbfs_tests::{Workdir, random_bytes, run_ok};

use crate::{Secrets, admin_from, keytool, label, load_keyset, raw_key_file, user_from, words};

/// The grant files in `dir`, sorted by name.
fn grant_files(dir: PathBuf) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

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
    run_ok(kt().args(words(
        "delegate --admin file:admin.key --keyset keyset.json --scope scope-a \
         --to ursula.pub --threshold 2 --shares 3 --out grants",
    )));

    // Everything below comes from the files the tool wrote.
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
    let grants: Vec<Grant> = grant_files(work.path("grants"))
        .iter()
        .map(|p| Grant::load(p, &admin_vk).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
    assert_eq!(grants.len(), 3);
    for g in &grants {
        assert_eq!(g.scope().as_str(), "scope-a");
        assert_eq!(g.scope_public_key(), &pk_a);
        assert_eq!(g.user_public_key(), &user_pk);
        assert_eq!(g.admin_verifying_key(), &admin_vk);
    }

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

    // A grant checked against another administrator's key does not load.
    let other = cbfs_core::AdminSecret::generate();
    assert!(Grant::load(&grant_files(work.path("grants"))[0], &other.verifying_key()).is_err());

    let mut secrets = Secrets::default();
    secrets.add_admin("fs1", &admin, &["default", "scope-a", "scope-b"]);
    secrets.add("user seed", &user_bytes);
    secrets.assert_absent_from_commands();
    for file in grant_files(work.path("grants")) {
        secrets.assert_absent(&std::fs::read(&file).unwrap(), &file.display().to_string());
    }
}
