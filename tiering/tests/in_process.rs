//! The agent as a library inside one long-running process: two tier-out
//! runs of two file systems and four restores at once on one tokio runtime,
//! every result checked; a second process opening an index in use is
//! refused with a message naming this one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cbfs_core::KeySource;
use cbfs_tests::{Compare, TreeGen, Workdir, assert_same_tree, cbfs_cmd, run, run_ok};
use cbfs_tiering::{
    Agent, AgentOptions, OutOptions, Quiet, RestoreRequest, ScopeRules, TrustOptions,
};

/// One file system: keys with a registered writer, a tree, a store, an index.
struct Fs {
    keys: PathBuf,
    src: PathBuf,
    store: PathBuf,
    index: PathBuf,
}

impl Fs {
    fn new(work: &Workdir, name: &str, seed: u64) -> (Fs, TreeGen) {
        let keys = work.mkdir(format!("{name}-keys"));
        cbfs_tests::agent_keyset(&keys, name, &[]);
        let src = work.path(format!("{name}-src"));
        let mut tree = TreeGen::new(&src, seed);
        tree.populate(60);
        let fs = Fs {
            src,
            store: work.path(format!("{name}-store")),
            index: work.path(format!("{name}-index")),
            keys,
        };
        (fs, tree)
    }

    fn agent(&self) -> Arc<Agent> {
        Agent::open(AgentOptions {
            store: self.store.to_str().unwrap(),
            index: &self.index,
            keyset: Some(&self.keys.join("keyset.json")),
            writer_key: Some(KeySource::File(self.keys.join("agent.key"))),
        })
        .unwrap()
    }

    fn restore(&self, snapshot: u64, dest: &Path, threads: usize) -> RestoreRequest {
        RestoreRequest {
            store: self.store.display().to_string(),
            trust: TrustOptions {
                index: Some(self.index.clone()),
                trust_file: Some(self.keys.join("trusted-admins.json")),
                ..TrustOptions::default()
            },
            identity: KeySource::File(self.keys.join("admin.key")),
            snapshot: Some(snapshot.to_string()),
            path: ".".into(),
            dest: dest.to_owned(),
            threads: Some(threads),
            nodes: Vec::new(),
            user: None,
            node_timeout: std::time::Duration::from_secs(10),
        }
    }
}

fn options(src: &Path) -> OutOptions {
    let mut o = OutOptions::new(src, ScopeRules::default());
    o.segment_size = 256 << 10;
    o.workers = 2;
    o
}

#[test]
fn two_runs_and_four_restores_at_once_in_one_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let work = Workdir::new();
    let (a, mut tree_a) = Fs::new(&work, "fs-a", 11);
    let (b, mut tree_b) = Fs::new(&work, "fs-b", 22);
    rt.block_on(async {
        let agent_a = a.agent();
        let agent_b = b.agent();
        // Snapshot 1 of each, then a changed tree for the concurrent runs.
        let first_a = agent_a
            .tier_out(options(&a.src), Arc::new(Quiet))
            .await
            .unwrap();
        let first_b = agent_b
            .tier_out(options(&b.src), Arc::new(Quiet))
            .await
            .unwrap();
        assert_eq!((first_a.sequence, first_b.sequence), (Some(1), Some(1)));
        let state_a = work.path("state-a1");
        let state_b = work.path("state-b1");
        tree_a.copy_to(&state_a);
        tree_b.copy_to(&state_b);
        tree_a.update(20);
        tree_b.update(20);

        let dests: Vec<PathBuf> = (0..4).map(|i| work.path(format!("restore-{i}"))).collect();
        let runs = async {
            // The same agent shared by two tasks: the second run waits for the first.
            let again = agent_a.clone();
            tokio::join!(
                agent_a.tier_out(options(&a.src), Arc::new(Quiet)),
                agent_b.tier_out(options(&b.src), Arc::new(Quiet)),
                again.tier_out(options(&a.src), Arc::new(Quiet)),
            )
        };
        let restores = async {
            tokio::join!(
                cbfs_tiering::restore(a.restore(1, &dests[0], 1), Arc::new(Quiet)),
                cbfs_tiering::restore(a.restore(1, &dests[1], 3), Arc::new(Quiet)),
                cbfs_tiering::restore(b.restore(1, &dests[2], 2), Arc::new(Quiet)),
                cbfs_tiering::restore(b.restore(1, &dests[3], 1), Arc::new(Quiet)),
            )
        };
        let ((ra, rb, ra2), (r0, r1, r2, r3)) = tokio::join!(runs, restores);
        let (ra, rb, ra2) = (ra.unwrap(), rb.unwrap(), ra2.unwrap());
        assert_eq!(rb.sequence, Some(2), "{rb:?}");
        // One of the two runs of fs-a made snapshot 2; the other found
        // nothing left to store.
        let mut seqs = [ra.sequence, ra2.sequence];
        seqs.sort();
        assert_eq!(seqs, [None, Some(2)], "{ra:?} {ra2:?}");
        for r in [r0, r1, r2, r3] {
            let r = r.unwrap();
            assert!(r.failures.is_empty(), "{:?}", r.failures);
        }
        assert_same_tree(&state_a, &dests[0], Compare::default());
        assert_same_tree(&state_a, &dests[1], Compare::default());
        assert_same_tree(&state_b, &dests[2], Compare::default());
        assert_same_tree(&state_b, &dests[3], Compare::default());

        // The newest snapshots hold the changed trees.
        for (name, fs, tree) in [("a", &a, &tree_a), ("b", &b, &tree_b)] {
            let dest = work.path(format!("newest-{name}"));
            let r = cbfs_tiering::restore(fs.restore(2, &dest, 2), Arc::new(Quiet))
                .await
                .unwrap();
            assert!(r.failures.is_empty(), "{:?}", r.failures);
            assert_same_tree(tree.root(), &dest, Compare::default());
        }

        // While this process holds fs-a's index, another is refused and told who.
        let out = run(cbfs_cmd("cbfs-tier")
            .arg("out")
            .arg(&a.src)
            .arg("--store")
            .arg(&a.store)
            .arg("--index")
            .arg(&a.index)
            .arg("--keyset")
            .arg(a.keys.join("keyset.json"))
            .arg("--writer-key")
            .arg(format!("file:{}", a.keys.join("agent.key").display())));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("in use by process {}", std::process::id())),
            "{err}"
        );
        drop(agent_a);
    });
    // Once the agent is gone, the other process may open the index.
    run_ok(
        cbfs_cmd("cbfs-tier")
            .arg("out")
            .arg(&a.src)
            .arg("--store")
            .arg(&a.store)
            .arg("--index")
            .arg(&a.index)
            .arg("--keyset")
            .arg(a.keys.join("keyset.json"))
            .arg("--writer-key")
            .arg(format!("file:{}", a.keys.join("agent.key").display())),
    );
}
