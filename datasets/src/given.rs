//! A split given as files, so published splits (e.g. the NCF reference's `ml-1m.train.rating`,
//! `ml-1m.test.rating`, `ml-1m.test.negative`) and `ncf data split` outputs are reproduced exactly.
//!
//! The interaction files are read with the same [`ReadOptions`]. Ids of the test (and validation)
//! file go through the training file's id maps:
//! - a test user absent from the training file has nothing to rank from: its test rows (and its
//!   negatives lines) are dropped and counted in [`GivenReport::dropped_test_rows`];
//! - a test or negative item absent from the training file is appended to the item catalogue
//!   (counted in [`GivenReport::new_items`]), as the reference scripts' catalogue `0..max id` holds it.
//!
//! The negatives file has one line per test pair: `(user,item)` then its negatives, tab-separated;
//! every line must list the same number of negatives.

use std::borrow::Cow;
use std::io::BufRead;
use std::path::Path;

use crate::candidates::SampledCandidates;
use crate::error::{DataError, Result};
use crate::interactions::Interactions;
use crate::reader::{self, ReadOptions};
use crate::split::{Split, SplitMethod};
use crate::user_items::UserItems;

/// What importing changed relative to the files, for the run's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GivenReport {
    /// Test rows whose user is not in the training file.
    pub dropped_test_rows: usize,
    /// Validation rows whose user is not in the training file.
    pub dropped_valid_rows: usize,
    /// Negatives lines whose user is not in the training file.
    pub dropped_negative_lines: usize,
    /// Items of the test or negatives file absent from the training file, added to the catalogue.
    pub new_items: usize,
}

/// A split read from files: the training interactions (with the id maps of the whole catalogue),
/// the split over them and, when a negatives file was given, the sampled-evaluation candidates.
#[derive(Debug, Clone)]
pub struct Given {
    pub data: Interactions,
    pub split: Split,
    pub candidates: Option<SampledCandidates>,
    pub report: GivenReport,
}

/// Reads a given split: `train` and `test` interaction files, optionally a `valid` one (read like
/// `test`) and `negatives`.
pub fn read(train: &Path, test: &Path, valid: Option<&Path>, negatives: Option<&Path>, opts: &ReadOptions) -> Result<Given> {
    let mut data = reader::read(train, opts)?;
    let mut report = GivenReport::default();
    let items_before = data.n_items();
    let (test_items_table, dropped) = read_held_out(test, &mut data, opts)?;
    report.dropped_test_rows = dropped;
    let valid_table = match valid {
        Some(path) => {
            let (table, dropped) = read_held_out(path, &mut data, opts)?;
            report.dropped_valid_rows = dropped;
            Some(table)
        }
        None => None,
    };
    let candidates = match negatives {
        Some(path) => Some(read_negatives(path, test, &mut data, &test_items_table, &mut report)?),
        None => None,
    };
    report.new_items = data.n_items() - items_before;
    let train_table = UserItems::from_pairs(data.n_users(), data.user.iter().copied().zip(data.item.iter().copied()));
    let split = Split { train: train_table, valid: valid_table, test: test_items_table, n_items: data.n_items(), method: SplitMethod::Given };
    Ok(Given { data, split, candidates, report })
}

/// Reads a held-out (test or validation) file through the training data's id maps: rows of users
/// absent from training are dropped (their count returned), new items join the catalogue.
fn read_held_out(path: &Path, data: &mut Interactions, opts: &ReadOptions) -> Result<(UserItems, usize)> {
    let held = reader::read(path, opts)?;
    // Dense ids of each distinct raw id of the file, mapped once.
    let users: Vec<Option<u32>> = held.users.raw_ids().iter().map(|r| data.users.get(r)).collect();
    // Items are interned only for kept rows, so a dropped user's items do not join the catalogue.
    let mut items: Vec<Option<u32>> = vec![None; held.n_items()];
    let mut pairs = Vec::with_capacity(held.len());
    let mut dropped = 0;
    for (&u, &i) in held.user.iter().zip(&held.item) {
        let Some(u) = users[u as usize] else {
            dropped += 1;
            continue;
        };
        let i = *items[i as usize].get_or_insert_with(|| data.items.intern(held.items.raw(i)));
        pairs.push((u, i));
    }
    Ok((UserItems::from_pairs(data.n_users(), pairs), dropped))
}

/// Quotes an id for a negatives file when it holds a character of the format's syntax (tab,
/// comma, parenthesis, quote, line break): in double quotes, quotes doubled, as CSV does.
pub fn quote_negative_id(id: &str) -> Cow<'_, str> {
    if id.contains(['\t', ',', '(', ')', '"', '\n', '\r']) { format!("\"{}\"", id.replace('"', "\"\"")).into() } else { id.into() }
}

