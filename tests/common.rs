//! Helpers shared by the test targets in this folder.

use std::path::PathBuf;

/// `../shared/data/<rel>` beside the repository, or `None` with a printed reason when absent
/// (the MovieLens licence keeps the files out of the repo; CI has them).
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data").join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} not found (the MovieLens data lives in ../shared/data)", p.display());
        None
    }
}
