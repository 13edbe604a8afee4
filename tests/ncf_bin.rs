//! Helpers of the test targets that run the `ncf` binary (the trainer package's tests).

use std::path::PathBuf;

use assert_cmd::Command;

/// The `ncf` binary of this build.
pub fn ncf() -> Command {
    Command::cargo_bin("ncf").expect("ncf binary")
}

/// A fresh, empty directory for one test, named after the test target, `name` and this process.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ncf-{}-{name}-{}", env!("CARGO_CRATE_NAME"), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
