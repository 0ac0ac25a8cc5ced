//! A segment's summary from the store: parsed strictly, canonical (its
//! bytes are exactly what it serializes to), and checked without a key
//! against a committed segment of its mode.
#![no_main]

use cbfs_format::{SegmentMode, Summary};
use libfuzzer_sys::fuzz_target;

const ENCRYPTED: &[u8] = include_bytes!("../../format/vectors/segment-v2-ok.tar");
const PLAIN: &[u8] = include_bytes!("../../format/vectors/segment-plain-ok.tar");

fuzz_target!(|data: &[u8]| {
    let Ok(summary) = Summary::from_bytes(data) else {
        return;
    };
    assert_eq!(summary.to_bytes(), data, "a summary is not canonical");
    let back = Summary::from_bytes(&summary.to_bytes()).expect("its own bytes");
    assert_eq!(back.entries(), summary.entries());
    for e in summary.entries() {
        assert_eq!(summary.entry(&e.member), Some(e));
        assert!(e.end_offset() <= summary.segment_len());
    }
    let segment = match summary.mode() {
        SegmentMode::Encrypted => ENCRYPTED,
        SegmentMode::Plain => PLAIN,
    };
    if let Err(e) = summary.verify_segment(segment) {
        assert!(
            matches!(e.code(), "summary_mismatch" | "tar"),
            "a keyless check fails as a mismatch: {e}"
        );
    }
});