/// The byte offset of the first `sep` outside double quotes.
fn find_unquoted(s: &str, sep: char) -> Option<usize> {
    let mut quoted = false;
    s.char_indices().find_map(|(i, c)| {
        quoted ^= c == '"';
        (c == sep && !quoted).then_some(i)
    })
}

/// `s` cut at every `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(at) = find_unquoted(rest, sep) {
        out.push(&rest[..at]);
        rest = &rest[at + sep.len_utf8()..];
    }
    out.push(rest);
    out
}

/// An id as written: spaces around it trimmed, and unquoted if quoted.
fn unquote(field: &str) -> Cow<'_, str> {
    let f = field.trim();
    match f.strip_prefix('"').and_then(|f| f.strip_suffix('"')) {
        Some(inner) if f.len() >= 2 => inner.replace("\"\"", "\"").into(),
        _ => f.into(),
    }
}

/// Parses `(user,item)` at the start of a negatives line.
fn parse_pair(field: &str) -> Option<(Cow<'_, str>, Cow<'_, str>)> {
    let inner = field.trim().strip_prefix('(')?.strip_suffix(')')?;
    let at = find_unquoted(inner, ',')?;
    let (u, i) = (unquote(&inner[..at]), unquote(&inner[at + 1..]));
    (!u.is_empty() && !i.is_empty()).then_some((u, i))
}

