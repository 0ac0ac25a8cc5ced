//! What a restore did: restored, skipped, failed, and what damage it saw.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::error::{Error, NO_SPACE};
use crate::snapshot::SnapshotInfo;

/// Something that went wrong with one object or member.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Failure {
    /// The object at fault: a store key (segment, lockbox, summary) or a file.
    pub object: String,
    /// The member id, when the failure is about one member.
    pub member: Option<String>,
    /// The member's path, once it is known (it is encrypted until opened).
    pub path: Option<String>,
    /// A stable error class (`payload_auth`, `missing_object`, `unsafe_path`, ...).
    pub code: String,
    /// What went wrong, in words.
    pub error: String,
}

impl Failure {
    /// The object, member and path, for people.
    fn what(&self) -> String {
        let mut what = self.object.clone();
        if let Some(m) = &self.member {
            let _ = write!(what, " member {m}");
        }
        if let Some(p) = &self.path {
            let _ = write!(what, " ({p})");
        }
        what
    }

    pub(crate) fn new(object: impl Into<String>, member: Option<String>, err: &Error) -> Self {
        let object = object.into();
        // The object is a field of its own: do not repeat it in the message.
        let error = match err {
            Error::Format { object: o, source } if *o == object => source.to_string(),
            other => other.to_string(),
        };
        Failure {
            object,
            member,
            path: None,
            code: err.code().to_owned(),
            error,
        }
    }

    pub(crate) fn with_path(mut self, path: &[u8]) -> Self {
        self.path = Some(String::from_utf8_lossy(path).into_owned());
        self
    }
}

/// The outcome of a restore. Serializes to the `--json` output.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The snapshot restored (`None` for loose segment files).
    pub snapshot: Option<SnapshotInfo>,
    /// Whether a verified manifest proves that nothing is missing. False for
    /// loose segment files: nothing proves they are all there, or current.
    pub complete_by_manifest: bool,
    /// Whether the data was restored without any proof that it is the
    /// administrator's (loose segment files, asked for by name).
    pub unauthenticated: bool,
    /// Bytes read from the store (objects and ranges of segments).
    pub fetched_bytes: u64,
    /// Entries written to the output.
    pub restored_entries: u64,
    /// Content bytes written to the output.
    pub restored_bytes: u64,
    /// Members left out because this identity has no key for their scope,
    /// by scope label. Not failures.
    pub skipped_scopes: BTreeMap<String, u64>,
    /// Members left out by the path filter.
    pub filtered_out: u64,
    /// Links whose target leaves the tree, carried as they were (tar
    /// output only; a directory output refuses them). Each is also a
    /// warning that names it.
    pub links_that_leave: u64,
    /// Members (or entries) that could not be restored, each with the
    /// object at fault.
    pub failures: Vec<Failure>,
    /// Damaged objects worked around: every member they concern was still
    /// restored and verified against the manifest.
    pub damaged_objects: Vec<Failure>,
    /// Things to know that are neither (unregistered writer, ownership not
    /// restored, ...).
    pub warnings: Vec<String>,
}

impl Report {
    /// Whether every member in reach was restored (skipped scopes aside).
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }

    /// The exit code of a restore that got this far, for `cbfs-recover`
    /// and `cbfs-tier restore` alike: 0 complete; 5 when every failure was
    /// the store being unavailable (retry); 7 when every failure was the
    /// output's disk being full (retry with space); 3 partial otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.is_complete() {
            0
        } else if self.failures_all_are("unavailable") {
            5
        } else if self.failures_all_are(NO_SPACE) {
            7
        } else {
            3
        }
    }

    fn failures_all_are(&self, code: &str) -> bool {
        self.failures.iter().all(|f| f.code == code)
    }

    pub(crate) fn fail(&mut self, failure: Failure) {
        // Logged once per distinct error: a locked scope fails every member
        // of it the same way, and the report lists them all.
        if self.failures.iter().any(|f| f.error == failure.error) {
            tracing::debug!(object = %failure.object, member = ?failure.member, code = %failure.code, "{}", failure.error);
        } else {
            tracing::warn!(object = %failure.object, member = ?failure.member, code = %failure.code, "{}", failure.error);
        }
        self.failures.push(failure);
    }

    pub(crate) fn damaged(&mut self, failure: Failure) {
        tracing::warn!(object = %failure.object, code = %failure.code, "damaged: {}", failure.error);
        if !self.damaged_objects.contains(&failure) {
            self.damaged_objects.push(failure);
        }
    }

    pub(crate) fn skip_scope(&mut self, scope: &str) {
        *self.skipped_scopes.entry(scope.to_owned()).or_default() += 1;
    }

    /// A summary for people: what was restored, what was skipped for lack of
    /// a key, and every failure with its object.
    pub fn human(&self) -> String {
        let mut s = String::new();
        if let Some(snap) = &self.snapshot {
            let _ = writeln!(
                s,
                "snapshot {} (sequence {}, {} files in {} members, {})",
                snap.id, snap.sequence, snap.files, snap.members, snap.object
            );
        } else {
            let _ = writeln!(
                s,
                "UNAUTHENTICATED loose segment files: no signed manifest, so nothing proves they are the administrator's, complete or current"
            );
        }
        let _ = writeln!(
            s,
            "restored {} entries, {} bytes of content",
            self.restored_entries, self.restored_bytes
        );
        if self.filtered_out > 0 {
            let _ = writeln!(s, "left out by the path filter: {}", self.filtered_out);
        }
        for (scope, n) in &self.skipped_scopes {
            let _ = writeln!(s, "skipped {n} member(s) of scope `{scope}`: no key for it");
        }
        if self.links_that_leave > 0 {
            let _ = writeln!(
                s,
                "{} link(s) leave the tree, carried as they were (each is named below): \
                 whatever extracts this tar creates them",
                self.links_that_leave
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        for d in &self.damaged_objects {
            let _ = writeln!(
                s,
                "damaged (worked around, data verified): {} [{}]: {}",
                d.object, d.code, d.error
            );
        }
        // Failures with the same error are said once, with what they concern.
        let mut groups: Vec<(&str, &str, Vec<&Failure>)> = Vec::new();
        for f in &self.failures {
            match groups
                .iter_mut()
                .find(|(code, error, _)| *code == f.code && *error == f.error)
            {
                Some(g) => g.2.push(f),
                None => groups.push((&f.code, &f.error, vec![f])),
            }
        }
        const LISTED: usize = 10;
        for (code, error, members) in groups {
            if let [f] = members[..] {
                let _ = writeln!(s, "FAILED {} [{code}]: {error}", f.what());
                continue;
            }
            let _ = writeln!(s, "FAILED {} members [{code}]: {error}", members.len());
            for f in members.iter().take(LISTED) {
                let _ = writeln!(s, "  - {}", f.what());
            }
            if members.len() > LISTED {
                let _ = writeln!(
                    s,
                    "  - and {} more (--json lists every one)",
                    members.len() - LISTED
                );
            }
        }
        if self.failures.is_empty() {
            let _ = writeln!(s, "all members in reach were restored");
        } else {
            let _ = writeln!(
                s,
                "{} failure(s); every other member was restored",
                self.failures.len()
            );
        }
        if self.failures.iter().any(|f| f.code == NO_SPACE) {
            let _ = writeln!(
                s,
                "the output's disk is full: free some space and restore again \
                 (into an empty directory: nothing that exists is overwritten)"
            );
        }
        s
    }
}
