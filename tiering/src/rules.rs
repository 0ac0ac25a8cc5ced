//! Scope rules: which scope each file goes to.
//!
//! A rule is `GLOB=LABEL`, matched against the path relative to the tiered
//! root. The first matching rule wins; a path no rule matches goes to the
//! `default` scope. `**` crosses directories, `*` does not.

use std::os::unix::ffi::OsStrExt;

use cbfs_core::ScopeLabel;
use globset::GlobMatcher;

use crate::error::{Error, Result};

/// One `GLOB=LABEL` rule.
#[derive(Clone, Debug)]
pub struct ScopeRule {
    glob: String,
    matcher: GlobMatcher,
    scope: ScopeLabel,
}

impl std::str::FromStr for ScopeRule {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::Usage(format!("scope rule `{s}`: {reason}"));
        let (glob, label) = s
            .rsplit_once('=')
            .ok_or_else(|| bad("write GLOB=LABEL, for example 'home/alice/**=alice'".into()))?;
        let scope = ScopeLabel::new(label).map_err(|e| bad(e.to_string()))?;
        let matcher = globset::GlobBuilder::new(glob)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| bad(e.to_string()))?
            .compile_matcher();
        Ok(ScopeRule {
            glob: glob.to_owned(),
            matcher,
            scope,
        })
    }
}

impl ScopeRule {
    /// The rule's glob.
    pub fn glob(&self) -> &str {
        &self.glob
    }
    /// The scope it assigns.
    pub fn scope(&self) -> &ScopeLabel {
        &self.scope
    }
}

/// An ordered list of rules.
#[derive(Clone, Debug, Default)]
pub struct ScopeRules {
    rules: Vec<ScopeRule>,
}

impl ScopeRules {
    /// Rules in priority order.
    pub fn new(rules: Vec<ScopeRule>) -> Self {
        ScopeRules { rules }
    }

    /// The scope of `rel_path` (relative to the tiered root, `/`-separated).
    pub fn scope_of(&self, rel_path: &[u8]) -> ScopeLabel {
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(rel_path));
        self.rules
            .iter()
            .find(|r| r.matcher.is_match(path))
            .map(|r| r.scope.clone())
            .unwrap_or_else(ScopeLabel::default_scope)
    }

    /// The scope of a directory: that of its own path, or else the scope its
    /// contents go to, so that `home/alice/**=alice` also keeps the name and
    /// metadata of `home/alice` itself in scope `alice`.
    pub fn scope_of_dir(&self, rel_path: &[u8]) -> ScopeLabel {
        let own = std::path::Path::new(std::ffi::OsStr::from_bytes(rel_path));
        let mut child = rel_path.to_vec();
        child.extend_from_slice(b"/\x01");
        let inside = std::path::Path::new(std::ffi::OsStr::from_bytes(&child));
        self.rules
            .iter()
            .find(|r| r.matcher.is_match(own) || r.matcher.is_match(inside))
            .map(|r| r.scope.clone())
            .unwrap_or_else(ScopeLabel::default_scope)
    }

    /// Every scope the rules name.
    pub fn scopes(&self) -> impl Iterator<Item = &ScopeLabel> {
        self.rules.iter().map(|r| &r.scope)
    }

    /// Whether there are no rules (everything goes to `default`).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> ScopeRules {
        ScopeRules::new(list.iter().map(|r| r.parse().unwrap()).collect())
    }

    #[test]
    fn first_match_wins_and_default_catches_the_rest() {
        let r = rules(&[
            "home/alice/**=alice",
            "home/*/secret/**=vault",
            "home/**=homes",
        ]);
        assert_eq!(r.scope_of(b"home/alice/a.txt").as_str(), "alice");
        assert_eq!(r.scope_of(b"home/alice/secret/x").as_str(), "alice");
        assert_eq!(r.scope_of(b"home/bob/secret/x").as_str(), "vault");
        assert_eq!(r.scope_of(b"home/bob/x").as_str(), "homes");
        assert_eq!(r.scope_of(b"etc/passwd").as_str(), "default");
        assert_eq!(r.scope_of_dir(b"home/alice").as_str(), "alice");
        assert_eq!(r.scope_of_dir(b"home/bob/secret").as_str(), "vault");
        assert_eq!(r.scope_of_dir(b"home").as_str(), "homes");
        assert_eq!(r.scope_of_dir(b"etc").as_str(), "default");
    }

    #[test]
    fn star_does_not_cross_directories() {
        let r = rules(&["*.log=logs"]);
        assert_eq!(r.scope_of(b"a.log").as_str(), "logs");
        assert_eq!(r.scope_of(b"dir/a.log").as_str(), "default");
    }

    #[test]
    fn bad_rules_are_explained() {
        for (rule, needle) in [
            ("nolabel", "GLOB=LABEL"),
            ("a/**=bad label", "invalid scope label"),
            ("a[=x", "a["),
        ] {
            let err = rule.parse::<ScopeRule>().unwrap_err().to_string();
            assert!(err.contains(needle), "{rule}: {err}");
        }
    }
}
