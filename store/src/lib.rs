//! cbfs object stores.
