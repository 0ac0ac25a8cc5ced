//! The tiering agent: its store, index, keyset and writer key, opened once
//! and shared (`Arc<Agent>`) by everything a process runs against it.
//!
//! The agent makes no runtime of its own: its async methods run on the
//! caller's, and the heavy work of a run goes to a blocking thread. One
//! process holds an index at a time ([`IndexLock`]), and one run of an agent
//! goes at a time (a second waits for the first).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cbfs_core::umbral_pre::{PublicKey, Signer};
use cbfs_core::{
    KeySource, Keyset, Protection, Seed, Unlock, UserName, UserPublic, UserSecret, fingerprint,
    public_key_hex,
};
use cbfs_format::layout;
use cbfs_restore::Trust;
use cbfs_store::Store;

use crate::error::{Error, Result};
use crate::index::{Batch, Index};
use crate::lock::IndexLock;
use crate::observe::Observer;
use crate::out::{Input, OutOptions, OutReport};
use crate::source::StoreSource;

/// Everything a tiering run works with.
pub struct Agent {
    /// The object store.
    pub store: Store,
    /// The local index.
    pub index: Index,
    /// The public keyset.
    pub keyset: Option<Keyset>,
    writer: Signer,
    index_dir: PathBuf,
    _lock: IndexLock,
    running: tokio::sync::Mutex<()>,
}

/// How to open an agent.
pub struct AgentOptions<'a> {
    /// Store spec: a directory or s3://BUCKET/PREFIX.
    pub store: &'a str,
    /// The index directory.
    pub index: &'a Path,
    /// The keyset file, if given.
    pub keyset: Option<&'a Path>,
    /// The writer's secret; `None` means `file:<index>/writer.key`, made on
    /// first use (with its public key file `<index>/writer.pub`).
    pub writer_key: Option<KeySource>,
}

/// The index's spool of segments being written, cleared when an agent opens.
const SPOOL: &str = "spool";

impl Agent {
    /// Opens the store and the index for writing, and checks the keyset
    /// against what the index has seen before (same administrator, no older
    /// serial) and that it registers this agent's writer key.
    ///
    /// Refused while another process holds the index. Spools a process that
    /// died left behind are cleared before the index is opened, so that a
    /// disk that filled up frees itself on the next run.
    pub fn open(opts: AgentOptions<'_>) -> Result<Arc<Self>> {
        let lock = IndexLock::acquire(opts.index)?;
        let spool = opts.index.join(SPOOL);
        if spool.exists() {
            std::fs::remove_dir_all(&spool)
                .map_err(|e| Error::io("cannot clear the old spool", &spool, e))?;
        }
        let store = Store::open(opts.store)?;
        let index = Index::open(opts.index)?;
        // The scratch of a push that died with its process.
        index.pushed_clear()?;
        let keyset = opts.keyset.map(Keyset::load).transpose()?;
        let writer_source = match opts.writer_key {
            Some(s) => s,
            None => default_writer(opts.index)?,
        };
        let writer =
            UserSecret::from_seed(writer_source.load(&cbfs_keysource::unlock_from_env())?).signer();
        let agent = Agent {
            store,
            index,
            keyset,
            writer,
            index_dir: opts.index.to_owned(),
            _lock: lock,
            running: tokio::sync::Mutex::new(()),
        };
        agent.check_keyset()?;
        Ok(Arc::new(agent))
    }

