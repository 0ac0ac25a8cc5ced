//! Which versions of each stored object this build writes and reads: what
//! `--version` prints, kept next to the constants the codecs use, and checked
//! against the "Brands and versions" table of docs/FORMAT.md by a test.

/// One kind of object and its versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectVersions {
    /// The object, as FORMAT.md names it.
    pub object: &'static str,
    /// Its brand (or, for the two that are another format to the outside
    /// world, how the version shows).
    pub brand: &'static str,
    /// Versions this build writes.
    pub writes: &'static [u16],
    /// Versions this build reads.
    pub reads: &'static [u16],
}

/// Every object of the store (and the stub record on the file system).
pub const OBJECTS: &[ObjectVersions] = &[
    ObjectVersions {
        object: "segment",
        brand: "pax comment=cbfs-segment/N",
        writes: &[crate::tar::SEGMENT_VERSION],
        reads: &[crate::tar::SEGMENT_VERSION],
    },
    ObjectVersions {
        object: "member plaintext",
        brand: "CBFSMEMB",
        writes: &[
            crate::member::PLAINTEXT_VERSION,
            crate::member::PACK_VERSION,
        ],
        reads: &[
            crate::member::PLAINTEXT_VERSION,
            crate::member::PACK_VERSION,
        ],
    },
    ObjectVersions {
        object: "summary",
        brand: "CBFSSUMM",
        writes: &[crate::summary::VERSION],
        reads: &[1, crate::summary::VERSION],
    },
    ObjectVersions {
        object: "lockbox",
        brand: "CBFSLOCK",
        writes: &[crate::lockbox::VERSION_1, crate::lockbox::VERSION_2],
        reads: &[crate::lockbox::VERSION_1, crate::lockbox::VERSION_2],
    },
    ObjectVersions {
        object: "snapshot manifest",
        brand: "CBFSSNAP",
        writes: &[crate::manifest::VERSION],
        reads: &[1, crate::manifest::VERSION],
    },
    ObjectVersions {
        object: "delta snapshot manifest",
        brand: "CBFSSDLT",
        writes: &[crate::delta::DELTA_VERSION],
        reads: &[1, crate::delta::DELTA_VERSION],
    },
    ObjectVersions {
        object: "stub record",
        brand: "CBFSSTUB",
        writes: &[crate::stub::VERSION],
        reads: &[crate::stub::VERSION],
    },
    ObjectVersions {
        object: "retention record",
        brand: "CBFSRETN",
        writes: &[crate::retention::VERSION],
        reads: &[crate::retention::VERSION],
    },
    ObjectVersions {
        object: "manifest base",
        brand: "CBFSBASE",
        writes: &[crate::base::VERSION],
        reads: &[crate::base::VERSION],
    },
    ObjectVersions {
        object: "relocation record",
        brand: "CBFSRELO",
        writes: &[crate::relocation::VERSION],
        reads: &[crate::relocation::VERSION],
    },
    ObjectVersions {
        object: "collection record",
        brand: "CBFSCOLL",
        writes: &[crate::collection::VERSION],
        reads: &[crate::collection::VERSION],
    },
    ObjectVersions {
        object: "run record",
        brand: "CBFSRUNR",
        writes: &[crate::run_record::VERSION],
        reads: &[crate::run_record::VERSION],
    },
    ObjectVersions {
        object: "collector lease",
        brand: "CBFSLEAS",
        writes: &[crate::lease::VERSION],
        reads: &[crate::lease::VERSION],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers of a FORMAT.md cell like "1 (one file), 2 (a pack)" or
    /// "age v1": every integer in it that is not inside parentheses.
    fn numbers(cell: &str) -> Vec<u16> {
        let mut depth = 0;
        let mut out = Vec::new();
        let mut digits = String::new();
        let flush = |digits: &mut String, out: &mut Vec<u16>| {
            if !digits.is_empty() {
                out.push(digits.parse().unwrap());
                digits.clear();
            }
        };
        for c in cell.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                '0'..='9' if depth == 0 => {
                    digits.push(c);
                    continue;
                }
                _ => {}
            }
            flush(&mut digits, &mut out);
        }
        flush(&mut digits, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn the_table_in_format_md_says_what_the_codecs_do() {
        let doc = include_str!("../../docs/FORMAT.md");
        let table = doc
            .split("## Brands and versions")
            .nth(1)
            .expect("FORMAT.md has a Brands and versions section");
        let rows: Vec<Vec<&str>> = table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        for o in OBJECTS {
            let row = rows
                .iter()
                .find(|r| r[0].starts_with(o.object))
                .unwrap_or_else(|| panic!("FORMAT.md's table has no row for {}", o.object));
            let mut writes = o.writes.to_vec();
            writes.sort_unstable();
            assert_eq!(numbers(row[2]), writes, "{}: versions written", o.object);
            let mut reads = o.reads.to_vec();
            reads.sort_unstable();
            assert_eq!(numbers(row[3]), reads, "{}: versions read", o.object);
        }
    }
}
