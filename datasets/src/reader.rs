//! Interaction files in: CSV/TSV (with or without header), MovieLens `u.data` (tab) and
//! `ratings.dat` (`::`), and Parquet (through polars); columns mapped by name or index.
//!
//! Plain delimited text (no quotes, every line with the first line's number of fields, values that
//! parse) takes a fast streaming path ([`plain`]) that parses and interns in parallel chunks.
//! Anything else, and any file the fast path finds a problem in, takes the general path: the `csv`
//! crate splits the records (quoted fields holding separators, quotes or line breaks; LF, CRLF or
//! CR line ends; a UTF-8 byte-order mark), and this module checks and parses every value, so every
//! error names the file, the line and the column.
//!
//! Text is UTF-8. A field that is not valid UTF-8 is read as Latin-1 (each byte one character), so
//! files from older tools keep their distinct ids instead of failing or collapsing them into
//! replacement characters. Compressed files, UTF-16 text and binary data are refused up front,
//! saying what to do.

mod plain;
#[cfg(test)]
mod proptests;

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::str::FromStr;

use polars::prelude::{Column, DataType, ParquetReader, PolarsError, SerReader};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::interactions::Interactions;

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
/// The UTF-8 byte-order mark some tools (Excel, Notepad) put before the first line.
pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";
/// The longest id accepted, in bytes: anything longer is corrupt data, not an id.
pub(crate) const MAX_ID_BYTES: usize = 4096;
/// Bytes read from the start of a file to check its kind and sniff its layout.
const HEAD_BYTES: u64 = 1 << 16;
/// Values quoted in messages are cut to this many characters.
const SHOWN_CHARS: usize = 60;

/// What sniffing the head of a text file found.
pub(crate) struct Sniffed {
    pub(crate) separator: u8,
    pub(crate) double_colon: bool,
    pub(crate) has_header: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |error| DataError::Io { path: path.to_path_buf(), error }
}

/// A problem with the file as a whole.
fn file_err(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Parse { path: path.to_path_buf(), message: message.into() }
}

pub(crate) fn looks_numeric(s: &str) -> bool {
    let s = s.trim().trim_matches('"');
    !s.is_empty() && s.parse::<f64>().is_ok()
}

/// A field as text: UTF-8 when it is valid UTF-8, else Latin-1 (each byte the character of the
/// same code point), so no byte is lost to a replacement character; the same text in either
/// encoding is the same id.
pub(crate) fn decode(field: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(field) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(field.iter().map(|&b| b as char).collect()),
    }
}

/// Whether `s` holds a control character other than tab, line feed and carriage return (which
/// quoted CSV fields may hold): a sign of binary data.
pub(crate) fn has_control(s: &str) -> bool {
    s.bytes().any(|b| b < b' ' && !matches!(b, b'\t' | b'\n' | b'\r'))
}

/// `value` cut to [`SHOWN_CHARS`] characters for a message.
fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

fn split_line(line: &str, sniffed_sep: u8, double_colon: bool) -> Vec<&str> {
    if double_colon { line.split("::").collect() } else { line.split(sniffed_sep as char).collect() }
}

/// The first [`HEAD_BYTES`] of `path`, refusing what is not a non-empty regular file.
fn head(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    if meta.is_dir() {
        return Err(file_err(path, "is a directory; expected an interaction file"));
    }
    if !meta.is_file() {
        return Err(file_err(path, "is not a regular file (a pipe, socket or device); expected an interaction file"));
    }
    if meta.len() == 0 {
        return Err(DataError::Empty { path: path.to_path_buf() });
    }
    let mut head = Vec::new();
    file.take(HEAD_BYTES).read_to_end(&mut head).map_err(io_err(path))?;
    Ok(head)
}

