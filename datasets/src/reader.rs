//! Interaction files in: CSV/TSV (with or without header), MovieLens `u.data` (tab) and
//! `ratings.dat` (`::`), and Parquet, read through polars; columns mapped by name or index.
//!
//! Plain delimited text (no quotes, every line with the header's number of fields, values that
//! parse) takes a fast streaming path ([`plain`]) that parses and interns in parallel chunks.
//! Anything else, and any file the fast path finds a problem in, goes through polars: it reads
//! every text column as a string (it cannot fail on values and does not report line numbers), then
//! this module parses ratings and timestamps itself so every error names the file, the line and
//! the column.

mod plain;

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use polars::prelude::{
    CsvParseOptions, CsvReadOptions, DataFrame, DataType, ParquetReader, PolarsError, SerReader,
};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::interactions::{IdMap, Interactions};

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Tsv,
    /// `u.data` (tab, no header) or `ratings.dat` (`::`, no header).
    Movielens,
    Parquet,
}

impl FromStr for Format {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Self::Csv),
            "tsv" => Ok(Self::Tsv),
            "movielens" => Ok(Self::Movielens),
            "parquet" => Ok(Self::Parquet),
            other => Err(DataError::UnknownFormat(other.to_owned())),
        }
    }
}

/// A column given by name or 0-based index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ColumnRef {
    Index(usize),
    Name(String),
}

impl FromStr for ColumnRef {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(s.parse::<usize>().map(ColumnRef::Index).unwrap_or_else(|_| ColumnRef::Name(s.to_owned())))
    }
}

/// How to read an interaction file. Every field defaults to auto-detection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadOptions {
    pub format: Option<Format>,
    pub has_header: Option<bool>,
    pub user_col: Option<ColumnRef>,
    pub item_col: Option<ColumnRef>,
    pub rating_col: Option<ColumnRef>,
    pub time_col: Option<ColumnRef>,
}

/// The unit separator replaces MovieLens `::`; it never occurs in interaction data.
pub(crate) const UNIT_SEP: u8 = 0x1f;

/// What sniffing the head of a text file found.
struct Sniffed {
    separator: u8,
    double_colon: bool,
    has_header: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

pub(crate) fn looks_numeric(s: &str) -> bool {
    let s = s.trim().trim_matches('"');
    !s.is_empty() && s.parse::<f64>().is_ok()
}

fn split_line<'a>(line: &'a str, sniffed_sep: u8, double_colon: bool) -> Vec<&'a str> {
    if double_colon { line.split("::").collect() } else { line.split(sniffed_sep as char).collect() }
}

fn sniff(path: &Path, format: Option<Format>, has_header: Option<bool>, named_columns: bool) -> Result<Sniffed> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut lines = std::io::BufReader::new(file).take(1 << 16).lines().map_while(|l| l.ok()).filter(|l| !l.trim().is_empty());
    let Some(first) = lines.next() else { return Err(DataError::Empty { path: path.to_path_buf() }) };
    let second = lines.next();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let double_colon = first.contains("::") && matches!(format, None | Some(Format::Movielens));
    let separator = match format {
        Some(Format::Tsv) => b'\t',
        Some(Format::Csv) => b',',
        _ if double_colon => UNIT_SEP,
        Some(Format::Movielens) => b'\t',
        _ if ext == "tsv" || ext == "data" || first.contains('\t') => b'\t',
        _ => b',',
    };
    let has_header = has_header.unwrap_or_else(|| {
        if format == Some(Format::Movielens) || double_colon {
            return false;
        }
        if named_columns {
            return true;
        }
        // A header when the first line names known columns and holds no number, or when some
        // field of the first line is text where the second line has a number.
        let f1 = split_line(&first, separator, false);
        let known = |a: &&str| {
            let a = a.trim().trim_matches('"').to_ascii_lowercase();
            [USER_NAMES, ITEM_NAMES, RATING_NAMES, TIME_NAMES].iter().any(|names| names.contains(&a.as_str()))
        };
        if f1.iter().any(known) && !f1.iter().any(|a| looks_numeric(a)) {
            return true;
        }
        match &second {
            Some(s) => {
                let f2 = split_line(s, separator, false);
                f1.iter().zip(&f2).any(|(a, b)| !looks_numeric(a) && looks_numeric(b))
            }
            None => f1.iter().all(|a| !looks_numeric(a)),
        }
    });
    Ok(Sniffed { separator, double_colon, has_header })
}

