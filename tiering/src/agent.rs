//! The tiering agent's context: its store, index, keyset and writer key.

use std::path::{Path, PathBuf};

use cbfs_core::umbral_pre::{PublicKey, Signer};
use cbfs_core::{
    KeySource, Keyset, Protection, Seed, Unlock, UserSecret, fingerprint, public_key_hex,
};
use cbfs_store::Store;

use crate::error::{Error, Result};
use crate::index::{Batch, Index};
use cbfs_format::layout;

/// Everything a tiering run works with.
pub struct Agent {
    /// The object store.
    pub store: Store,
    /// The local index.
    pub index: Index,
    /// The public keyset (absent only in plain mode without one).
    pub keyset: Option<Keyset>,
    writer: Signer,
    index_dir: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// How to open an agent.
pub struct AgentOptions<'a> {
    /// Store spec: a directory or s3://BUCKET/PREFIX.
    pub store: &'a str,
    /// The index directory.
    pub index: &'a Path,
    /// The keyset file, if given.
    pub keyset: Option<&'a Path>,
    /// The writer's secret; `None` means `file:<index>/writer.key`, made on first use.
    pub writer_key: Option<KeySource>,
}

impl Agent {
    /// Opens the store and the index, and checks the keyset against what the
    /// index has seen before (same administrator, no older serial).
    pub fn open(opts: AgentOptions<'_>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the I/O runtime", PathBuf::new(), e))?;
        let store = Store::open(opts.store)?;
        let index = Index::open(opts.index)?;
        let keyset = opts.keyset.map(Keyset::load).transpose()?;
        let writer_source = match opts.writer_key {
            Some(s) => s,
            None => {
                let path = opts.index.join("writer.key");
                let src = KeySource::File(path.clone());
                if !path.exists() {
                    src.store_new(&Seed::generate(), &Protection::None)?;
                    tracing::info!(path = %path.display(), "created a writer key for this agent");
                }
                src
            }
        };
        let writer = UserSecret::from_seed(writer_source.load(&Unlock::from_env())?).signer();
        let agent = Agent {
            store,
            index,
            keyset,
            writer,
            index_dir: opts.index.to_owned(),
            rt,
        };
        agent.check_keyset()?;
        Ok(agent)
    }

    fn check_keyset(&self) -> Result<()> {
        let Some(ks) = &self.keyset else {
            return Ok(());
        };
        let state = self.index.state()?;
        let admin_hex = public_key_hex(ks.admin_verifying_key());
        if let Some(pinned) = &state.admin_key
            && pinned != &admin_hex
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
        if !ks.writers().is_empty() && !ks.writers().values().any(|w| *w == vk) {
            return Err(Error::Usage(format!(
                "this agent's writer key {} is not registered in the keyset; register it with \
                 cbfs-keytool add-writer, or give a registered one with --writer-key",
                fingerprint(&vk)
            )));
        }
        Ok(())
    }

    /// Binds the index to the keyset and makes sure the store holds it.
    pub fn publish_keyset(&self) -> Result<()> {
        let Some(ks) = &self.keyset else {
            return Ok(());
        };
        let mut state = self.index.state()?;
        let admin_hex = public_key_hex(ks.admin_verifying_key());
        let key = layout::keyset(ks.serial());
        if self.block_on(self.store.head(&key))?.is_none() {
            let bytes = ks.signed_bytes().to_vec();
            self.block_on(self.store.put_new(&key, bytes))?;
        }
        if state.admin_key.as_deref() != Some(&admin_hex) || state.keyset_serial != ks.serial() {
            state.admin_key = Some(admin_hex);
            state.keyset_serial = ks.serial();
            let mut b = Batch::default();
            b.put_state(&state);
            self.index.commit(b)?;
        }
        Ok(())
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

    /// Runs a store future to completion from synchronous code.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A handle for worker threads.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt.handle().clone()
    }
}
