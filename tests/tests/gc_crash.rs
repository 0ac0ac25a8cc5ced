//! Crash safety of the collector: `cbfs-gc` killed at each point of either
//! phase leaves a store that verifies and restores every kept snapshot,
//! and the next runs finish the job.

#[path = "gc/env.rs"]
mod env;

use cbfs_format::layout;
use cbfs_tests::{Backend, S3Server};
use env::Env;

/// Five snapshots, three forgotten: (the store, the kept sequences). The
/// replaced files are too big to be packed and share segments with packs of
/// files that stay: there are segments to compact.
fn history(mut env: Env) -> (Env, Vec<u64>) {
    env.segment_size = "1M";
    // The agent leaves sparse packs to the collector here (it would store
    // their files again from the tree otherwise): these tests are about
    // the collector's copying.
    env.tier_args = vec!["--min-live", "0"];
    env.tier();
    for _ in 0..4 {
        env.change(6, 2, 150_000);
        env.tier();
    }
    env.forget(&["--keep-last", "2"]);
    let kept = env.sequences();
    assert_eq!(kept.len(), 2);
    (env, kept)
}

const COMPACT_ALL: &[&str] = &["--min-live", "100"];

fn assert_intact(env: &Env, kept: &[u64]) {
    env.verify();
    for &seq in kept {
        env.assert_restores(seq);
    }
    env.assert_recovers(*kept.last().unwrap());
}

/// Dies at `point` (in phase two when `second_phase`), then checks the
/// store and finishes the job.
fn crash(env: Env, point: &str, second_phase: bool) {
    let (mut env, kept) = history(env);
    let before = env.bytes_under(layout::SEGMENTS);
    if second_phase {
        env.gc(COMPACT_ALL);
        env.tier();
    }
    env.gc_crash(point, COMPACT_ALL);
    // Nothing kept is lost, and the store verifies.
    assert_intact(&env, &kept);
    // The next runs finish the job: what a crash left is collected too.
    for _ in 0..3 {
        env.gc(COMPACT_ALL);
        env.tier();
    }
    let last = env.gc(COMPACT_ALL);
    assert!(
        env.keys_under(layout::COLLECTIONS).len() <= 1,
        "at most the newest phase one is pending: {last:#}"
    );
    assert_eq!(
        env.keys_under(layout::LEASE).len(),
        1,
        "one lease object, released"
    );
    let manifests = env.keys_under(layout::SNAPSHOTS);
    assert_eq!(
        manifests.len(),
        kept.len(),
        "forgotten manifests gone: {manifests:?}"
    );
    assert!(env.bytes_under(layout::SEGMENTS) < before);
    assert_intact(&env, &kept);
    assert_eq!(env.sequences(), kept);
}

macro_rules! crash_tests {
    ($($name:ident: $point:literal, $second:literal;)*) => {
        $(#[test] fn $name() { crash(Env::local($point.len() as u64 * 13 + 7, 20), $point, $second); })*
    };
}

crash_tests! {
    after_taking_the_lease: "lease", false;
    after_a_new_segment: "segment:1", false;
    after_its_lockboxes: "lockboxes:1", false;
    after_its_summary: "summary:1", false;
    after_its_first_relocation_record: "relocation:1", false;
    after_the_bases: "bases", false;
    after_the_collection_record: "collection", false;
    after_deleting_a_segment: "delete-segment:1", true;
    after_deleting_its_summary_and_lockboxes: "delete-lockboxes:1", true;
    after_deleting_a_manifest: "delete-manifest:1", true;
    after_deleting_the_other_objects: "delete-objects", true;
    before_deleting_the_collection_record: "before-record-delete", true;
    after_deleting_the_collection_record: "after-record-delete", true;
}

#[test]
fn crash_in_phase_two_on_s3() {
    let server = S3Server::start();
    server.create_bucket("gccrash");
    crash(
        Env::new(31, 20, |_| Backend::S3 {
            server: Box::new(server),
            bucket: "gccrash".into(),
            endpoint: None,
        }),
        "delete-segment:1",
        true,
    );
}
