//! With the `gateway` feature the targets link RocksDB through the agent;
//! when `scripts/fuzz` reuses a RocksDB the workspace built already
//! (`ROCKSDB_LIB_DIR`), the C++ runtime it needs is linked here.
fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_GATEWAY").is_some()
        && std::env::var_os("ROCKSDB_LIB_DIR").is_some()
    {
        println!("cargo:rustc-link-lib=stdc++");
    }
}