/// Separator and header of a text file, as configured or sniffed.
fn sniff_text(path: &Path, opts: &ReadOptions) -> Result<Sniffed> {
    let named = [&opts.user_col, &opts.item_col, &opts.rating_col, &opts.time_col]
        .iter()
        .any(|c| matches!(c, Some(ColumnRef::Name(_))));
    sniff(path, opts.format, opts.has_header, named)
}

fn polars_err(path: &Path) -> impl FnOnce(PolarsError) -> DataError + '_ {
    move |e| DataError::Parse { path: path.to_path_buf(), message: e.to_string() }
}

/// Reads a text file with `::` rewritten to a single byte, streaming in blocks.
pub(crate) fn rewrite_double_colon(path: &Path) -> Result<Vec<u8>> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut out = Vec::with_capacity(file.metadata().map(|m| m.len() as usize).unwrap_or(0));
    let mut buf = vec![0u8; 1 << 20];
    let mut pending_colon = false;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            match (pending_colon, b) {
                (true, b':') => {
                    out.push(UNIT_SEP);
                    pending_colon = false;
                }
                (true, other) => {
                    out.push(b':');
                    pending_colon = other == b':';
                    if !pending_colon {
                        out.push(other);
                    }
                }
                (false, b':') => pending_colon = true,
                (false, other) => out.push(other),
            }
        }
    }
    if pending_colon {
        out.push(b':');
    }
    Ok(out)
}

fn read_frame(path: &Path, opts: &ReadOptions) -> Result<(DataFrame, bool)> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if meta.len() == 0 {
        return Err(DataError::Empty { path: path.to_path_buf() });
    }
    if is_parquet(path, opts) {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        let df = ParquetReader::new(file).finish().map_err(polars_err(path))?;
        return Ok((df, true));
    }
    let s = sniff_text(path, opts)?;
    let options = CsvReadOptions::default()
        .with_has_header(s.has_header)
        .with_infer_schema_length(Some(0))
        .with_parse_options(CsvParseOptions::default().with_separator(s.separator));
    let df = if s.double_colon {
        let bytes = rewrite_double_colon(path)?;
        options.into_reader_with_file_handle(std::io::Cursor::new(bytes)).finish()
    } else {
        options.try_into_reader_with_file_path(Some(PathBuf::from(path))).map_err(polars_err(path))?.finish()
    }
    .map_err(polars_err(path))?;
    Ok((df, s.has_header))
}

/// Column names tried, in order, when none is given and the file has a header.
const USER_NAMES: &[&str] = &["user", "user_id", "userid", "uid", "customer", "customer_id"];
pub(crate) const ITEM_NAMES: &[&str] = &["item", "item_id", "itemid", "iid", "movie", "movieid", "movie_id", "product", "product_id"];
const RATING_NAMES: &[&str] = &["rating", "ratings", "score", "value"];
const TIME_NAMES: &[&str] = &["timestamp", "time", "ts", "date", "datetime"];

fn resolve(
    path: &Path,
    names: &[String],
    given: &Option<ColumnRef>,
    guesses: &[&str],
    fallback: Option<usize>,
    flag: &'static str,
    header: bool,
) -> Result<Option<usize>> {
    let available = || {
        if header { format!("columns {names:?}") } else { format!("{} unnamed columns (0-based indices 0..{})", names.len(), names.len()) }
    };
    match given {
        Some(ColumnRef::Index(i)) if *i < names.len() => Ok(Some(*i)),
        Some(ColumnRef::Name(n)) => match names.iter().position(|c| c == n) {
            Some(i) => Ok(Some(i)),
            None => Err(DataError::MissingColumn { path: path.into(), column: n.clone(), flag, available: available() }),
        },
        Some(ColumnRef::Index(i)) => {
            Err(DataError::MissingColumn { path: path.into(), column: i.to_string(), flag, available: available() })
        }
        None => {
            if header {
                if let Some(i) = names.iter().position(|c| guesses.contains(&c.to_ascii_lowercase().as_str())) {
                    return Ok(Some(i));
                }
            }
            Ok(fallback.filter(|&i| i < names.len()))
        }
    }
}

/// The 0-based positions of the columns to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Columns {
    user: usize,
    item: usize,
    rating: Option<usize>,
    time: Option<usize>,
}

