//! Inputs split into part files, as Spark, Hive or a sharded export write them: a directory, or a
//! glob over file names (`data/part-*.parquet`), read part by part into one interaction table.
//! Dense ids are given in first-seen order across the parts, taken in name order, so a directory
//! reads exactly as the concatenation of its parts would.

use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::interactions::Interactions;

type Result<T> = std::result::Result<T, DataError>;

/// Whether `path` names several parts: an existing directory, or a file name holding `*` or `?`.
pub fn is_parts(path: &Path) -> bool {
    path.is_dir() || path.file_name().is_some_and(|n| n.to_string_lossy().contains(['*', '?']))
}

/// Whether `name` matches the glob `pattern` (`*`: any run of characters, `?`: one character).
fn glob_match(pattern: &[char], name: &[char]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some('*'), _) => glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..])),
        (Some('?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Bookkeeping files writers leave beside their parts: hidden files, `_SUCCESS`/`_metadata`
/// (Spark, Hadoop) and checksums (`.crc`).
fn bookkeeping(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_') || name.ends_with(".crc")
}

/// The part files of `path`, sorted by name: a directory's files other than bookkeeping ones, or
/// the files matching a glob in its (literal) directory.
pub fn list(path: &Path) -> Result<Vec<PathBuf>> {
    let (dir, pattern) = if path.is_dir() {
        (path.to_path_buf(), None)
    } else {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let pattern: Vec<char> = path.file_name().map(|n| n.to_string_lossy().chars().collect()).unwrap_or_default();
        if dir.to_string_lossy().contains(['*', '?']) {
            return Err(DataError::Parse { path: path.into(), message: "only the file name may hold * or ?; name the directory literally".into() });
        }
        (dir, Some(pattern))
    };
    let entries = std::fs::read_dir(&dir).map_err(|error| DataError::Io { path: dir.clone(), error })?;
    let mut parts = Vec::new();
    for e in entries {
        let e = e.map_err(|error| DataError::Io { path: dir.clone(), error })?;
        let name = e.file_name().to_string_lossy().into_owned();
        let chars: Vec<char> = name.chars().collect();
        let wanted = match &pattern {
            Some(p) => glob_match(p, &chars),
            None => !bookkeeping(&name),
        };
        if wanted && e.path().is_file() {
            parts.push(e.path());
        }
    }
    parts.sort();
    if parts.is_empty() {
        let what = if pattern.is_some() { "no file matches" } else { "the directory holds no part files" };
        return Err(DataError::Parse { path: path.into(), message: format!("{what}; name a file, a directory of parts, or a glob like DIR/part-*.parquet") });
    }
    Ok(parts)
}

/// Reads every part of `path` with `read_one` and appends them in name order.
pub fn read<O>(path: &Path, opts: &O, read_one: impl Fn(&Path, &O) -> Result<Interactions>) -> Result<Interactions> {
    let parts = list(path)?;
    let mut all: Option<Interactions> = None;
    for part in &parts {
        let next = read_one(part, opts)?;
        all = Some(match all {
            None => next,
            Some(mut acc) => {
                if acc.rating.is_some() != next.rating.is_some() || acc.time.is_some() != next.time.is_some() {
                    return Err(DataError::Parse {
                        path: part.clone(),
                        message: format!(
                            "has {} rating and {} time column than {} (the parts' columns must agree)",
                            if next.rating.is_some() { "a" } else { "no" },
                            if next.time.is_some() { "a" } else { "no" },
                            parts[0].display()
                        ),
                    });
                }
                acc.append(next);
                acc
            }
        });
    }
    Ok(all.expect("list returns at least one part"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_file_names() {
        let m = |p: &str, n: &str| glob_match(&p.chars().collect::<Vec<_>>(), &n.chars().collect::<Vec<_>>());
        assert!(m("part-*.parquet", "part-00000-abc.snappy.parquet"));
        assert!(m("*", "x") && m("a?c", "abc") && m("*.csv", ".csv"));
        assert!(!m("part-*.parquet", "part-1.csv") && !m("a?c", "ac") && !m("abc", "abcd"));
        assert!(bookkeeping("_SUCCESS") && bookkeeping(".part-0.crc") && bookkeeping("part-0.parquet.crc") && !bookkeeping("part-0.parquet"));
    }
}
