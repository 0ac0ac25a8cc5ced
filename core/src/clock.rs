//! Where the time comes from: the system clock, or a clock a test sets.
//!
//! Every check that depends on the time (a delegation's expiry, a signed
//! request's timestamp, a grant's issue time against a revocation) asks a
//! [`Clock`], so that a test moves time forward instead of sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;

    /// Now, in whole seconds since the Unix epoch.
    fn unix(&self) -> i64 {
        self.now().unix_timestamp()
    }

    /// Now in RFC 3339, to the second, UTC: as signed documents carry it.
    fn rfc3339(&self) -> String {
        let now = self
            .now()
            .replace_nanosecond(0)
            .expect("zero nanoseconds is valid");
        now.format(&time::format_description::well_known::Rfc3339)
            .expect("RFC 3339 formatting of a UTC time succeeds")
    }
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// Whether this build has the test suite's hooks (the `test-clock`
/// feature): a clock the tests move, and the crash points of the tools
/// that have them. Never true in a release build.
pub const TEST_HOOKS: bool = cfg!(feature = "test-clock");

/// The variable that, in a build with the `test-clock` feature, names a
/// file holding seconds to add to the system's time.
pub const TEST_CLOCK_ENV: &str = "CBFS_TEST_CLOCK_OFFSET_FILE";

/// The process's clock: the operating system's.
///
/// Whether this is a test-suite build (the `test-clock` feature): test-only
/// hooks, such as the key tool's `CBFS_TEST_ABORT_AFTER`, work only then.
pub fn test_hooks() -> bool {
    cfg!(feature = "test-clock")
}

/// In a build with the `test-clock` cargo feature (the test suite's builds
/// only; never a release), when [`TEST_CLOCK_ENV`] names a file, the time is
/// the system's plus the whole seconds written in that file, read at every
/// call: a test moves the time of the processes it started by rewriting the
/// file, instead of sleeping.
pub fn system_clock() -> Arc<dyn Clock> {
    #[cfg(feature = "test-clock")]
    if let Some(path) = std::env::var_os(TEST_CLOCK_ENV) {
        return Arc::new(OffsetClock { path: path.into() });
    }
    Arc::new(SystemClock)
}

/// Now, by [`system_clock`].
pub fn now() -> OffsetDateTime {
    system_clock().now()
}

/// The system's time moved by the seconds in a file (`test-clock` builds).
#[cfg(feature = "test-clock")]
#[derive(Debug)]
struct OffsetClock {
    path: std::path::PathBuf,
}

#[cfg(feature = "test-clock")]
impl Clock for OffsetClock {
    fn now(&self) -> OffsetDateTime {
        let offset = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        OffsetDateTime::now_utc() + time::Duration::seconds(offset)
    }
}

/// A clock that stands still until it is moved: for tests.
#[derive(Debug)]
pub struct FakeClock {
    /// Nanoseconds since the Unix epoch.
    nanos: AtomicI64,
}

impl FakeClock {
    /// A clock standing at `unix` seconds since the epoch.
    pub fn at(unix: i64) -> Arc<Self> {
        Arc::new(FakeClock {
            nanos: AtomicI64::new(unix.saturating_mul(1_000_000_000)),
        })
    }

    /// A clock standing at the system's time now.
    pub fn now_system() -> Arc<Self> {
        Self::at(OffsetDateTime::now_utc().unix_timestamp())
    }

    /// Moves the clock by `secs` seconds (backwards if negative).
    pub fn advance(&self, secs: i64) {
        self.nanos
            .fetch_add(secs.saturating_mul(1_000_000_000), Ordering::SeqCst);
    }

    /// Sets the clock to `unix` seconds since the epoch.
    pub fn set(&self, unix: i64) {
        self.nanos
            .store(unix.saturating_mul(1_000_000_000), Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> OffsetDateTime {
        let nanos = i128::from(self.nanos.load(Ordering::SeqCst));
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_told() {
        let clock = FakeClock::at(1_700_000_000);
        assert_eq!(clock.unix(), 1_700_000_000);
        clock.advance(90);
        assert_eq!(clock.unix(), 1_700_000_090);
        assert_eq!(clock.rfc3339(), "2023-11-14T22:14:50Z");
        clock.set(0);
        assert_eq!(clock.rfc3339(), "1970-01-01T00:00:00Z");
    }
}
