//! Garbage collection end to end, on a local store and on a real
//! S3-compatible server: ten snapshots of a changing tree, `cbfs-tier
//! forget` keeps three, `cbfs-gc` (with no key anywhere and an empty HOME)
//! runs its two phases with an agent's run between them; every kept
//! snapshot then restores bit for bit with `cbfs-tier restore` and
//! `cbfs-recover`, forgotten ones are gone, and the store is within 20% of
//! the kept snapshots' live data. Also: runs and restores while each phase
//! stands still, the lease, and a forged relocation record.

#[path = "gc/env.rs"]
mod env;

use std::process::Command;

use cbfs_format::{Lease, RecordId, Relocation, Summary, layout};
use cbfs_tests::{Backend, S3Server, run, run_ok};
use env::{Env, gc_without_any_key, phase_two, stderr};
use serde_json::Value;

fn gc_suite(mut env: Env) {
    // Ten snapshots of a changing tree.
    env.tier();
    for _ in 1..10 {
        env.change(8, 3, 120_000);
        let r = env.tier();
        assert!(r["sequence"].as_u64().is_some(), "{r}");
    }
    let all = env.sequences();
    assert_eq!(all.len(), 10, "{all:?}");
    let before = env.bytes_under("");

    // Forget keeps three: a dry run first says what and why.
    let dry = env.forget(&["--keep-last", "3", "--dry-run"]);
    assert_eq!(dry["forgotten"], 7, "{dry:#}");
    assert!(dry["record"].is_null());
    assert!(env.keys_under(layout::RETENTION).is_empty());
    for s in dry["snapshots"].as_array().unwrap() {
        let reasons = s["reasons"].as_array().unwrap();
        assert_eq!(s["keep"].as_bool().unwrap(), !reasons.is_empty(), "{s}");
    }
    assert!(
        dry["snapshots"][0]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("newest")),
        "{dry:#}"
    );
    let f = env.forget(&["--keep-last", "3"]);
    let record = f["record"].as_str().expect("a retention record").to_owned();
    assert_eq!(env.keys_under(layout::RETENTION), vec![record]);
    let kept: Vec<u64> = all[7..].to_vec();
    let forgotten: Vec<u64> = all[..7].to_vec();
    // Readers hide forgotten snapshots at once; their data stays until
    // the collector's second phase.
    assert_eq!(env.sequences(), kept);
    env.verify();

    // Phase one, with no key at all.
    let one = gc_without_any_key(&env, &["--min-live", "90"]);
    let collection = one["phase_one"]["collection"]
        .as_str()
        .unwrap_or_else(|| panic!("phase one records a collection: {one:#}"))
        .to_owned();
    assert_eq!(one["snapshots_kept"], 3, "{one:#}");
    assert!(one["phase_two"].as_array().unwrap().is_empty());
    // Nothing is deleted yet, and everything kept still restores.
    env.verify();
    env.assert_restores(kept[0]);

    // Phase two waits for the writer to finish a run.
    let waiting = gc_without_any_key(&env, &["--min-live", "90"]);
    let p2 = &waiting["phase_two"][0];
    assert_eq!(p2["collection"], collection.as_str(), "{waiting:#}");
    assert_eq!(p2["done"], false, "{waiting:#}");
    assert_eq!(
        p2["waiting_for"],
        serde_json::json!(["agent"]),
        "{waiting:#}"
    );

    // A run of the agent with nothing to store acknowledges the record.
    let r = env.tier();
    assert!(r["snapshot"].is_null(), "{r}");
    assert_eq!(env.keys_under(layout::RUNS).len(), 1);

    // Phase two.
    let two = gc_without_any_key(&env, &["--min-live", "90"]);
    let p2 = phase_two(&two, &collection);
    assert_eq!(p2["done"], true, "{two:#}");
    assert!(p2["segments_deleted"].as_u64().unwrap() > 0, "{two:#}");
    assert!(env.keys_under(&collection).is_empty());

    // The figures: the store against the kept snapshots' live data.
    let v = env.verify();
    let live = v["live_bytes"].as_u64().unwrap();
    let segments = v["segment_bytes"].as_u64().unwrap();
    let store = env.bytes_under("");
    eprintln!(
        "gc figures: store before {before} bytes, after {store} bytes ({segments} of segments); \
         kept snapshots' live data {live} bytes; store/live = {:.3}",
        store as f64 / live as f64
    );
    assert!(
        store as f64 <= 1.2 * live as f64,
        "the store ({store} bytes) is not within 20% of the live data ({live} bytes): {v:#}"
    );
    assert!(store < before);

    // Every kept snapshot restores bit for bit, with both tools.
    for &seq in &kept {
        env.assert_restores(seq);
        env.assert_recovers(seq);
    }
    // Forgotten snapshots are gone.
    assert_eq!(env.sequences(), kept);
    let manifests = env.keys_under(layout::SNAPSHOTS);
    for &seq in &forgotten {
        env.recover_fails(seq);
        assert!(
            !manifests
                .iter()
                .any(|k| layout::parse_manifest(k).is_some_and(|(s, _)| s == seq)),
            "the manifest of forgotten snapshot {seq} is still there: {manifests:?}"
        );
    }

    // The agent learned where its members went: a new run stores only what
    // changed, and the new snapshot lists and restores.
    env.change(4, 1, 50_000);
    let r = env.tier();
    let seq = r["sequence"].as_u64().unwrap();
    assert!(r["files"].as_u64().unwrap() < 30, "{r}");
    env.assert_restores(seq);
    env.assert_recovers(seq);
    let ls = env.tier_json(&["ls"]);
    assert!(!ls.as_array().unwrap().is_empty());
    env.verify();
}