    fn check_keyset(&self) -> Result<()> {
        let Some(ks) = &self.keyset else {
            return Ok(());
        };
        let state = self.index.state()?;
        let admin_hex = public_key_hex(ks.admin_verifying_key());
        // The administrator may have handed over to a new key since: the
        // keyset then proves the chain from the pinned one.
        if let Some(pinned) = &state.admin_key
            && pinned != &admin_hex
            && !cbfs_core::public_key_from_hex(pinned).is_ok_and(|k| ks.chains_from(&k))
        {
            return Err(Error::Usage(format!(
                "keyset of `{}` has administrator key {}, but this index belongs to another administrator; \
                 use the keyset this store was made with, or another --index",
                ks.fs(),
                fingerprint(ks.admin_verifying_key())
            )));
        }
        if ks.serial() < state.keyset_serial {
            return Err(Error::Usage(format!(
                "keyset serial {} is older than serial {} already used here; refusing a rolled-back keyset",
                ks.serial(),
                state.keyset_serial
            )));
        }
        let vk = self.writer.verifying_key();
        if let Some((name, r)) = ks.retired_writers().iter().find(|(_, r)| r.key == vk) {
            return Err(Error::Usage(format!(
                "this agent's writer key {} (`{name}`) was retired at {} in the keyset of `{}`: readers refuse its snapshots after sequence {}; \
                 give the new writer key with --writer-key",
                fingerprint(&vk),
                r.retired,
                ks.fs(),
                r.last_sequence
            )));
        }
        if !ks.writers().values().any(|w| *w == vk) {
            let public = self.index_dir.join("writer.pub");
            return Err(Error::Usage(format!(
                "this agent's writer key {} is not registered in the keyset of `{}`, so nobody would trust its snapshots; \
                 register it first: cbfs-keytool add-writer --admin ADMIN_SECRET --keyset KEYSET.json --public {} \
                 (or give a registered key with --writer-key)",
                fingerprint(&vk),
                ks.fs(),
                if public.exists() {
                    public.display().to_string()
                } else {
                    "WRITER.pub".into()
                }
            )));
        }
        Ok(())
    }

    /// Binds the index to the keyset, then makes sure the store holds it:
    /// in that order, a run killed in between leaves a store that this
    /// index can verify (an index that trusted no administrator could not
    /// verify a store that holds a keyset).
    pub async fn publish_keyset(&self) -> Result<()> {
        let Some(ks) = &self.keyset else {
            return Ok(());
        };
        let mut state = self.index.state()?;
        let admin_hex = public_key_hex(ks.admin_verifying_key());
        if state.admin_key.as_deref() != Some(&admin_hex) || state.keyset_serial != ks.serial() {
            state.admin_key = Some(admin_hex);
            state.keyset_serial = ks.serial();
            let mut b = Batch::default();
            b.put_state(&state);
            self.index.commit(b)?;
        }
        let key = layout::keyset(ks.serial());
        if self.store.head(&key).await?.is_none() {
            let bytes = ks.signed_bytes().to_vec();
            self.store.put_new(&key, bytes).await?;
        }
        Ok(())
    }

    /// Tiers `opts.source` out: one run, reported to `observer` as it goes.
    /// A second call while one runs waits for it.
    pub async fn tier_out(
        self: &Arc<Self>,
        opts: OutOptions,
        observer: Arc<dyn Observer>,
    ) -> Result<OutReport> {
        self.run_out(opts, Input::Tree, observer).await
    }

    /// Tiers out a tar stream (a push) as one run: its entries, under
    /// `opts.prefix`, are what the file system holds there now (what the
    /// stream does not bring below the prefix is gone); `opts.source` is
    /// not read. Every entry is checked as it arrives and stored while the
    /// stream goes on, but nothing is committed unless the whole stream
    /// arrives and passes: an unsafe or broken one is refused with
    /// [`Error::Refused`], and leaves the store and the index as they were.
    /// The stream is read on a blocking thread: `stream` may block.
    pub async fn tier_out_stream(
        self: &Arc<Self>,
        stream: Box<dyn std::io::Read + Send>,
        opts: OutOptions,
        observer: Arc<dyn Observer>,
    ) -> Result<OutReport> {
        self.run_out(opts, Input::Stream(stream), observer).await
    }

