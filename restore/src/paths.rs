//! Path safety: what a member's path and link targets may be, so that nothing
//! restored lands or points outside the target.

use std::collections::HashSet;

use crate::error::{Error, Result};

/// Restores only the members under some path prefixes.
#[derive(Clone, Debug, Default)]
pub struct PathFilter {
    prefixes: Vec<Vec<u8>>,
}

impl PathFilter {
    /// Everything.
    pub fn all() -> Self {
        PathFilter::default()
    }

    /// The members whose path is one of `prefixes` or lies below one
    /// (component-wise: `a/b` matches `a/b` and `a/b/c`, not `a/bc`).
    pub fn new<P: AsRef<[u8]>>(prefixes: impl IntoIterator<Item = P>) -> Result<Self> {
        let mut out = Vec::new();
        for p in prefixes {
            let p = p.as_ref();
            let trimmed = p.strip_suffix(b"/").unwrap_or(p);
            let trimmed = trimmed.strip_prefix(b"./").unwrap_or(trimmed);
            check_member_path(trimmed).map_err(|reason| {
                Error::Usage(format!(
                    "path filter {:?}: {reason}",
                    String::from_utf8_lossy(p)
                ))
            })?;
            out.push(trimmed.to_vec());
        }
        Ok(PathFilter { prefixes: out })
    }

    /// Whether a member path is selected.
    pub fn matches(&self, path: &[u8]) -> bool {
        self.prefixes.is_empty()
            || self.prefixes.iter().any(|p| {
                path == p.as_slice() || (path.starts_with(p) && path.get(p.len()) == Some(&b'/'))
            })
    }

    /// Whether it selects everything.
    pub fn is_all(&self) -> bool {
        self.prefixes.is_empty()
    }
}

/// Checks that a member path is a plain relative path inside the target:
/// not empty, no NUL, not absolute, no `.`, `..` or empty component.
pub fn check_member_path(path: &[u8]) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.contains(&0) {
        return Err("the path contains a NUL byte".into());
    }
    if path[0] == b'/' {
        return Err("the path is absolute".into());
    }
    if cfg!(windows) && (path.contains(&b'\\') || path.contains(&b':')) {
        return Err("the path holds '\\' or ':', which would escape the target on Windows".into());
    }
    for part in path.split(|&b| b == b'/') {
        match part {
            b".." => return Err("the path climbs out with '..'".into()),
            b"." | b"" => return Err("the path is not canonical ('.' or empty component)".into()),
            _ => {}
        }
    }
    Ok(())
}

/// The parent directories of a path, shortest first (`a`, `a/b` for `a/b/c`).
pub(crate) fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(move |(i, _)| &path[..i])
}

/// Checks a symbolic link's target. It must be relative, and resolving it
/// lexically from the link's directory must stay inside the tree. Once the
/// resolution passes through another symbolic link of the tree (`symlinks`),
/// it may not climb with `..` any more: `..` after a link goes to the link
/// target's parent, which lexical resolution cannot see.
pub fn check_symlink_target(
    link_path: &[u8],
    target: &[u8],
    symlinks: &HashSet<Vec<u8>>,
) -> std::result::Result<(), String> {
    check_symlink_target_with(link_path, target, |p| symlinks.contains(p))
}

/// [`check_symlink_target`], asking `is_symlink` whether a path of the
/// tree is a symbolic link (for trees whose names are not all in memory).
pub fn check_symlink_target_with(
    link_path: &[u8],
    target: &[u8],
    mut is_symlink: impl FnMut(&[u8]) -> bool,
) -> std::result::Result<(), String> {
    if target.is_empty() {
        return Err("the target is empty".into());
    }
    if target.contains(&0) {
        return Err("the target contains a NUL byte".into());
    }
    if target[0] == b'/' {
        return Err("the target is absolute".into());
    }
    if cfg!(windows) && (target.contains(&b'\\') || target.contains(&b':')) {
        return Err("the target holds '\\' or ':'".into());
    }
    let mut stack: Vec<&[u8]> = link_path.split(|&b| b == b'/').collect();
    stack.pop(); // the link itself
    let mut through_link = false;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if through_link {
                    return Err(
                        "the target climbs with '..' after passing through another symbolic link"
                            .into(),
                    );
                }
                if stack.pop().is_none() {
                    return Err("the target climbs out of the tree".into());
                }
            }
            name => {
                stack.push(name);
                if is_symlink(&stack.join(&b'/')) {
                    through_link = true;
                }
            }
        }
    }
    Ok(())
}

/// The order entries are written in: component by component, so that a
/// directory comes right before its contents.
pub(crate) fn sort_key(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&b| b == b'/').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths() {
        for ok in [
            &b"a"[..],
            b"a/b",
            b"caf\xc3\xa9/x",
            b"..a/b..",
            b"a/.hidden",
        ] {
            check_member_path(ok).unwrap();
        }
        for (bad, why) in [
            (&b""[..], "empty"),
            (b"/abs", "absolute"),
            (b"../evil", "'..'"),
            (b"a/../../evil", "'..'"),
            (b"a/./b", "canonical"),
            (b"a//b", "canonical"),
            (b"a/", "canonical"),
            (b"a\0b", "NUL"),
        ] {
            let err = check_member_path(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn symlink_targets() {
        let none = HashSet::new();
        for (link, target) in [
            (&b"a/l"[..], &b"../b"[..]),
            (b"l", b"a/b/c"),
            (b"a/b/l", b"../../x"),
            (b"a/l", b"./b/../c"),
        ] {
            check_symlink_target(link, target, &none).unwrap();
        }
        for (link, target, why) in [
            (&b"l"[..], &b"/etc"[..], "absolute"),
            (b"a/l", b"../../etc", "out of the tree"),
            (b"l", b"..", "out of the tree"),
            (b"a/b/l", b"../../../x", "out of the tree"),
            (b"l", b"", "empty"),
        ] {
            let err = check_symlink_target(link, target, &none).unwrap_err();
            assert!(err.contains(why), "{target:?}: {err}");
        }
        // a/b/c/s -> ../../.. points at the root; a/b/c/p -> s/../x would leave it.
        let links: HashSet<Vec<u8>> = [b"a/b/c/s".to_vec()].into();
        check_symlink_target(b"a/b/c/s", b"../../..", &links).unwrap();
        let err = check_symlink_target(b"a/b/c/p", b"s/../x", &links).unwrap_err();
        assert!(err.contains("another symbolic link"), "{err}");
        check_symlink_target(b"a/b/c/p", b"s/x", &links).unwrap();
    }

    #[test]
    fn filter_is_component_wise() {
        let f = PathFilter::new(["a/b/"]).unwrap();
        assert!(f.matches(b"a/b") && f.matches(b"a/b/c"));
        assert!(!f.matches(b"a/bc") && !f.matches(b"a"));
        assert!(PathFilter::all().matches(b"anything"));
        assert!(PathFilter::new(["../x"]).is_err());
    }

    #[test]
    fn ancestors_and_order() {
        assert_eq!(ancestors(b"a/b/c").collect::<Vec<_>>(), [&b"a"[..], b"a/b"]);
        let mut paths = vec![&b"a.txt"[..], b"a/b", b"a", b"a/b/c", b"b"];
        paths.sort_by(|x, y| sort_key(x).cmp(&sort_key(y)));
        assert_eq!(paths, [&b"a"[..], b"a/b", b"a/b/c", b"a.txt", b"b"]);
    }
}