#[test]
fn gc_on_a_local_store() {
    gc_suite(Env::local(1515, 30));
}

#[test]
fn gc_on_s3() {
    let server = S3Server::start();
    server.create_bucket("gc-suite");
    gc_suite(Env::new(1516, 30, |_| Backend::S3 {
        server: Box::new(server),
        bucket: "gc-suite".into(),
        endpoint: None,
    }));
}

/// Bytes of every file below `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            total += dir_bytes(&e.path());
        } else if t.is_file() {
            total += e.metadata().unwrap().len();
        }
    }
    total
}

/// Small files share packs, which the collector (holding no key) cannot
/// split: a pack with one live file is live whole. Once most files of a
/// pack are replaced, the agent's next run stores the rest again from the
/// tree (`--min-live`, 50% by default), and after forget and both phases
/// the store is within 20% of a fresh tier-out of the same tree, and it
/// restores bit for bit with both tools.
#[test]
fn sparse_packs_are_stored_again_by_the_agent_and_collected() {
    let mut env = Env::local(0x5a5a, 0);
    let dir = env.src.join("alice");
    let mut files = Vec::new();
    for d in 0..8 {
        std::fs::create_dir_all(dir.join(format!("d{d}"))).unwrap();
        for i in 0..80 {
            let p = dir.join(format!("d{d}/f{i:03}"));
            std::fs::write(&p, cbfs_tests::random_bytes(2048 + (i * 131) % 10_000)).unwrap();
            files.push(p);
        }
    }
    let first = env.tier();
    assert_eq!(first["repacked"], 0, "{first:#}");
    // Three of every four files replaced: each old pack is a quarter live.
    for (i, p) in files.iter().enumerate() {
        if i % 4 != 0 {
            let mut bytes = std::fs::read(p).unwrap();
            bytes.extend_from_slice(b"replaced");
            std::fs::write(p, bytes).unwrap();
        }
    }
    let second = env.tier();
    let repacked = second["repacked"].as_u64().unwrap();
    assert!(
        repacked >= (files.len() / 4) as u64,
        "the unchanged quarter is stored again: {second:#}"
    );
    assert!(second["files"].as_u64().unwrap() >= repacked, "{second:#}");
    let kept = second["sequence"].as_u64().unwrap();
    // A run with nothing changed repacks nothing more.
    let idle = env.tier();
    assert!(idle["snapshot"].is_null(), "{idle:#}");
    assert_eq!(idle["repacked"], 0, "{idle:#}");

    env.forget(&["--keep-last", "1"]);
    let one = gc_without_any_key(&env, &["--min-live", "90"]);
    assert!(
        one["phase_one"]["collection"].is_string(),
        "phase one records a collection: {one:#}"
    );
    env.tier();
    let two = gc_without_any_key(&env, &["--min-live", "90"]);
    assert_eq!(two["phase_two"][0]["done"], true, "{two:#}");
    env.verify();

    // The same tree, tiered out once into a fresh store.
    let fresh = env.work.path("fresh-store");
    run_ok(&mut env.tier_cmd_into(fresh.to_str().unwrap(), &env.work.path("fresh-index")));
    let fresh_segments = dir_bytes(&fresh.join("segments"));
    let segments = env.bytes_under(layout::SEGMENTS);
    eprintln!(
        "sparse packs: segments after forget + gc {segments} bytes; a fresh tier-out {fresh_segments} bytes; ratio {:.3}",
        segments as f64 / fresh_segments as f64
    );
    assert!(
        segments as f64 <= 1.2 * fresh_segments as f64,
        "segments {segments} bytes, a fresh tier-out {fresh_segments}"
    );
    env.assert_restores(kept);
    env.assert_recovers(kept);
}