/// What a file that starts with `head` is when it is not text, with what to do about it.
fn not_text(head: &[u8]) -> Option<String> {
    let signatures: [(&[u8], &str); 7] = [
        (b"\x1f\x8b", "gzip-compressed data; decompress it first (gunzip)"),
        (b"PK\x03\x04", "a zip archive; extract the interaction file first (unzip)"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed data; decompress it first (zstd -d)"),
        (b"\xfd7zXZ\x00", "xz-compressed data; decompress it first (xz -d)"),
        (b"\xff\xfe", "UTF-16 text; convert it to UTF-8 first (iconv -f UTF-16 -t UTF-8)"),
        (b"\xfe\xff", "UTF-16 text; convert it to UTF-8 first (iconv -f UTF-16 -t UTF-8)"),
        (b"PAR1", "Parquet data; read it with --format parquet"),
    ];
    if let Some((_, what)) = signatures.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Some((*what).to_owned());
    }
    if head.len() >= 10 && head.starts_with(b"BZh") && head[3].is_ascii_digit() && &head[4..10] == b"1AY&SY" {
        return Some("bzip2-compressed data; decompress it first (bunzip2)".to_owned());
    }
    let nul = head.iter().position(|&b| b == 0)?;
    Some(format!("binary data (a NUL byte at offset {nul}); expected delimited text (CSV, TSV, MovieLens) or Parquet"))
}

