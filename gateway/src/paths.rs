//! Paths in requests: absolute in the file system's namespace, and never
//! able to climb out of it.

/// Checks a path parameter: `/` or `/a/b` without `.`, `..`, empty parts,
/// NUL or control characters, at most 4096 bytes.
pub fn check(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("a path must start with '/'");
    }
    if path.len() > 4096 {
        return Err("the path is longer than 4096 bytes");
    }
    if path.chars().any(char::is_control) {
        return Err("the path holds control characters");
    }
    if path == "/" {
        return Ok(());
    }
    for part in path[1..].trim_end_matches('/').split('/') {
        match part {
            "" => return Err("the path has an empty part"),
            "." | ".." => return Err("the path holds `.` or `..`"),
            _ => {}
        }
    }
    Ok(())
}

/// The path without its leading `/` and trailing `/`: how the index names
/// it (empty for the root).
pub fn relative(path: &str) -> &str {
    path.trim_start_matches('/').trim_end_matches('/')
}

/// Every ancestor of a checked path, from the root down, the path itself
/// last: `/`, `/a`, `/a/b` for `/a/b`.
pub fn ancestors(path: &str) -> Vec<String> {
    let mut out = vec!["/".to_owned()];
    let rel = relative(path);
    if rel.is_empty() {
        return out;
    }
    let mut cur = String::new();
    for part in rel.split('/') {
        cur.push('/');
        cur.push_str(part);
        out.push(cur.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        for ok in ["/", "/home/alice", "/home/alice/", "/a b"] {
            check(ok).unwrap();
        }
        for bad in ["", "home", "/a/../b", "/a//b", "/./a", "/a\n", "/.."] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ancestors("/a/b"), ["/", "/a", "/a/b"]);
        assert_eq!(ancestors("/"), ["/"]);
        assert_eq!(relative("/a/b/"), "a/b");
    }
}