    /// Re-keys one scope (`cbfs-tier rekey`): every file of it in the
    /// newest snapshot is read back from the store with the
    /// administrator's root secret, stored again under new file and group
    /// keys, and read back once more to verify it, in one new snapshot.
    /// `opts.source` and `opts.rules` are not used. Resumable: a rerun after
    /// a crash carries on (and tier-out runs wait until it has).
    pub async fn rekey(
        self: &Arc<Self>,
        opts: OutOptions,
        req: crate::out::RekeyRequest,
        observer: Arc<dyn Observer>,
    ) -> Result<crate::out::RekeyReport> {
        let _running = self.running.lock().await;
        let agent = self.clone();
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            crate::hsm::absorb(&agent)?;
            crate::out::rekey(&agent, &opts, &req, rt, observer.as_ref())
        })
        .await
        .map_err(|e| Error::Usage(format!("the re-key failed: {e}")))?
    }

    /// One run at a time, on a blocking thread.
    async fn run_out(
        self: &Arc<Self>,
        opts: OutOptions,
        input: Input<'static>,
        observer: Arc<dyn Observer>,
    ) -> Result<OutReport> {
        let _running = self.running.lock().await;
        let agent = self.clone();
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            crate::hsm::absorb(&agent)?;
            crate::out::run(&agent, &opts, input, rt, observer.as_ref())
        })
        .await
        .map_err(|e| Error::Usage(format!("the run failed: {e}")))?
    }

    /// What snapshots this agent trusts: the keyset's registered writers.
    pub fn trust(&self) -> Result<Trust> {
        let ks = self.keyset.as_ref().ok_or_else(|| {
            Error::Usage("the keyset is needed to trust snapshots: give --keyset".into())
        })?;
        Ok(Trust::new(ks.clone()))
    }

    /// The store as the restore engine reads it, with requests on `rt`.
    pub fn source(&self, rt: tokio::runtime::Handle) -> StoreSource {
        StoreSource::new(self.store.clone(), rt)
    }

    /// A new spool directory for one run's segments.
    pub(crate) fn new_spool(&self) -> Result<PathBuf> {
        let dir = self
            .index_dir
            .join(SPOOL)
            .join(format!("run-{}", hex::encode(rand::random::<[u8; 8]>())));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("cannot create spool directory", &dir, e))?;
        Ok(dir)
    }

    /// Held while a run (or a release) of this agent goes on.
    pub(crate) fn running(&self) -> &tokio::sync::Mutex<()> {
        &self.running
    }

    /// The index directory.
    pub fn index_dir(&self) -> &Path {
        &self.index_dir
    }

    /// The writer's signing key.
    pub fn writer(&self) -> &Signer {
        &self.writer
    }

    /// The writer's verifying key.
    pub fn writer_key(&self) -> PublicKey {
        self.writer.verifying_key()
    }
}

/// `file:INDEX/writer.key`, made on first use together with its public key
/// file `INDEX/writer.pub` (for `cbfs-keytool add-writer`).
fn default_writer(index: &Path) -> Result<KeySource> {
    let path = index.join("writer.key");
    let src = KeySource::File(path.clone());
    let public = index.join("writer.pub");
    if !path.exists() {
        let seed = Seed::generate();
        src.store_new(&seed, &Protection::None, &Unlock::default())?;
        tracing::info!(path = %path.display(), "created a writer key for this agent");
        let secret = UserSecret::from_seed(seed);
        write_public(&public, &secret)?;
    } else if !public.exists() {
        let secret = UserSecret::from_seed(src.load(&cbfs_keysource::unlock_from_env())?);
        write_public(&public, &secret)?;
    }
    Ok(src)
}

fn write_public(path: &Path, secret: &UserSecret) -> Result<()> {
    let name = UserName::new("agent").expect("a valid name");
    let bytes = UserPublic::from_secret(name, secret).to_signed_bytes(secret)?;
    std::fs::write(path, bytes).map_err(|e| Error::io("cannot write", path, e))
}