/// Maps the configured or guessed columns onto a file's column `names`.
fn resolve_columns(path: &Path, names: &[String], header: bool, opts: &ReadOptions) -> Result<Columns> {
    let width = names.len();
    let user = resolve(path, names, &opts.user_col, USER_NAMES, Some(0), "user-col", header)?;
    let item = resolve(path, names, &opts.item_col, ITEM_NAMES, Some(1), "item-col", header)?;
    let (Some(user), Some(item)) = (user, item) else {
        return Err(DataError::Parse {
            path: path.into(),
            message: format!("found {width} column(s); expected at least a user and an item column"),
        });
    };
    // Without a header, columns 2 and 3 are rating and time (MovieLens order) unless already used.
    let unused = |i: usize| (width > i && !header && i != user && i != item).then_some(i);
    let (rating_fallback, time_fallback) = (unused(2), unused(3));
    let rating = resolve(path, names, &opts.rating_col, RATING_NAMES, rating_fallback, "rating-col", header)?;
    let time = resolve(path, names, &opts.time_col, TIME_NAMES, time_fallback, "time-col", header)?;
    Ok(Columns { user, item, rating, time })
}

fn is_parquet(path: &Path, opts: &ReadOptions) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    opts.format == Some(Format::Parquet) || (opts.format.is_none() && ext == "parquet")
}

/// Reads `path` into dense-id interactions in file order (dense ids in first-seen order).
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Interactions> {
    if let Some(data) = plain::read(path, opts)? {
        return Ok(data);
    }
    read_polars(path, opts)
}