/// A store where a collection was recorded (phase one done, the writer
/// moved on): ready for phase two.
fn collected_store(seed: u64) -> (Env, Vec<u64>) {
    collected(Env::local(seed, 20))
}

/// [`collected_store`] on any backend.
fn collected(mut env: Env) -> (Env, Vec<u64>) {
    env.tier();
    for _ in 0..4 {
        env.change(6, 2, 90_000);
        env.tier();
    }
    env.forget(&["--keep-last", "2"]);
    let kept: Vec<u64> = env.sequences();
    (env, kept)
}

#[test]
fn a_tier_out_and_a_restore_run_while_each_phase_stands_still() {
    runs_while_each_phase_stands_still(Env::local(77, 20));
}

#[test]
fn a_tier_out_and_a_restore_run_while_each_phase_stands_still_on_s3() {
    let server = S3Server::start();
    server.create_bucket("gc-during");
    runs_while_each_phase_stands_still(Env::new(76, 20, |_| Backend::S3 {
        server: Box::new(server),
        bucket: "gc-during".into(),
        endpoint: None,
    }));
}

fn runs_while_each_phase_stands_still(env: Env) {
    let (mut env, kept) = collected(env);
    // Phase one stands still once the new segments and their relocation
    // records are out, before the collection record.
    let (gc, flag) = env.gc_paused("bases", &["--min-live", "100"]);
    env.change(5, 1, 60_000);
    let during_one = env.tier()["sequence"].as_u64().unwrap();
    for &seq in &kept {
        env.assert_restores(seq);
    }
    std::fs::remove_file(&flag).unwrap();
    let out = gc.wait_with_output().unwrap();
    assert!(out.status.success(), "phase one failed: {}", stderr(&out));
    env.verify();
    // The agent acknowledges; phase two stands still after its first deletion.
    env.tier();
    let (gc, flag) = env.gc_paused("delete-segment:1", &["--min-live", "100"]);
    env.change(5, 1, 60_000);
    let during_two = env.tier()["sequence"].as_u64().unwrap();
    env.assert_restores(during_one);
    env.assert_recovers(kept[1]);
    std::fs::remove_file(&flag).unwrap();
    let out = gc.wait_with_output().unwrap();
    assert!(out.status.success(), "phase two failed: {}", stderr(&out));
    // What they wrote and read is intact afterwards.
    env.verify();
    for seq in [kept[0], kept[1], during_one, during_two] {
        env.assert_restores(seq);
        env.assert_recovers(seq);
    }
}

/// Writes a lease object as a live collector would hold it.
fn plant_lease(env: &Env, generation: u64, released: bool) -> RecordId {
    let holder = RecordId::random();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let lease = Lease {
        generation,
        holder,
        acquired_unix: now,
        expires_unix: now + 3600,
        released,
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_owned(),
        pid: std::process::id(),
    };
    let Backend::Local(root) = &env.backend else {
        panic!("a local store")
    };
    let path = root.join(layout::lease(generation));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, lease.to_bytes()).unwrap();
    holder
}

#[test]
fn a_second_collector_refuses_and_names_the_holder() {
    let (env, _) = collected_store(78);
    let holder = plant_lease(&env, 1, false);
    let out = run(&mut env.gc_cmd(&[]));
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&holder.to_string()), "{err}");
    assert!(
        err.contains(&format!("process {}", std::process::id())),
        "{err}"
    );
    assert!(
        env.keys_under(layout::COLLECTIONS).is_empty(),
        "nothing was done"
    );
    // Given back, the lease is free.
    plant_lease(&env, 2, true);
    env.gc(&[]);
    // Two started together: the one standing still holds it, the other
    // refuses; once the first is done, a third runs.
    let (first, flag) = env.gc_paused("lease", &[]);
    let out = run(&mut env.gc_cmd(&[]));
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    std::fs::remove_file(&flag).unwrap();
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    env.gc(&[]);
    // A collector that died does not stop the next one (its process is
    // gone, whatever the lease's time says).
    env.gc_crash("lease", &[]);
    env.gc(&[]);
}

