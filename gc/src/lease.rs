//! The collector's lease (see `cbfs_format::Lease`): one collector at a
//! time may delete. Taken, renewed and given back by creating the next
//! generation with a conditional write; the newest generation is the
//! lease's state.

use cbfs_format::{Lease, RecordId, layout};
use cbfs_store::Store;
use tokio::runtime::Handle;

use crate::error::{Error, Holder, Result};

/// The lease as this collector holds it.
pub(crate) struct Held {
    store: Store,
    rt: Handle,
    ttl: i64,
    lease: Lease,
    /// When it was last renewed (by our clock).
    renewed: i64,
    /// When the store last showed it as ours.
    verified: i64,
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn held_by(lease: String, l: &Lease) -> Error {
    Error::LeaseHeld(Box::new(Holder {
        lease,
        holder: l.holder.to_string(),
        host: l.host.clone(),
        pid: l.pid,
        acquired: rfc3339(l.acquired_unix),
        expires: rfc3339(l.expires_unix),
    }))
}

/// Whether the holder of `lease` is a process of this host that is gone
/// (its lease is then stale, whatever its expiry says).
fn holder_is_dead(lease: &Lease) -> bool {
    lease.host == host_name()
        && lease.pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{}", lease.pid)).exists()
}

/// The newest generation of the lease, if any.
fn newest(store: &Store, rt: &Handle) -> Result<Option<(String, Lease)>> {
    let keys = rt.block_on(store.list(layout::LEASE))?;
    let Some(info) = keys
        .into_iter()
        .filter(|o| layout::parse_lease(&o.key).is_some())
        .max_by_key(|o| layout::parse_lease(&o.key))
    else {
        return Ok(None);
    };
    let bytes = rt.block_on(store.get(&info.key))?;
    let lease = Lease::from_bytes(&bytes).map_err(|e| Error::format(&info.key, e))?;
    Ok(Some((info.key, lease)))
}

impl Held {
    /// Takes the lease for `ttl` seconds, or fails naming the collector
    /// that holds it. A lease that ran out, was given back, or whose holder
    /// (on this host) is dead, is taken over.
    pub(crate) fn acquire(store: &Store, rt: &Handle, ttl: i64) -> Result<Held> {
        let now = cbfs_core::now().unix_timestamp();
        let current = newest(store, rt)?;
        if let Some((key, l)) = &current
            && !l.released
            && l.expires_unix > now
            && !holder_is_dead(l)
        {
            return Err(held_by(key.clone(), l));
        }
        let generation = current.as_ref().map_or(1, |(_, l)| l.generation + 1);
        let lease = Lease {
            generation,
            holder: RecordId::random(),
            acquired_unix: now,
            expires_unix: now + ttl,
            released: false,
            host: host_name(),
            pid: std::process::id(),
        };
        let mut held = Held {
            store: store.clone(),
            rt: rt.clone(),
            ttl,
            lease,
            renewed: now,
            verified: now,
        };
        // The generation taken over is of no use any more once ours is there.
        held.write_next(current.map(|(_, l)| l.generation))?;
        held.delete_older();
        tracing::info!(generation, "lease taken");
        Ok(held)
    }

    /// Deletes the generations older than ours (best effort): a collector
    /// killed between writing its next generation and deleting the one
    /// before leaves that one behind, which nothing else would delete.
    fn delete_older(&self) {
        let Ok(keys) = self.rt.block_on(self.store.list(layout::LEASE)) else {
            return;
        };
        for o in keys {
            if layout::parse_lease(&o.key).is_some_and(|g| g < self.lease.generation) {
                let _ = self.rt.block_on(self.store.delete(&o.key));
            }
        }
    }

    /// Writes `self.lease` as the next generation; if someone else wrote
    /// that generation first, the lease is theirs.
    fn write_next(&mut self, previous: Option<u64>) -> Result<()> {
        let key = layout::lease(self.lease.generation);
        match self
            .rt
            .block_on(self.store.put_new(&key, self.lease.to_bytes()))
        {
            Ok(_) => {
                if let Some(g) = previous {
                    let _ = self.rt.block_on(self.store.delete(&layout::lease(g)));
                }
                Ok(())
            }
            Err(e) if e.is_already_exists() => {
                let bytes = self.rt.block_on(self.store.get(&key))?;
                let l = Lease::from_bytes(&bytes).map_err(|e| Error::format(&key, e))?;
                Err(held_by(key, &l))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fails unless the newest generation is still ours; renews the lease
    /// once a third of its time has passed. Called before each step that
    /// deletes or publishes.
    pub(crate) fn check(&mut self) -> Result<()> {
        let now = cbfs_core::now().unix_timestamp();
        // Nobody can take a lease before it runs out: while it is well
        // within its time and was seen lately, the store is not asked.
        if now - self.verified < (self.ttl / 10).max(1) && now - self.renewed < self.ttl / 3 {
            return Ok(());
        }
        let current = newest(&self.store, &self.rt)?;
        match &current {
            Some((_, l)) if l.holder == self.lease.holder && !l.released => {}
            Some((key, _)) => return Err(Error::LeaseLost { lease: key.clone() }),
            None => {
                return Err(Error::LeaseLost {
                    lease: layout::LEASE.to_owned(),
                });
            }
        }
        self.verified = now;
        if now - self.renewed >= self.ttl / 3 {
            let previous = self.lease.generation;
            self.lease.generation += 1;
            self.lease.expires_unix = now + self.ttl;
            self.write_next(Some(previous))
                .map_err(|_| Error::LeaseLost {
                    lease: layout::lease(self.lease.generation),
                })?;
            self.renewed = now;
        }
        Ok(())
    }

    /// Gives the lease back.
    pub(crate) fn release(mut self) -> Result<()> {
        let previous = self.lease.generation;
        self.lease.generation += 1;
        self.lease.released = true;
        self.write_next(Some(previous))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let h = rt.handle();
        let mut first = Held::acquire(&store, h, 600).unwrap();
        // This very process holds it: a second collector is refused.
        match Held::acquire(&store, h, 600) {
            Err(Error::LeaseHeld(h)) => {
                assert_eq!(h.pid, std::process::id());
                assert_eq!(h.lease, layout::lease(1));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        first.check().unwrap();
        first.release().unwrap();
        // Given back: the next one takes it, and earlier generations go.
        let second = Held::acquire(&store, h, 600).unwrap();
        let keys = || -> Vec<String> {
            rt.block_on(store.list(layout::LEASE))
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect()
        };
        assert_eq!(keys(), vec![layout::lease(3)]);
        // A lease that ran out is taken over, and its holder learns it lost.
        drop(second);
        let mut stale = Held::acquire(&store, h, 600);
        assert!(stale.is_err());
        let expired = Lease {
            generation: 4,
            holder: RecordId::random(),
            acquired_unix: 0,
            expires_unix: 1,
            released: false,
            host: "elsewhere".into(),
            pid: 1,
        };
        rt.block_on(store.put_new(&layout::lease(4), expired.to_bytes()))
            .unwrap();
        stale = Held::acquire(&store, h, 600);
        let mut taker = stale.unwrap();
        taker.check().unwrap();
        // Generation 3, left behind by the holder of 4 (a collector killed
        // before it deleted it), goes with 4.
        assert_eq!(keys(), vec![layout::lease(5)]);
    }
}