/// Separator and header of a text file that starts with `head`, as configured or sniffed.
fn sniff(path: &Path, head: &[u8], opts: &ReadOptions) -> Result<Sniffed> {
    let text = head.strip_prefix(BOM).unwrap_or(head);
    let mut lines = text.split(|&b| b == b'\n' || b == b'\r').map(decode).filter(|l| !l.trim().is_empty());
    let Some(first) = lines.next() else { return Err(DataError::Empty { path: path.to_path_buf() }) };
    let second = lines.next();
    let format = opts.format;
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
    let named_columns = [&opts.user_col, &opts.item_col, &opts.rating_col, &opts.time_col].iter().any(|c| matches!(c, Some(ColumnRef::Name(_))));
    let has_header = opts.has_header.unwrap_or_else(|| {
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

fn polars_err(path: &Path) -> impl FnOnce(PolarsError) -> DataError + '_ {
    move |e| file_err(path, e.to_string())
}

/// Text with every `::` replaced by [`UNIT_SEP`] (MovieLens `ratings.dat`), read as a stream.
struct DoubleColon<R> {
    inner: R,
    block: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    pending_colon: bool,
}

impl<R: Read> DoubleColon<R> {
    fn new(inner: R) -> Self {
        Self { inner, block: vec![0; 1 << 16], out: Vec::new(), pos: 0, pending_colon: false }
    }

    /// Rewrites the next block of input into `out`; `false` at the end of the input.
    fn refill(&mut self) -> std::io::Result<bool> {
        self.out.clear();
        self.pos = 0;
        let n = self.inner.read(&mut self.block)?;
        if n == 0 {
            if std::mem::take(&mut self.pending_colon) {
                self.out.push(b':');
            }
            return Ok(!self.out.is_empty());
        }
        for &b in &self.block[..n] {
            match (self.pending_colon, b) {
                (true, b':') => {
                    self.out.push(UNIT_SEP);
                    self.pending_colon = false;
                }
                (true, other) => {
                    self.out.push(b':');
                    self.pending_colon = other == b':';
                    if !self.pending_colon {
                        self.out.push(other);
                    }
                }
                (false, b':') => self.pending_colon = true,
                (false, other) => self.out.push(other),
            }
        }
        Ok(true)
    }
}

impl<R: Read> Read for DoubleColon<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.out.len() {
            if !self.refill()? {
                return Ok(0);
            }
        }
        let n = (self.out.len() - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads a text file with `::` rewritten to a single byte.
pub(crate) fn rewrite_double_colon(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut out = Vec::with_capacity(file.metadata().map(|m| m.len() as usize).unwrap_or(0));
    DoubleColon::new(file).read_to_end(&mut out).map_err(io_err(path))?;
    Ok(out)
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
        Some(ColumnRef::Index(i)) => Err(DataError::MissingColumn { path: path.into(), column: i.to_string(), flag, available: available() }),
        None => {
            if header && let Some(i) = names.iter().position(|c| guesses.contains(&c.to_ascii_lowercase().as_str())) {
                return Ok(Some(i));
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
        return Err(file_err(path, format!("found {width} column(s); expected at least a user and an item column")));
    };
    // Without a header, columns 2 and 3 are rating and time (MovieLens order) unless already used.
    let unused = |i: usize| (width > i && !header && i != user && i != item).then_some(i);
    let (rating_fallback, time_fallback) = (unused(2), unused(3));
    let rating = resolve(path, names, &opts.rating_col, RATING_NAMES, rating_fallback, "rating-col", header)?;
    let time = resolve(path, names, &opts.time_col, TIME_NAMES, time_fallback, "time-col", header)?;
    Ok(Columns { user, item, rating, time })
}

/// Parquet when `--format parquet`, or without a format when the name ends in `.parquet` or the
/// contents start with Parquet's signature.
fn is_parquet(path: &Path, opts: &ReadOptions, head: &[u8]) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    opts.format == Some(Format::Parquet) || (opts.format.is_none() && (ext == "parquet" || head.starts_with(b"PAR1")))
}

/// Reads `path` into dense-id interactions in file order (dense ids in first-seen order). A
/// directory or a glob (`DIR/part-*.parquet`) reads its part files in name order as one table.
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Interactions> {
    if crate::parts::is_parts(path) {
        return crate::parts::read(path, opts, read_file);
    }
    read_file(path, opts)
}

/// [`read`] of one file.
fn read_file(path: &Path, opts: &ReadOptions) -> Result<Interactions> {
    let head = head(path)?;
    if is_parquet(path, opts, &head) {
        return read_parquet(path, opts);
    }
    if let Some(what) = not_text(&head) {
        return Err(file_err(path, what));
    }
    let sniffed = sniff(path, &head, opts)?;
    if let Some(data) = plain::read(path, opts, &sniffed)? {
        return Ok(data);
    }
    read_text(path, opts, &sniffed)
}

/// Where a value sits, for messages: a line of a text file or a row of a Parquet file (1-based).
#[derive(Clone, Copy)]
enum At<'a> {
    /// A line, counted only when a message needs it.
    Line(&'a dyn Fn() -> usize),
    Row(usize),
}

impl At<'_> {
    /// A problem with this line or row.
    fn problem(self, path: &Path, message: String) -> DataError {
        match self {
            At::Line(line) => DataError::Line { path: path.into(), line: line(), message },
            At::Row(row) => file_err(path, format!("row {row}: {message}")),
        }
    }

    /// A value of `column` here that is not what was `expected`.
    fn bad_value(self, path: &Path, column: &str, value: &str, expected: &'static str) -> DataError {
        let value = shown(value);
        match self {
            At::Line(line) => DataError::BadValue { path: path.into(), line: line(), column: column.to_owned(), value, expected },
            At::Row(row) => file_err(path, format!("row {row}, column {column:?}: {value:?} is not {expected}")),
        }
    }
}

/// Interactions built row by row, each value checked, both general readers' messages in one place.
struct Rows<'a> {
    path: &'a Path,
    names: Vec<String>,
    columns: Columns,
    out: Interactions,
}

impl<'a> Rows<'a> {
    fn new(path: &'a Path, names: Vec<String>, columns: Columns) -> Self {
        let out = Interactions { rating: columns.rating.map(|_| Vec::new()), time: columns.time.map(|_| Vec::new()), ..Default::default() };
        Self { path, names, columns, out }
    }

    /// The trimmed value of `column`, refusing a missing or empty one.
    fn value<'v>(&self, at: At, column: usize, value: Option<&'v str>) -> Result<&'v str> {
        match value.map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(at.problem(self.path, format!("no value in column {:?}", self.names[column]))),
        }
    }

    /// An id of `column`: not empty, not absurdly long, no control characters.
    fn id<'v>(&self, at: At, column: usize, value: Option<&'v str>) -> Result<&'v str> {
        let id = self.value(at, column, value)?;
        if id.len() > MAX_ID_BYTES {
            let message = format!("column {:?}: an id of {} bytes; ids are at most {MAX_ID_BYTES} bytes (an unclosed quote?)", self.names[column], id.len());
            return Err(at.problem(self.path, message));
        }
        if has_control(id) {
            return Err(at.bad_value(self.path, &self.names[column], id, "an id without control characters (binary data?)"));
        }
        Ok(id)
    }

    /// A rating of `column`: any finite number (negative ones are explicit feedback too).
    fn rating(&self, at: At, column: usize, value: f32, raw: &str) -> Result<f32> {
        if !value.is_finite() {
            return Err(at.bad_value(self.path, &self.names[column], raw, "a finite number (rating)"));
        }
        Ok(value)
    }

    /// Appends one row; `rating` and `time` are `Some` exactly when those columns are read.
    fn push(&mut self, user: &str, item: &str, rating: Option<f32>, time: Option<i64>) {
        if let (Some(out), Some(r)) = (self.out.rating.as_mut(), rating) {
            out.push(r);
        }
        if let (Some(out), Some(t)) = (self.out.time.as_mut(), time) {
            out.push(t);
        }
        self.out.user.push(self.out.users.intern(user));
        self.out.item.push(self.out.items.intern(item));
    }

    /// Parses one text record, found `at` a line.
    fn text_record(&mut self, record: &csv::ByteRecord, at: At, header: bool) -> Result<()> {
        if record.len() != self.names.len() {
            let first = if header { "the header" } else { "the first line" };
            let n = record.len();
            let message = format!("{n} field{} where {first} has {}", if n == 1 { "" } else { "s" }, self.names.len());
            return Err(at.problem(self.path, message));
        }
        let field = |c: usize| decode(&record[c]);
        let Columns { user, item, rating, time } = self.columns;
        let (u, i) = (field(user), field(item));
        let (u, i) = (self.id(at, user, Some(u.as_ref()))?, self.id(at, item, Some(i.as_ref()))?);
        let r = match rating {
            Some(c) => {
                let raw = field(c);
                let raw = self.value(at, c, Some(raw.as_ref()))?;
                let v = raw.parse().map_err(|_| at.bad_value(self.path, &self.names[c], raw, "a number (rating)"))?;
                Some(self.rating(at, c, v, raw)?)
            }
            None => None,
        };
        let t = match time {
            Some(c) => {
                let raw = field(c);
                let raw = self.value(at, c, Some(raw.as_ref()))?;
                Some(raw.parse().map_err(|_| at.bad_value(self.path, &self.names[c], raw, "an integer timestamp"))?)
            }
            None => None,
        };
        self.push(u, i, r, t);
        Ok(())
    }

    /// The interactions read, refusing a file without any.
    fn finish(self, header: bool) -> Result<Interactions> {
        if self.out.is_empty() {
            return Err(if header {
                file_err(self.path, format!("a header ({}) but no interactions", self.names.join(", ")))
            } else {
                DataError::Empty { path: self.path.to_path_buf() }
            });
        }
        Ok(self.out)
    }
}