#[test]
fn a_forged_relocation_record_fails_its_member_only_and_names_it() {
    let (mut env, kept) = collected_store(79);
    env.gc(&["--min-live", "100"]);
    env.tier();
    env.gc(&["--min-live", "100"]);
    let Backend::Local(root) = &env.backend else {
        unreachable!()
    };
    let newest = *kept.last().unwrap();
    // The members of the newest snapshot, and the paths each holds (a pack
    // holds several).
    let ls = env.tier_json(&["ls", "--snapshot", &newest.to_string()]);
    let mut paths_of: std::collections::BTreeMap<String, std::collections::BTreeSet<Vec<u8>>> =
        Default::default();
    for e in ls.as_array().unwrap() {
        paths_of
            .entry(e["member"].as_str().unwrap().to_owned())
            .or_default()
            .insert(e["path"].as_str().unwrap().as_bytes().to_vec());
    }
    // A forged record: a member of the newest snapshot, in the segment
    // where it is now (no record moves it out of there), "moved" to
    // another segment of the same mode, at the place of a member there.
    let moved_out: std::collections::BTreeSet<_> = env
        .keys_under(layout::RELOCATIONS)
        .iter()
        .map(|k| layout::parse_relocation(k).unwrap().0)
        .collect();
    let summaries: Vec<Summary> = env
        .keys_under(layout::SUMMARIES)
        .iter()
        .map(|k| Summary::from_bytes(&std::fs::read(root.join(k)).unwrap()).unwrap())
        .collect();
    let (here, victim) = summaries
        .iter()
        .filter(|s| !moved_out.contains(&s.segment_id()))
        .find_map(|s| {
            let e = s
                .entries()
                .iter()
                .find(|e| paths_of.contains_key(&e.member.to_string()))?;
            Some((s, e.clone()))
        })
        .expect("a member of the newest snapshot where it is now");
    let there = summaries
        .iter()
        .find(|s| s.segment_id() != here.segment_id() && s.mode() == here.mode())
        .expect("another segment");
    let elsewhere = there.entries()[0].clone();
    assert_ne!(elsewhere.sha256, victim.sha256);
    let forged = Relocation::new(
        here.segment_id(),
        there.segment_id(),
        there.mode(),
        vec![cbfs_format::SummaryEntry {
            member: victim.member,
            sha256: victim.sha256,
            ..elsewhere
        }],
    )
    .unwrap();
    let a_key = layout::relocation(&here.segment_id(), &there.segment_id());
    let path = root.join(&a_key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, forged.to_bytes()).unwrap();
    let victim_paths = paths_of[&victim.member.to_string()].clone();

    let dest = env.work.path("forged-restore");
    let out = run(&mut env.restore_cmd(newest, &dest));
    assert_eq!(out.status.code(), Some(3), "partial: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failures = report["failures"].as_array().unwrap();
    assert!(!failures.is_empty(), "{report:#}");
    // The member's files fail, naming the record; so may a hard link of
    // another member whose target is one of them (it has nothing to link to).
    let only_the_victim = |failures: &[Value]| {
        let mut dependent = std::collections::BTreeSet::new();
        for f in failures {
            let error = f["error"].as_str().unwrap();
            if f["member"] == victim.member.to_string().as_str() {
                assert!(error.contains(&a_key), "{f}");
                continue;
            }
            let links_to_victim = error.contains("target")
                && victim_paths
                    .iter()
                    .any(|p| error.contains(&format!("\"{}\"", String::from_utf8_lossy(p))));
            assert!(links_to_victim, "another member failed: {f}");
            dependent.insert(f["path"].as_str().unwrap().as_bytes().to_vec());
        }
        dependent
    };
    let dependent = only_the_victim(failures);
    // Every other entry came back as it was; the member's are missing.
    let expected = cbfs_tests::describe(&env.states[&newest], cbfs_tests::Compare::default());
    let got = cbfs_tests::describe(&dest, cbfs_tests::Compare::default());
    for (path, what) in &expected {
        if victim_paths.contains(path) || dependent.contains(path) {
            continue;
        }
        assert_eq!(
            got.get(path),
            Some(what),
            "{}",
            String::from_utf8_lossy(path)
        );
    }
    for path in &victim_paths {
        let is_dir = expected.get(path).is_some_and(|d| d.starts_with("dir"));
        assert!(
            is_dir || !got.contains_key(path),
            "{} of the forged member was restored",
            String::from_utf8_lossy(path)
        );
    }
    // cbfs-recover fails the same member, and only it.
    let tar = env.work.path("forged.tar");
    let out = run(Command::new(cbfs_tests::cbfs_bin("cbfs-recover"))
        .arg("--identity")
        .arg(env.keys.admin())
        .args(["--store", &env.backend.spec(), "--json", "-o"])
        .arg(&tar));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!r["failures"].as_array().unwrap().is_empty(), "{r:#}");
    only_the_victim(r["failures"].as_array().unwrap());
    // Verify names the record.
    let out = run(Command::new(cbfs_tests::cbfs_bin("cbfs-tier"))
        .args(["--json", "verify", "--store", &env.backend.spec()])
        .arg("--index")
        .arg(&env.index));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["object"] == a_key.as_str()),
        "{v:#}"
    );
}