/// Reads the NCF `.test.negative` format into candidates in the order of the test pairs.
fn read_negatives(path: &Path, test_path: &Path, data: &mut Interactions, test: &UserItems, report: &mut GivenReport) -> Result<SampledCandidates> {
    let file = std::fs::File::open(path).map_err(|error| DataError::Io { path: path.into(), error })?;
    let line_err = |line: usize, message: String| DataError::Line { path: path.into(), line, message };
    // Row of each test pair in `test.pairs()` order: offsets[u] + position among u's test items.
    let offsets = test.offsets();
    let mut rows: Vec<Option<Vec<u32>>> = vec![None; test.nnz()];
    let mut width: Option<(usize, usize)> = None; // (negatives per line, first line)
    let mut seen_any = false;
    let io = |error| DataError::Io { path: path.into(), error };
    let mut lines = std::io::BufReader::new(file).lines().enumerate();
    while let Some((k, line)) = lines.next() {
        let line_no = k + 1;
        let mut line = line.map_err(io)?;
        // A quoted id may hold a line break: the record goes on until its quotes balance.
        while line.matches('"').count() % 2 == 1 {
            let Some((_, next)) = lines.next() else { break };
            line.push('\n');
            line.push_str(&next.map_err(io)?);
        }
        let line = line.trim_end(); // CRLF and trailing tabs
        if line.is_empty() {
            continue;
        }
        seen_any = true;
        let mut fields = split_unquoted(line, '\t').into_iter();
        let head = fields.next().unwrap_or("");
        let (raw_u, raw_i) =
            parse_pair(head).ok_or_else(|| line_err(line_no, format!("expected \"(user,item)\" then tab-separated negative items, found {head:?}")))?;
        let negs: Vec<Cow<str>> = fields.map(unquote).collect();
        if let Some(empty) = negs.iter().position(|n| n.is_empty()) {
            return Err(line_err(line_no, format!("negative {} is empty", empty + 1)));
        }
        match width {
            None => width = Some((negs.len(), line_no)),
            Some((w, first)) if w != negs.len() => {
                return Err(line_err(line_no, format!("{} negatives where line {first} has {w}; every line needs the same number", negs.len())));
            }
            Some(_) => {}
        }
        let Some(u) = data.users.get(&raw_u) else {
            report.dropped_negative_lines += 1;
            continue;
        };
        let not_test = || line_err(line_no, format!("({raw_u},{raw_i}) is not a test pair of {}", test_path.display()));
        let i = data.items.get(&raw_i).ok_or_else(not_test)?;
        let pos = test.items(u).binary_search(&i).map_err(|_| not_test())?;
        let slot = &mut rows[offsets[u as usize] + pos];
        if slot.is_some() {
            return Err(line_err(line_no, format!("a second line for test pair ({raw_u},{raw_i})")));
        }
        *slot = Some(negs.iter().map(|n| data.items.intern(n)).collect());
    }
    if !seen_any {
        return Err(DataError::Empty { path: path.into() });
    }
    let negatives = width.map_or(0, |w| w.0);
    let mut out = SampledCandidates { user: Vec::with_capacity(rows.len()), items: Vec::with_capacity(rows.len() * (1 + negatives)), negatives };
    for ((u, i), row) in test.pairs().zip(rows) {
        let Some(row) = row else {
            return Err(DataError::Parse {
                path: path.into(),
                message: format!(
                    "no line for test pair ({},{}) of {}; every test pair needs its negatives",
                    data.users.raw(u),
                    data.items.raw(i),
                    test_path.display()
                ),
            });
        };
        out.user.push(u);
        out.items.push(i);
        out.items.extend(row);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ncf-given-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The NCF reference layout: tab-separated `user item rating timestamp`, integer ids, no header.
    fn reference_files(tag: &str) -> (PathBuf, PathBuf) {
        let train = write(&format!("{tag}.train.rating"), "0\t10\t5\t100\n0\t11\t4\t101\n1\t10\t3\t102\n1\t12\t3\t103\n");
        let test = write(&format!("{tag}.test.rating"), "0\t12\t4\t200\n1\t11\t2\t201\n");
        (train, test)
    }

    #[test]
    fn reads_reference_format_with_negatives() {
        let (train, test) = reference_files("ok");
        let neg = write("ok.test.negative", "(0,12)\t13\t14\n(1,11)\t14\t13\n");
        let g = read(&train, &test, None, Some(&neg), &ReadOptions::default()).unwrap();
        assert_eq!(g.data.users.raw_ids(), &["0", "1"]);
        // Items 13 and 14 appear only among the negatives: appended to the catalogue.
        assert_eq!(g.data.items.raw_ids(), &["10", "11", "12", "13", "14"]);
        assert_eq!(g.report, GivenReport { new_items: 2, ..Default::default() });
        assert_eq!(g.split.n_items, 5);
        assert_eq!(g.split.train.items(0), &[0, 1]);
        assert_eq!(g.split.test.items(0), &[2]);
        assert_eq!(g.split.test.items(1), &[1]);
        let c = g.candidates.unwrap();
        assert_eq!((c.rows(), c.negatives), (2, 2));
        assert_eq!(c.user, vec![0, 1]);
        assert_eq!(c.items, vec![2, 3, 4, 1, 4, 3]);
    }

    #[test]
    fn quoted_ids_in_negatives_round_trip() {
        let ids = ["plain", "a,b", "t\tab", "(x)", "q\"uote", "line\nbreak", "007"];
        for id in ids {
            let line = format!("({},{})\t{}", quote_negative_id(id), quote_negative_id("i"), quote_negative_id(id));
            let fields = split_unquoted(&line, '\t');
            let (u, i) = parse_pair(fields[0]).unwrap();
            assert_eq!((&*u, &*i, &*unquote(fields[1])), (id, "i", id), "{line:?}");
        }
    }

    #[test]
    fn unseen_test_users_are_dropped_and_counted() {
        let (train, _) = reference_files("drop");
        let test = write("drop.test.rating", "0\t12\t4\t200\n7\t11\t2\t201\n");
        let neg = write("drop.test.negative", "(0,12)\t13\n(7,11)\t10\n");
        let g = read(&train, &test, None, Some(&neg), &ReadOptions::default()).unwrap();
        assert_eq!(g.report, GivenReport { dropped_test_rows: 1, dropped_negative_lines: 1, new_items: 1, ..Default::default() });
        assert_eq!(g.split.test.nnz(), 1);
        assert_eq!(g.candidates.unwrap().rows(), 1);
    }

    #[test]
    fn negatives_errors_name_file_and_line() {
        let (train, test) = reference_files("err");
        let cases = [
            ("bad-head", "(0,12)\t13\n0,11\t14\n", "line 2"),
            ("bad-width", "(0,12)\t13\t14\n(1,11)\t14\n", "line 2"),
            ("not-test", "(0,12)\t13\n(1,10)\t14\n", "line 2"),
            ("twice", "(0,12)\t13\n(0,12)\t14\n", "line 2"),
            ("empty-neg", "\n(0,12)\t\t13\n", "line 2"),
        ];
        for (name, text, want) in cases {
            let neg = write(&format!("{name}.test.negative"), text);
            let e = read(&train, &test, None, Some(&neg), &ReadOptions::default()).unwrap_err().to_string();
            assert!(e.contains(&format!("{name}.test.negative")) && e.contains(want), "{name}: {e}");
        }
        let neg = write("missing.test.negative", "(0,12)\t13\n");
        let e = read(&train, &test, None, Some(&neg), &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("missing.test.negative") && e.contains("(1,11)"), "{e}");
        let neg = write("blank.test.negative", "\n\n");
        let e = read(&train, &test, None, Some(&neg), &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let bad_test = write("bad.test.rating", "0\t12\tfour\t200\n");
        let e = read(&train, &bad_test, None, None, &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("bad.test.rating") && e.contains("line 1") && e.contains("four"), "{e}");
    }
}