/// Whether a record holds nothing but blanks (a blank line, or separators alone).
fn is_blank(record: &csv::ByteRecord) -> bool {
    record.iter().all(|f| f.trim_ascii().is_empty())
}

/// The text the general path parses: the file with `::` rewritten when it uses it, and any
/// byte-order mark skipped.
fn text_source(path: &Path, s: &Sniffed) -> Result<BufReader<Box<dyn Read>>> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let source: Box<dyn Read> = if s.double_colon { Box::new(DoubleColon::new(file)) } else { Box::new(file) };
    let mut input = BufReader::with_capacity(1 << 16, source);
    if input.fill_buf().map_err(io_err(path))?.starts_with(BOM) {
        input.consume(BOM.len());
    }
    Ok(input)
}

/// The 1-based line of the record that `csv` started reading at `byte` of [`text_source`]: it
/// starts after the blank lines there, which `csv` skips. Counted afresh, as only messages need it
/// (0 if the file cannot be read again).
fn line_at(path: &Path, s: &Sniffed, byte: u64) -> usize {
    let count = || -> Result<usize> {
        let mut input = text_source(path, s)?;
        let (mut line, mut left) = (1, byte);
        loop {
            let buf = input.fill_buf().map_err(io_err(path))?;
            // Up to `byte`, then past the blank lines that follow it.
            let n = match left {
                0 => buf.iter().take_while(|&&b| b == b'\n' || b == b'\r').count(),
                _ => buf.len().min(left as usize),
            };
            line += buf[..n].iter().filter(|&&b| b == b'\n').count();
            let done = n == 0 || (left == 0 && n < buf.len());
            left -= n.min(left as usize) as u64;
            input.consume(n);
            if done {
                return Ok(line);
            }
        }
    };
    count().unwrap_or(0)
}