/// The general path: polars reads every column as text, then values are parsed here so that
/// every error names the line and column.
fn read_polars(path: &Path, opts: &ReadOptions) -> Result<Interactions> {
    let (mut df, header) = read_frame(path, opts)?;
    df.rechunk_mut();
    if df.height() == 0 {
        return Err(DataError::Empty { path: path.to_path_buf() });
    }
    let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    let Columns { user, item, rating, time } = resolve_columns(path, &names, header, opts)?;
    let first_line = 1 + header as usize;
    let columns = df.columns();
    let name = |i: usize| columns[i].name().to_string();
    let as_str = |i: usize| -> Result<polars::prelude::Column> {
        columns[i].cast(&DataType::String).map_err(polars_err(path))
    };
    let (user_col, item_col) = (as_str(user)?, as_str(item)?);
    let (users_s, items_s) = (user_col.str().map_err(polars_err(path))?, item_col.str().map_err(polars_err(path))?);
    let rating_col = rating.map(as_str).transpose()?;
    let time_col = time.map(as_str).transpose()?;
    let ratings_s = rating_col.as_ref().map(|c| c.str()).transpose().map_err(polars_err(path))?;
    let times_s = time_col.as_ref().map(|c| c.str()).transpose().map_err(polars_err(path))?;

    let n = df.height();
    let mut out = Interactions {
        user: Vec::with_capacity(n),
        item: Vec::with_capacity(n),
        rating: rating.map(|_| Vec::with_capacity(n)),
        time: time.map(|_| Vec::with_capacity(n)),
        users: IdMap::default(),
        items: IdMap::default(),
    };
    let mut r_iter = ratings_s.map(|c| c.iter());
    let mut t_iter = times_s.map(|c| c.iter());
    for (row, (u, i)) in users_s.iter().zip(items_s.iter()).enumerate() {
        let r = r_iter.as_mut().map(|it| it.next().flatten());
        let t = t_iter.as_mut().map(|it| it.next().flatten());
        let line = row + first_line;
        let bad = |col: usize, value: &str, expected: &'static str| DataError::BadValue {
            path: path.into(),
            line,
            column: name(col),
            value: value.to_owned(),
            expected,
        };
        let all_missing = u.is_none() && i.is_none() && r.flatten().is_none() && t.flatten().is_none();
        if all_missing {
            continue; // a blank line
        }
        let missing = |col: usize| DataError::Line {
            path: path.into(),
            line,
            message: format!("no value in column {:?}: the row has too few fields or an empty one", name(col)),
        };
        let u = u.filter(|s| !s.trim().is_empty()).ok_or_else(|| missing(user))?;
        let i = i.filter(|s| !s.trim().is_empty()).ok_or_else(|| missing(item))?;
        if let (Some(col), Some(r)) = (rating, r) {
            let raw = r.ok_or_else(|| missing(col))?;
            let v: f32 = raw.trim().parse().map_err(|_| bad(col, raw, "a number (rating)"))?;
            if !v.is_finite() {
                return Err(bad(col, raw, "a finite number (rating)"));
            }
            out.rating.as_mut().unwrap().push(v);
        }
        if let (Some(col), Some(t)) = (time, t) {
            let raw = t.ok_or_else(|| missing(col))?;
            let v: i64 = raw.trim().parse().map_err(|_| bad(col, raw, "an integer timestamp"))?;
            out.time.as_mut().unwrap().push(v);
        }
        out.user.push(out.users.intern(u.trim()));
        out.item.push(out.items.intern(i.trim()));
    }
    if out.is_empty() {
        return Err(DataError::Empty { path: path.to_path_buf() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ncf-reader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_csv_with_header_and_names() {
        let p = write("a.csv", "userId,movieId,rating,timestamp\n7,x1,4.5,10\n9,x2,3,11\n7,x2,1,12\n");
        let d = read(&p, &ReadOptions::default()).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d.users.raw_ids(), &["7", "9"]);
        assert_eq!(d.items.raw_ids(), &["x1", "x2"]);
        assert_eq!(d.user, vec![0, 1, 0]);
        assert_eq!(d.rating, Some(vec![4.5, 3.0, 1.0]));
        assert_eq!(d.time, Some(vec![10, 11, 12]));
    }

    #[test]
    fn reads_udata_and_double_colon_without_header() {
        let p = write("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n");
        let d = read(&p, &ReadOptions::default()).unwrap();
        assert_eq!(d.users.raw_ids(), &["196", "186"]);
        assert_eq!(d.time, Some(vec![881250949, 891717742]));
        let p = write("ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n");
        let d = read(&p, &ReadOptions::default()).unwrap();
        assert_eq!(d.items.raw_ids(), &["1193", "661"]);
        assert_eq!(d.rating, Some(vec![5.0, 3.0]));
    }

    #[test]
    fn known_column_names_mark_a_header_even_over_text_ids() {
        let p = write("named.csv", "user,item\nu1,i1\nu2,i1\n");
        let d = read(&p, &ReadOptions::default()).unwrap();
        assert_eq!(d.users.raw_ids(), &["u1", "u2"]);
        let p = write("unnamed.csv", "a,b\nu1,i1\n");
        assert_eq!(read(&p, &ReadOptions::default()).unwrap().users.raw_ids(), &["a", "u1"]);
    }

    #[test]
    fn maps_columns_by_index_and_big_ids() {
        let p = write("b.tsv", "x\t18446744073709551616\tA\ny\t2\tB\n");
        let opts = ReadOptions { user_col: Some(ColumnRef::Index(2)), item_col: Some(ColumnRef::Index(1)), ..Default::default() };
        let d = read(&p, &opts).unwrap();
        assert_eq!(d.users.raw_ids(), &["A", "B"]);
        assert_eq!(d.items.raw_ids(), &["18446744073709551616", "2"]);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let missing = read(Path::new("/nonexistent/x.csv"), &ReadOptions::default()).unwrap_err().to_string();
        assert!(missing.contains("/nonexistent/x.csv"), "{missing}");

        let empty = read(&write("empty.csv", ""), &ReadOptions::default()).unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");

        let p = write("c.csv", "user,item,rating\n1,2,5\n1,3,abc\n");
        let e = read(&p, &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("\"rating\"") && e.contains("abc"), "{e}");

        let p = write("nan.csv", "user,item,rating\n1,2,NaN\n");
        let e = read(&p, &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("finite"), "{e}");

        let p = write("short.csv", "user,item,rating\n1,2,5\n4\n");
        let e = read(&p, &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("too few fields"), "{e}");

        let p = write("t.csv", "user,item,ts\n1,2,yesterday\n");
        let opts = ReadOptions { time_col: Some(ColumnRef::Name("ts".into())), ..Default::default() };
        let e = read(&p, &opts).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("timestamp"), "{e}");

        let opts = ReadOptions { user_col: Some(ColumnRef::Name("customer".into())), ..Default::default() };
        let e = read(&p, &opts).unwrap_err().to_string();
        assert!(e.contains("customer") && e.contains("--user-col") && e.contains("\"item\""), "{e}");
    }
}
