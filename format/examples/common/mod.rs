//! What the vector generators share: the folder they write to, and adding
//! vectors to its `index.json` in place of any of the same name.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The folder named by the first argument, `format/vectors` by default.
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "format/vectors".into()),
    )
}

/// The folder's `index.json`, parsed.
pub fn read_index(dir: &Path) -> Value {
    serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap()
}

/// Adds `new` to `index`, replacing the vectors of the same names, and
/// writes it back to the folder's `index.json`.
pub fn add_vectors(dir: &Path, mut index: Value, new: Vec<Value>) {
    let vectors = index["vectors"].as_array_mut().unwrap();
    let names: Vec<String> = new
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    vectors.retain(|v| !names.iter().any(|n| v["name"] == n.as_str()));
    vectors.extend(new);
    fs::write(
        dir.join("index.json"),
        serde_json::to_string_pretty(&index).unwrap() + "\n",
    )
    .unwrap();
    println!("added {} vectors to {}", names.len(), dir.display());
}