/// The general path for text: records split by the `csv` crate, every value checked here.
fn read_text(path: &Path, opts: &ReadOptions, s: &Sniffed) -> Result<Interactions> {
    let input = text_source(path, s)?;
    let mut records = csv::ReaderBuilder::new().has_headers(false).flexible(true).delimiter(s.separator).from_reader(input);
    let mut record = csv::ByteRecord::new();
    // The next record that is not blank, with the byte where `csv` started reading it; `None` at
    // the end.
    let mut next = |record: &mut csv::ByteRecord| -> Result<Option<u64>> {
        loop {
            let more = records.read_byte_record(record).map_err(|e| file_err(path, e.to_string()))?;
            if !more {
                return Ok(None);
            }
            if !is_blank(record) {
                return Ok(Some(record.position().map_or(0, csv::Position::byte)));
            }
        }
    };
    let Some(first) = next(&mut record)? else { return Err(DataError::Empty { path: path.to_path_buf() }) };
    let names: Vec<String> =
        if s.has_header { record.iter().map(|f| decode(f).trim().to_owned()).collect() } else { (1..=record.len()).map(|k| format!("column_{k}")).collect() };
    let columns = resolve_columns(path, &names, s.has_header, opts)?;
    let mut rows = Rows::new(path, names, columns);
    if !s.has_header {
        rows.text_record(&record, At::Line(&|| line_at(path, s, first)), false)?;
    }
    while let Some(byte) = next(&mut record)? {
        rows.text_record(&record, At::Line(&|| line_at(path, s, byte)), s.has_header)?;
    }
    rows.finish(s.has_header)
}

/// `column` cast to `to` when `accepts` its type, else an error naming what it holds.
fn typed(path: &Path, column: &Column, accepts: fn(&DataType) -> bool, expected: &str, to: DataType) -> Result<Column> {
    let dtype = column.dtype();
    if !accepts(dtype) {
        return Err(file_err(path, format!("column {:?} holds {dtype} values; expected {expected}", column.name().as_str())));
    }
    column.cast(&to).map_err(polars_err(path))
}

/// Parquet: typed columns (ids integers or strings, ratings numbers, times integers or
/// dates), every value checked like text values; messages name the row.
fn read_parquet(path: &Path, opts: &ReadOptions) -> Result<Interactions> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut df = ParquetReader::new(file).finish().map_err(polars_err(path))?;
    df.rechunk_mut();
    let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    let columns = resolve_columns(path, &names, true, opts)?;
    let cols = df.columns();
    let ids = |c: usize| typed(path, &cols[c], |d| d.is_integer() || *d == DataType::String, "integer or string ids", DataType::String);
    let (user_col, item_col) = (ids(columns.user)?, ids(columns.item)?);
    let rating_col = columns.rating.map(|c| typed(path, &cols[c], DataType::is_primitive_numeric, "numbers (ratings)", DataType::Float32)).transpose()?;
    let times = |d: &DataType| d.is_integer() || matches!(d, DataType::Date | DataType::Datetime(..));
    let time_col = columns.time.map(|c| typed(path, &cols[c], times, "integer or date timestamps", DataType::Int64)).transpose()?;
    let users = user_col.str().map_err(polars_err(path))?;
    let items = item_col.str().map_err(polars_err(path))?;
    let ratings = rating_col.as_ref().map(|c| c.f32()).transpose().map_err(polars_err(path))?;
    let times = time_col.as_ref().map(|c| c.i64()).transpose().map_err(polars_err(path))?;
    let mut rows = Rows::new(path, names, columns);
    let mut r_iter = ratings.map(|c| c.iter());
    let mut t_iter = times.map(|c| c.iter());
    for (row, (u, i)) in users.iter().zip(items.iter()).enumerate() {
        let at = At::Row(row + 1);
        let (u, i) = (rows.id(at, columns.user, u)?, rows.id(at, columns.item, i)?);
        let missing = |c: usize| at.problem(path, format!("no value in column {:?}", rows.names[c]));
        let r = match (columns.rating, r_iter.as_mut().and_then(Iterator::next)) {
            (Some(c), Some(v)) => {
                let v = v.ok_or_else(|| missing(c))?;
                Some(rows.rating(at, c, v, &v.to_string())?)
            }
            _ => None,
        };
        let t = match (columns.time, t_iter.as_mut().and_then(Iterator::next)) {
            (Some(c), Some(v)) => Some(v.ok_or_else(|| missing(c))?),
            _ => None,
        };
        rows.push(u, i, r, t);
    }
    if rows.out.is_empty() {
        return Err(file_err(path, "no rows"));
    }
    Ok(rows.out)
}

