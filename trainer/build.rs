//! Records the git commit the binary is built from (`NCF_GIT_COMMIT`) for run manifests and
//! `ncf --version`; absent when building outside a git checkout (e.g. from a source archive).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NCF_GIT_COMMIT");
    if let Some(commit) = std::env::var("NCF_GIT_COMMIT").ok().or_else(|| git(&["rev-parse", "HEAD"])) {
        println!("cargo:rustc-env=NCF_GIT_COMMIT={commit}");
    }
    // Rerun when HEAD moves: HEAD itself (a checkout), the branch it names (a commit) and
    // packed-refs (a gc). Only files that exist: a missing one would rerun this every build.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(path) = git(&["rev-parse", "--git-path", name])
            && std::path::Path::new(&path).exists()
        {
            let path = std::fs::canonicalize(&path).map_or(path, |p| p.display().to_string());
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
