//! The agent's store as the restore engine's `ObjectSource` (in `cbfs-store`,
//! shared with the collector).

pub use cbfs_store::StoreSource;