/// The fast path's result (`None` when it declines) and the general path's, for tests
/// comparing them.
#[cfg(test)]
fn text_paths(path: &Path, opts: &ReadOptions) -> Result<(Option<Interactions>, Result<Interactions>)> {
    let sniffed = sniff(path, &head(path)?, opts)?;
    Ok((plain::read(path, opts, &sniffed)?, read_text(path, opts, &sniffed)))
}

/// Asserts that two readings hold the same rows and ids.
#[cfg(test)]
fn assert_same(a: &Interactions, b: &Interactions, what: &str) {
    assert_eq!((&a.user, &a.item, &a.rating, &a.time), (&b.user, &b.item, &b.rating, &b.time), "{what}");
    assert_eq!((&a.users, &a.items), (&b.users, &b.items), "{what}");
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
        assert!(e.contains("line 3: 1 field where the header has 3"), "{e}");

        let p = write("long.csv", "user,item,rating\n1,2,5\n\n1,2,3,4\n");
        let e = read(&p, &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("line 4: 4 fields where the header has 3"), "{e}");

        let p = write("empty-id.csv", "user,item\n1,2\n\"\",3\n");
        let e = read(&p, &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("line 3: no value in column \"user\""), "{e}");

        let p = write("t.csv", "user,item,ts\n1,2,yesterday\n");
        let opts = ReadOptions { time_col: Some(ColumnRef::Name("ts".into())), ..Default::default() };
        let e = read(&p, &opts).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("timestamp"), "{e}");

        let opts = ReadOptions { user_col: Some(ColumnRef::Name("customer".into())), ..Default::default() };
        let e = read(&p, &opts).unwrap_err().to_string();
        assert!(e.contains("customer") && e.contains("--user-col") && e.contains("\"item\""), "{e}");
    }

    /// Writes raw bytes (for files that are not UTF-8).
    fn write_bytes(name: &str, bytes: &[u8]) -> PathBuf {
        let p = write(name, "");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn quoted_fields_bom_crlf_leading_zeros_and_long_numbers_read_faithfully() {
        let text = "\u{feff}user,item,rating\r\n\"a,b\",\"say \"\"hi\"\"\",1\r\n\"tab\there\",\"two\r\nlines\",-1\r\n\
                    007,18446744073709551616123,2.5\r\n7,00000000000000000001,3\r\n";
        let d = read(&write("odd.csv", text), &ReadOptions::default()).unwrap();
        assert_eq!(d.users.raw_ids(), &["a,b", "tab\there", "007", "7"]);
        assert_eq!(d.items.raw_ids(), &["say \"hi\"", "two\r\nlines", "18446744073709551616123", "00000000000000000001"]);
        assert_eq!(d.rating, Some(vec![1.0, -1.0, 2.5, 3.0]));
        // Line numbers count the lines a quoted line break spans.
        let e = read(&write("odd-bad.csv", &format!("{text}8,x,many\r\n")), &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("line 7, column \"rating\": \"many\""), "{e}");
        // Old Mac line ends (CR alone).
        let d = read(&write("cr.csv", "user,item\r1,2\r3,4\r"), &ReadOptions::default()).unwrap();
        assert_eq!(d.users.raw_ids(), &["1", "3"]);
    }

    #[test]
    fn fields_that_are_not_utf8_read_as_latin1() {
        // Polars 0.55 refused such a file outright ("invalid utf-8 sequence", no line).
        let p = write_bytes("latin1.tsv", b"user\titem\ncaf\xe9\t1\nCAF\xc9\t2\ncaf\xc3\xa9\t3\n");
        let d = read(&p, &ReadOptions::default()).unwrap();
        // A field in UTF-8 stays UTF-8: the same text in either encoding is the same id.
        assert_eq!(d.users.raw_ids(), &["café", "CAFÉ"]);
        assert_eq!(d.user, vec![0, 1, 0]);
        let e = read(&write_bytes("latin1-bad.csv", b"user,item,rating\n\xe9,1,\xff\n"), &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("line 2, column \"rating\": \"\u{ff}\""), "{e}");
    }

    #[test]
    fn refuses_what_is_not_an_interaction_file() {
        let opts = ReadOptions::default();
        let err = |p: PathBuf| read(&p, &opts).unwrap_err().to_string();
        let e = err(write_bytes("x.csv.gz", b"\x1f\x8b\x08\x00rest"));
        assert!(e.contains("x.csv.gz") && e.contains("gzip"), "{e}");
        let e = err(write_bytes("nul.csv", b"user,item\n1,\x002\n"));
        assert!(e.contains("binary data") && e.contains("offset 12"), "{e}");
        let e = err(write_bytes("utf16.csv", b"\xff\xfeu\x00s\x00"));
        assert!(e.contains("UTF-16"), "{e}");
        let e = err(write_bytes("control.csv", b"user,item\n1,\x01\x02\n"));
        assert!(e.contains("line 2, column \"item\"") && e.contains("control characters"), "{e}");
        let e = err(write("header.csv", "user,item,rating\n\n"));
        assert!(e.contains("a header (user, item, rating) but no interactions"), "{e}");
        let e = err(write("blank.csv", " \n\n"));
        assert!(e.contains("empty"), "{e}");
        let e = err(write("long-id.csv", &format!("user,item\n1,{}\n", "x".repeat(1 << 20))));
        assert!(e.contains("line 2: column \"item\": an id of 1048576 bytes"), "{e}");
        let dir = write("a-file", "").parent().unwrap().join("a-dir.csv");
        std::fs::create_dir_all(&dir).unwrap();
        // A directory is read as its part files: an empty one has none.
        let e = err(dir);
        assert!(e.contains("a-dir.csv: the directory holds no part files"), "{e}");
    }

    #[test]
    fn parquet_columns_are_typed_and_checked() {
        use crate::table::{Kind, ParquetSink, Values};
        let parquet = |name: &str, columns: &[(&str, Kind)], values: &[Values]| {
            let p = write(name, "");
            let cols: Vec<(String, Kind)> = columns.iter().map(|(n, k)| (n.to_string(), *k)).collect();
            let mut sink = ParquetSink::new(std::fs::File::create(&p).unwrap(), &p, &cols).unwrap();
            sink.write(values).unwrap();
            sink.finish().unwrap();
            p
        };
        let ids = |v: &[&str]| Values::Str(v.iter().map(|s| Some(s.to_string())).collect());
        let p = parquet(
            "ok.parquet",
            &[("user", Kind::Str), ("item", Kind::U32), ("rating", Kind::F32)],
            &[ids(&["a", "b"]), Values::U32(vec![7, 8]), Values::F32(vec![4.5, -1.0])],
        );
        let d = read(&p, &ReadOptions::default()).unwrap();
        assert_eq!(
            (d.users.raw_ids(), d.items.raw_ids(), d.rating),
            (&["a".to_owned(), "b".to_owned()][..], &["7".to_owned(), "8".to_owned()][..], Some(vec![4.5, -1.0]))
        );
        // Parquet is recognised by its signature whatever the name.
        let renamed = p.with_extension("bin");
        std::fs::copy(&p, &renamed).unwrap();
        assert_eq!(read(&renamed, &ReadOptions::default()).unwrap().len(), 2);

        let p = parquet("float-ids.parquet", &[("user", Kind::F32), ("item", Kind::U32)], &[Values::F32(vec![1.0]), Values::U32(vec![7])]);
        let e = read(&p, &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("float-ids.parquet") && e.contains("column \"user\" holds f32 values; expected integer or string ids"), "{e}");
        let p = parquet(
            "str-ratings.parquet",
            &[("user", Kind::U32), ("item", Kind::U32), ("rating", Kind::Str)],
            &[Values::U32(vec![1]), Values::U32(vec![7]), ids(&["5"])],
        );
        let e = read(&p, &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("column \"rating\" holds str values; expected numbers (ratings)"), "{e}");
        let p = parquet(
            "nan.parquet",
            &[("user", Kind::U32), ("item", Kind::U32), ("rating", Kind::F32)],
            &[Values::U32(vec![1, 2]), Values::U32(vec![7, 7]), Values::F32(vec![1.0, f32::NAN])],
        );
        let e = read(&p, &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("row 2, column \"rating\": \"NaN\" is not a finite number"), "{e}");
        let p = parquet("null.parquet", &[("user", Kind::Str), ("item", Kind::U32)], &[Values::Str(vec![Some("a".into()), None]), Values::U32(vec![7, 7])]);
        let e = read(&p, &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("row 2: no value in column \"user\""), "{e}");
    }
}
