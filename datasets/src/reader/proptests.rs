//! Property tests of the reader, a bounded number of cases each: random bytes never make it
//! panic; odd but well-formed CSV (quotes, separators and line breaks inside quotes, CRLF, a
//! byte-order mark, blank lines, unicode, Latin-1) reads back exactly the rows it was written
//! from; and plain files read the same on the fast and the general path.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::{Format, ReadOptions, assert_same, read, text_paths};
use crate::interactions::IdMap;

/// Cases per property: enough to hit every generator branch, a few seconds in all.
fn config() -> ProptestConfig {
    // No regression files written into the source tree.
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// `bytes` in a fresh file named `*.ext`.
fn file(bytes: &[u8], ext: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("ncf-reader-prop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{}.{ext}", NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn formats() -> impl Strategy<Value = Option<Format>> {
    prop::option::of(prop::sample::select(vec![Format::Csv, Format::Tsv, Format::Movielens, Format::Parquet]))
}

/// Bytes that look a little like delimited text, so the parser gets past the first line.
fn text_like() -> impl Strategy<Value = Vec<u8>> {
    let alphabet = b",\t\n\r\":;. -+0123456789aeEinf\xef\xbb\xbf\xe9\xff\x01".to_vec();
    prop::collection::vec(prop::sample::select(alphabet), 0..400)
}

/// One generated CSV row: user, item, rating.
type Row = (String, String, f32);

/// Ids with an ASCII letter or digit first (so trimming leaves something) and then anything CSV
/// must quote, unicode and C1 characters; Latin-1 ids stay within U+00FF.
fn ids(latin1: bool) -> BoxedStrategy<String> {
    let pattern = if latin1 { "[a-z0-9][a-z0-9 ,;:\"'\t\r\n|\u{a0}-\u{ff}]{0,9}" } else { "[a-z0-9][a-zA-Z0-9 ,;:\"'\t\r\n|é€😀ÿ\u{80}-\u{9f}]{0,9}" };
    proptest::string::string_regex(pattern).unwrap().boxed()
}

/// How to write the rows.
#[derive(Debug, Clone)]
struct Layout {
    separator: u8,
    header: bool,
    crlf: bool,
    bom: bool,
    quote_all: bool,
    latin1: bool,
    /// Rows followed by a blank line.
    blank_after: Vec<bool>,
}

/// A field's bytes: quoted when it must be (or always), Latin-1 encoded when asked.
fn field(value: &str, l: &Layout) -> Vec<u8> {
    let must = value.bytes().any(|b| matches!(b, b'"' | b'\n' | b'\r') || b == l.separator);
    let text = if must || l.quote_all { format!("\"{}\"", value.replace('"', "\"\"")) } else { value.to_owned() };
    if l.latin1 { text.chars().map(|c| u8::try_from(u32::from(c)).expect("Latin-1 id")).collect() } else { text.into_bytes() }
}

/// The file holding `rows` laid out as `l`.
fn csv_bytes(rows: &[Row], l: &Layout) -> Vec<u8> {
    let eol: &[u8] = if l.crlf { b"\r\n" } else { b"\n" };
    let mut out = if l.bom { super::BOM.to_vec() } else { Vec::new() };
    let line = |fields: [Vec<u8>; 3], out: &mut Vec<u8>| {
        out.extend(fields.join(&l.separator));
        out.extend(eol);
    };
    if l.header {
        line(["user", "item", "rating"].map(|h| h.as_bytes().to_vec()), &mut out);
    }
    for ((u, i, r), blank) in rows.iter().zip(&l.blank_after) {
        line([field(u, l), field(i, l), r.to_string().into_bytes()], &mut out);
        if *blank {
            out.extend(eol);
        }
    }
    out
}

/// The raw id a written id reads back as, trimmed: itself, unless its Latin-1 bytes happen to be
/// valid UTF-8 (then that text).
fn expected_id(id: &str, latin1: bool) -> String {
    let latin1_bytes: Vec<u8> = id.chars().map(|c| c as u8).collect();
    let text = match std::str::from_utf8(&latin1_bytes) {
        Ok(utf8) if latin1 => utf8,
        _ => id,
    };
    text.trim().to_owned()
}

fn rows_and_layout() -> impl Strategy<Value = (Vec<Row>, Layout)> {
    any::<bool>().prop_flat_map(|latin1| {
        let row = (ids(latin1), ids(latin1), (-20i32..20).prop_map(|r| r as f32 / 4.0));
        let rows = prop::collection::vec(row, 1..12);
        let flags = (prop::sample::select(vec![b',', b'\t']), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>());
        (rows, flags, prop::collection::vec(any::<bool>(), 12)).prop_map(move |(rows, (separator, header, crlf, bom, quote_all), blank_after)| {
            (rows, Layout { separator, header, crlf, bom, quote_all, latin1, blank_after })
        })
    })
}

/// Plain fields: canonical and zero-padded numbers, 20-digit ones, short words, padded values.
fn plain_ids() -> impl Strategy<Value = String> {
    proptest::string::string_regex("0|[1-9][0-9]{0,20}|0[0-9]{1,3}|[a-z][a-z0-9]{0,4}| [a-z0-9]{1,3} ").unwrap()
}

/// A plain file: `::`, tab or comma separated, maybe a header, BOM, CRLF and blank lines; values
/// that parse, and in one file in four one that does not.
fn plain_file() -> impl Strategy<Value = (Vec<u8>, &'static str)> {
    let rating = proptest::string::string_regex("-?[0-9]{1,3}(\\.[0-9]{1,4})?|1e3|\\+2| 3 ").unwrap();
    let time = proptest::string::string_regex("-?[0-9]{1,19}| 5").unwrap();
    let row = (plain_ids(), plain_ids(), rating, time, any::<bool>());
    let seps = prop::sample::select(vec![("::", "dat"), ("\t", "tsv"), (",", "csv")]);
    let spoil = prop::option::weighted(0.25, (any::<prop::sample::Index>(), prop::sample::select(vec!["NaN", "x", "", "1 2"])));
    (prop::collection::vec(row, 1..30), seps, any::<bool>(), any::<bool>(), any::<bool>(), spoil).prop_map(
        |(mut rows, (sep, ext), header, crlf, bom, spoil)| {
            if let Some((at, bad)) = spoil {
                let len = rows.len();
                rows[at.index(len)].2 = bad.to_owned();
            }
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut text = if bom { "\u{feff}".to_owned() } else { String::new() };
            if header && sep != "::" {
                text.push_str(&["user", "item", "rating", "timestamp"].join(sep));
                text.push_str(eol);
            }
            for (u, i, r, t, blank) in rows {
                text.push_str(&[u, i, r, t].join(sep));
                text.push_str(if blank { "\n\n" } else { eol });
            }
            (text.into_bytes(), ext)
        },
    )
}

proptest! {
    #![proptest_config(config())]

    /// Random bytes, under any name and format, give data or an error, never a panic.
    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        text in text_like(),
        ext in prop::sample::select(vec!["csv", "tsv", "dat", "data", "txt", "parquet"]),
        format in formats(),
        has_header in prop::option::of(any::<bool>()),
    ) {
        let opts = ReadOptions { format, has_header, ..Default::default() };
        for bytes in [bytes, text] {
            if let Ok(d) = read(&file(&bytes, ext), &opts) {
                prop_assert!(!d.is_empty() && d.user.len() == d.item.len());
                prop_assert!(d.users.raw_ids().iter().chain(d.items.raw_ids()).all(|id| !id.trim().is_empty()));
            }
        }
    }

    /// Well-formed but odd CSV reads back the ids and ratings it was written from.
    #[test]
    fn odd_csv_reads_back_what_was_written((rows, layout) in rows_and_layout()) {
        let p = file(&csv_bytes(&rows, &layout), "csv");
        let format = if layout.separator == b'\t' { Format::Tsv } else { Format::Csv };
        let opts = ReadOptions { format: Some(format), has_header: Some(layout.header), ..Default::default() };
        let d = read(&p, &opts).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (mut users, mut items) = (IdMap::default(), IdMap::default());
        let user: Vec<u32> = rows.iter().map(|r| users.intern(&expected_id(&r.0, layout.latin1))).collect();
        let item: Vec<u32> = rows.iter().map(|r| items.intern(&expected_id(&r.1, layout.latin1))).collect();
        prop_assert_eq!(d.users.raw_ids(), users.raw_ids());
        prop_assert_eq!(d.items.raw_ids(), items.raw_ids());
        prop_assert_eq!((d.user, d.item), (user, item));
        prop_assert_eq!(d.rating, Some(rows.iter().map(|r| r.2).collect::<Vec<_>>()));
    }

    /// Whatever the fast path reads, the general path reads the same.
    #[test]
    fn fast_path_reads_what_the_general_path_reads((bytes, ext) in plain_file()) {
        let p = file(&bytes, ext);
        if let Ok((Some(fast), general)) = text_paths(&p, &ReadOptions::default()) {
            let general = general.map_err(|e| TestCaseError::fail(format!("fast path read a file the general path refuses: {e}")))?;
            assert_same(&fast, &general, &String::from_utf8_lossy(&bytes));
        }
    }
}
