//! Helpers of the test targets that run the `ncf` binary (the trainer package's tests).

use std::path::PathBuf;

use assert_cmd::Command;

/// The `ncf` binary of this build.
pub fn ncf() -> Command {
    Command::cargo_bin("ncf").expect("ncf binary")
}

/// `checkpoint.json` text with its `format_version` set to `version`, whatever it was: tests
/// that fake older or newer checkpoints keep doing so when the current format moves on.
#[allow(dead_code)] // only the targets that fake older or newer checkpoints use it
pub fn with_format_version(json: &str, version: u32) -> String {
    let at = json.find("\"format_version\":").expect("format_version in checkpoint.json") + "\"format_version\":".len();
    let digits = json[at..].trim_start();
    let start = json.len() - digits.len();
    let end = start + digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    format!("{}{version}{}", &json[..start], &json[end..])
}

/// A fresh, empty directory for one test, named after the test target, `name` and this process.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ncf-{}-{name}-{}", env!("CARGO_CRATE_NAME"), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether a wgpu adapter exists (lavapipe in CI). With NCF_REQUIRE_WGPU=1 a missing adapter
/// fails the calling test instead of skipping it.
#[allow(dead_code)] // only the targets with wgpu tests use it
pub fn wgpu_available() -> bool {
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let probe = ncf()
        .args(["train", "--backend", "wgpu", "--epochs", "0", "--set", "data.demo.users=20", "--set", "data.demo.items=30"])
        .arg("--out")
        .arg(temp_dir(&format!("wgpu-probe-{}", PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed))).join("run"))
        .output()
        .unwrap();
    if probe.status.success() {
        return true;
    }
    let err = String::from_utf8_lossy(&probe.stderr);
    if std::env::var("NCF_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
        panic!("NCF_REQUIRE_WGPU=1 but wgpu is unavailable: {err}");
    }
    eprintln!("skipping: no wgpu adapter ({err}); install mesa-vulkan-drivers to run it");
    false
}
