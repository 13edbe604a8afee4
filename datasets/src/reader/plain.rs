//! The reader's fast path for plain delimited text: the file is cut at line boundaries into one
//! chunk per core, each chunk is streamed in blocks, split into fields, parsed and interned on its
//! own thread, and the chunks' id maps are merged in file order (so dense ids keep first-seen
//! order). Ids in canonical decimal form are keyed as integers, all others as text, so raw ids
//! are kept exactly as written.
//!
//! It declines (returns `None`) on anything it does not handle exactly like the general path:
//! quotes, a carriage return inside a line, a line with another number of fields than the first,
//! an empty, overlong or control-character id, a value that does not parse, invalid UTF-8 (which
//! the general path reads as Latin-1). The general path then reads the file and reports any
//! problem with its line and column.

use std::io::{BufRead, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

use super::{BOM, Columns, MAX_ID_BYTES, Sniffed, has_control, io_err, resolve_columns};
use crate::error::Result;
use crate::fast_hash::FxHashMap;
use crate::interactions::{IdMap, Interactions};
use crate::reader::ReadOptions;

/// Bytes read per block.
const BLOCK: usize = 1 << 22;
/// Files smaller than this are read by one thread.
const MIN_PARALLEL_BYTES: u64 = 1 << 24;

#[derive(Debug, Clone, Copy)]
enum Sep {
    Byte(u8),
    /// MovieLens `ratings.dat`: `::`.
    DoubleColon,
}

/// Where each needed field sits in a line.
struct Layout {
    sep: Sep,
    width: usize,
    /// Per column index: which slot (0 user, 1 item, 2 rating, 3 time) it fills, if any.
    slot_of: Vec<Option<usize>>,
    rating: bool,
    time: bool,
}

/// Reads the text file `path` (laid out as `sniffed`) on the fast path, or `None` when the file
/// needs the general path.
pub(super) fn read(path: &Path, opts: &ReadOptions, sniffed: &Sniffed) -> Result<Option<Interactions>> {
    let len = std::fs::metadata(path).map_err(io_err(path))?.len();
    let sep = if sniffed.double_colon { Sep::DoubleColon } else { Sep::Byte(sniffed.separator) };
    // The first line gives the width and, with a header, the column names.
    let mut first = Vec::new();
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    std::io::BufReader::new(file).read_until(b'\n', &mut first).map_err(io_err(path))?;
    let first_len = first.len() as u64;
    let bom = if first.starts_with(BOM) { BOM.len() } else { 0 };
    let first = trim_eol(&first[bom..]);
    if first.is_empty() || first.contains(&b'"') || first.contains(&b'\r') {
        return Ok(None);
    }
    let Ok(first) = std::str::from_utf8(first) else { return Ok(None) };
    let fields = split_fields(first.as_bytes(), sep);
    let names: Vec<String> = if sniffed.has_header {
        let names: Vec<String> = fields.iter().map(|f| String::from_utf8_lossy(f).trim().to_owned()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != names.len() || names.iter().any(|n| n.is_empty()) {
            return Ok(None); // polars renames duplicates; leave that to it
        }
        names
    } else {
        (1..=fields.len()).map(|k| format!("column_{k}")).collect()
    };
    let Columns { user, item, rating, time } = resolve_columns(path, &names, sniffed.has_header, opts)?;
    let mut slot_of = vec![None; names.len()];
    slot_of[user] = Some(0);
    slot_of[item] = Some(1);
    if let Some(r) = rating {
        slot_of[r] = Some(2);
    }
    if let Some(t) = time {
        slot_of[t] = Some(3);
    }
    let layout = Layout { sep, width: names.len(), slot_of, rating: rating.is_some(), time: time.is_some() };

    let start = if sniffed.has_header { first_len } else { bom as u64 };
    let threads = if len < MIN_PARALLEL_BYTES { 1 } else { rayon::current_num_threads().min(16) };
    let bounds = line_bounds(path, start, len, threads)?;
    let chunks: Vec<Result<Option<Chunk>>> = std::thread::scope(|s| {
        let handles: Vec<_> = bounds.windows(2).map(|w| s.spawn(|| parse_range(path, w[0]..w[1], &layout))).collect();
        handles.into_iter().map(|h| h.join().expect("reader thread")).collect()
    });
    let mut parsed = Vec::with_capacity(chunks.len());
    for c in chunks {
        match c? {
            Some(c) => parsed.push(c),
            None => return Ok(None),
        }
    }
    let data = merge(parsed, &layout);
    Ok((!data.is_empty()).then_some(data))
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn split_fields(line: &[u8], sep: Sep) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < line.len() {
        let step = match sep {
            Sep::Byte(s) if line[i] == s => 1,
            Sep::DoubleColon if line[i] == b':' && line.get(i + 1) == Some(&b':') => 2,
            _ => 0,
        };
        if step > 0 {
            out.push(&line[start..i]);
            i += step;
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&line[start..]);
    out
}

/// `threads + 1` offsets from `start` to `len`, each (but the ends) just after a newline.
fn line_bounds(path: &Path, start: u64, len: u64, threads: usize) -> Result<Vec<u64>> {
    let mut bounds = vec![start];
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    for k in 1..threads as u64 {
        let at = start + (len - start) * k / threads as u64;
        if at <= *bounds.last().unwrap() {
            continue;
        }
        file.seek(SeekFrom::Start(at - 1)).map_err(io_err(path))?;
        let mut skipped = Vec::new();
        let n = std::io::BufReader::new(&mut file).read_until(b'\n', &mut skipped).map_err(io_err(path))?;
        let next = at - 1 + n as u64;
        if next < len && next > *bounds.last().unwrap() {
            bounds.push(next);
        }
    }
    bounds.push(len);
    Ok(bounds)
}

/// Raw ids in first-seen order. Canonical decimal ids (no sign, no leading zero, at most 19
/// digits) map one-to-one onto integers, so keying them as integers cannot merge distinct ids.
/// Small integer ids (the common case: MovieLens, the NCF reference files) index a table directly:
/// one memory access per lookup instead of a hash probe. Larger ones go through the hash map.
const DIRECT_LIMIT: u64 = 1 << 22;
const ABSENT: u32 = u32::MAX;

#[derive(Default)]
struct Ids {
    direct: Vec<u32>,
    ints: FxHashMap<u64, u32>,
    text: FxHashMap<Box<str>, u32>,
    raw: Vec<String>,
}

fn int_key(s: &str) -> Option<u64> {
    int_key_bytes(s.as_bytes())
}

#[inline]
fn int_key_bytes(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    let mut v = 0u64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u64;
    }
    Some(v)
}

impl Ids {
    /// The dense id of a raw field: canonical decimals without UTF-8 checks or trimming (they
    /// have neither), anything else trimmed; `None` for an id the general path must judge.
    #[inline]
    fn intern_field(&mut self, field: &[u8]) -> Option<u32> {
        match int_key_bytes(field) {
            Some(k) if k < DIRECT_LIMIT => {
                let k = k as usize;
                match self.direct.get(k) {
                    Some(&id) if id != ABSENT => Some(id),
                    _ => Some(self.intern_int(field)),
                }
            }
            _ => Some(self.intern(id(field)?)),
        }
    }

    #[cold]
    fn intern_int(&mut self, field: &[u8]) -> u32 {
        self.intern(std::str::from_utf8(field).expect("ASCII digits"))
    }

    #[inline]
    fn intern(&mut self, s: &str) -> u32 {
        let next = self.raw.len() as u32;
        match int_key(s) {
            Some(k) if k < DIRECT_LIMIT => {
                let k = k as usize;
                if k >= self.direct.len() {
                    self.direct.resize((k + 1).next_power_of_two(), ABSENT);
                }
                if self.direct[k] == ABSENT {
                    self.direct[k] = next;
                    self.raw.push(s.to_owned());
                }
                self.direct[k]
            }
            Some(k) => *self.ints.entry(k).or_insert_with(|| {
                self.raw.push(s.to_owned());
                next
            }),
            None => {
                if let Some(&id) = self.text.get(s) {
                    return id;
                }
                self.text.insert(s.into(), next);
                self.raw.push(s.to_owned());
                next
            }
        }
    }
}

/// One chunk's rows with chunk-local dense ids.
#[derive(Default)]
struct Chunk {
    user: Vec<u32>,
    item: Vec<u32>,
    rating: Vec<f32>,
    time: Vec<i64>,
    users: Ids,
    items: Ids,
}

/// A trimmed, non-empty UTF-8 id of at most [`MAX_ID_BYTES`] without control characters.
#[inline]
fn id(field: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(field).ok()?.trim();
    (!s.is_empty() && s.len() <= MAX_ID_BYTES && !has_control(s)).then_some(s)
}

#[inline]
fn number<T: std::str::FromStr>(field: &[u8]) -> Option<T> {
    std::str::from_utf8(field).ok()?.trim().parse().ok()
}

/// An integer of at most 18 plain digits, else the general parse (sign, spaces).
#[inline]
fn timestamp(field: &[u8]) -> Option<i64> {
    if !field.is_empty() && field.len() <= 18 && field.iter().all(u8::is_ascii_digit) {
        return Some(field.iter().fold(0i64, |v, &c| v * 10 + (c - b'0') as i64));
    }
    number(field)
}

/// `digits[.digits]` with at most 7 digits in all: the mantissa and the power of ten are exact
/// in f32, and one IEEE division rounds correctly, so this equals `str::parse::<f32>`. Anything
/// else goes through the general parse.
#[inline]
fn rating(field: &[u8]) -> Option<f32> {
    let (mut mantissa, mut digits, mut decimals, mut dot) = (0u32, 0u32, 0u32, false);
    for &c in field {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + (c - b'0') as u32;
                digits += 1;
                decimals += dot as u32;
            }
            b'.' if !dot => dot = true,
            _ => return number(field),
        }
    }
    if digits == 0 || digits > 7 {
        return number(field);
    }
    Some(mantissa as f32 / 10u32.pow(decimals) as f32)
}

impl Chunk {
    /// Parses one line; `None` means the general path must read the file.
    #[inline]
    fn line(&mut self, line: &[u8], l: &Layout) -> Option<()> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Some(());
        }
        let mut slots: [&[u8]; 4] = [&[]; 4];
        let mut k = 0;
        let mut start = 0;
        /// Stores field `k` in its slot; `None` when the line has more fields than the first.
        #[inline]
        fn take<'a>(slots: &mut [&'a [u8]; 4], slot_of: &[Option<usize>], k: usize, field: &'a [u8]) -> Option<()> {
            if let Some(slot) = slot_of.get(k)? {
                slots[*slot] = field;
            }
            Some(())
        }
        match l.sep {
            Sep::Byte(sep) => {
                for (i, &b) in line.iter().enumerate() {
                    if b == sep {
                        take(&mut slots, &l.slot_of, k, &line[start..i])?;
                        k += 1;
                        start = i + 1;
                    } else if b == b'"' || b == b'\r' {
                        return None;
                    }
                }
            }
            Sep::DoubleColon => {
                let mut i = 0;
                while i < line.len() {
                    if line[i] == b':' && line.get(i + 1) == Some(&b':') {
                        take(&mut slots, &l.slot_of, k, &line[start..i])?;
                        k += 1;
                        i += 2;
                        start = i;
                    } else if line[i] == b'"' || line[i] == b'\r' {
                        return None;
                    } else {
                        i += 1;
                    }
                }
            }
        }
        take(&mut slots, &l.slot_of, k, &line[start..])?;
        if k + 1 != l.width {
            return None;
        }
        let (u, i) = (self.users.intern_field(slots[0])?, self.items.intern_field(slots[1])?);
        if l.rating {
            let r = rating(slots[2])?;
            if !r.is_finite() {
                return None;
            }
            self.rating.push(r);
        }
        if l.time {
            self.time.push(timestamp(slots[3])?);
        }
        self.user.push(u);
        self.item.push(i);
        Some(())
    }
}

/// Parses the lines that start in `range`, streaming it in blocks.
fn parse_range(path: &Path, range: Range<u64>, l: &Layout) -> Result<Option<Chunk>> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(range.start)).map_err(io_err(path))?;
    let mut remaining = range.end - range.start;
    let mut chunk = Chunk::default();
    let mut buf = vec![0u8; BLOCK];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0); // a line longer than a block
        }
        let want = (buf.len() - filled).min(remaining as usize);
        let n = if want == 0 { 0 } else { file.read(&mut buf[filled..filled + want]).map_err(io_err(path))? };
        remaining -= n as u64;
        filled += n;
        let done = n == 0;
        let upto = if done {
            filled
        } else {
            match buf[..filled].iter().rposition(|&b| b == b'\n') {
                Some(p) => p + 1,
                None => continue,
            }
        };
        for line in buf[..upto].split(|&b| b == b'\n') {
            if chunk.line(line, l).is_none() {
                return Ok(None);
            }
        }
        buf.copy_within(upto..filled, 0);
        filled -= upto;
        if done {
            return Ok(Some(chunk));
        }
    }
}

/// Joins the chunks in file order, re-keying each chunk's local ids into the first-seen order
/// of the whole file; each chunk's columns are freed as soon as they are copied.
fn merge(mut chunks: Vec<Chunk>, l: &Layout) -> Interactions {
    let total: usize = chunks.iter().map(|c| c.user.len()).sum();
    let mut users = std::mem::take(&mut chunks[0].users);
    let mut items = std::mem::take(&mut chunks[0].items);
    for c in &mut chunks[1..] {
        let remap_u: Vec<u32> = c.users.raw.iter().map(|r| users.intern(r)).collect();
        let remap_i: Vec<u32> = c.items.raw.iter().map(|r| items.intern(r)).collect();
        c.users = Ids::default();
        c.items = Ids::default();
        c.user.iter_mut().for_each(|u| *u = remap_u[*u as usize]);
        c.item.iter_mut().for_each(|i| *i = remap_i[*i as usize]);
    }
    fn concat<T: Copy>(chunks: &mut [Chunk], total: usize, col: impl Fn(&mut Chunk) -> &mut Vec<T>) -> Vec<T> {
        if chunks.len() == 1 {
            return std::mem::take(col(&mut chunks[0]));
        }
        let mut out = Vec::with_capacity(total);
        for c in chunks.iter_mut() {
            out.extend_from_slice(col(c));
            *col(c) = Vec::new();
        }
        out
    }
    let user = concat(&mut chunks, total, |c| &mut c.user);
    let item = concat(&mut chunks, total, |c| &mut c.item);
    let rating = l.rating.then(|| concat(&mut chunks, total, |c| &mut c.rating));
    let time = l.time.then(|| concat(&mut chunks, total, |c| &mut c.time));
    Interactions { user, item, rating, time, users: IdMap::from_raw(users.raw), items: IdMap::from_raw(items.raw) }
}

#[cfg(test)]
mod tests {
    use super::super::{assert_same, text_paths};
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn int_keys_only_for_canonical_decimals() {
        assert_eq!(int_key("0"), Some(0));
        assert_eq!(int_key("1234"), Some(1234));
        assert_eq!(int_key("007"), None);
        assert_eq!(int_key("+7"), None);
        assert_eq!(int_key("-7"), None);
        assert_eq!(int_key("18446744073709551616"), None);
        let mut ids = Ids::default();
        assert_eq!((ids.intern("7"), ids.intern("007"), ids.intern("7"), ids.intern("x")), (0, 1, 0, 2));
        let big = "18446744073709551";
        assert_eq!((ids.intern(big), ids.intern("0"), ids.intern(big)), (3, 4, 3));
        assert_eq!(ids.raw, ["7", "007", "x", big, "0"]);
    }

    #[test]
    fn fast_number_parses_equal_the_standard_ones() {
        for text in ["0", "5", "4.5", "3.25", "0.1", "1234567", "123.4567", "9999.999", ".5", "5.", "1e3", " 2", "-1", "x", ""] {
            let want = text.trim().parse::<f32>().ok();
            assert_eq!(rating(text.as_bytes()), want, "{text:?}");
        }
        for text in ["0", "978300760", "999999999999999999", "9999999999999999999", "-5", "+5", " 7", "7x", ""] {
            assert_eq!(timestamp(text.as_bytes()), text.trim().parse::<i64>().ok(), "{text:?}");
        }
        // Exhaustively over one-decimal and two-decimal ratings.
        for m in 0..100_000u32 {
            for text in [format!("{}.{}", m / 10, m % 10), format!("{}.{:02}", m / 100, m % 100)] {
                assert_eq!(rating(text.as_bytes()), text.parse::<f32>().ok(), "{text}");
            }
        }
    }

    /// The fast path's result, which must be there and equal the general path's.
    fn fast_equals_general(p: &Path, what: &str) -> Interactions {
        let (fast, general) = text_paths(p, &ReadOptions::default()).unwrap();
        let fast = fast.unwrap_or_else(|| panic!("{what} declined"));
        assert_same(&fast, &general.unwrap(), what);
        fast
    }

    /// The fast path reads exactly what the general path reads, and declines what it cannot.
    #[test]
    fn same_result_as_the_general_path() {
        let dir = std::env::temp_dir().join(format!("ncf-plain-same-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("a.csv", "userId,movieId,rating,timestamp\n7,x1,4.5,10\n007, 9 ,3,11\n\n7,x2,1e0,-12\r\n"),
            ("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"),
            ("ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2:::7::1::5\n"),
            ("big.tsv", "x\t18446744073709551616\ny\t2\n"),
            ("bom.csv", "\u{feff}user , item\r\n01,\u{e9}t\u{e9}\r\n1,-1\r\n"),
            ("bom.tsv", "\u{feff}5\t6\n7\t8\n"),
        ];
        for (name, text) in cases {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            fast_equals_general(&p, name);
        }
        let bom = fast_equals_general(&dir.join("bom.tsv"), "bom.tsv");
        assert_eq!(bom.users.raw_ids(), &["5", "7"]);
        let declined: [(&str, &[u8]); 7] = [
            ("q.csv", b"user,item\n\"a,b\",x\n"),
            ("short.csv", b"user,item,rating\n1,2,5\n4\n"),
            ("bad.csv", b"user,item,rating\n1,2,x\n"),
            ("cr.csv", b"user,item\r1,2\r3,4\r"),
            ("inner-cr.csv", b"user,item\na\rb,2\n"),
            ("control.csv", b"user,item\na\x01,2\n"),
            ("latin1.csv", b"user,item\ncaf\xe9,2\n"),
        ];
        for (name, bytes) in declined {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            assert!(text_paths(&p, &ReadOptions::default()).unwrap().0.is_none(), "{name} must take the general path");
        }
        let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
        for rel in ["ml-100k/u.data", "ml-latest-small/ratings.csv"] {
            let p = shared.join(rel);
            if !p.exists() {
                eprintln!("skipping: {} not found (the MovieLens data lives in ../shared/data)", p.display());
                continue;
            }
            fast_equals_general(&p, rel);
        }
    }

    #[test]
    fn parallel_chunks_match_one_chunk() {
        let dir = std::env::temp_dir().join(format!("ncf-plain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("many.csv");
        let mut text = String::from("user,item,rating,timestamp\n");
        for r in 0..5000u64 {
            text.push_str(&format!("{},i{},{}.5,{}\r\n", (r * 31) % 97, (r * 7) % 211, r % 5, r));
            if r % 1000 == 0 {
                text.push('\n');
            }
        }
        std::fs::write(&p, &text).unwrap();
        let opts = ReadOptions::default();
        let one = fast_equals_general(&p, "many.csv");
        let names: Vec<String> = ["user", "item", "rating", "timestamp"].map(String::from).to_vec();
        let cols = resolve_columns(&p, &names, true, &opts).unwrap();
        let layout = Layout {
            sep: Sep::Byte(b','),
            width: 4,
            slot_of: vec![Some(0), Some(1), Some(2), Some(3)],
            rating: cols.rating.is_some(),
            time: cols.time.is_some(),
        };
        let len = std::fs::metadata(&p).unwrap().len();
        let header = text.find('\n').unwrap() as u64 + 1;
        for threads in [2, 3, 7] {
            let bounds = line_bounds(&p, header, len, threads).unwrap();
            let chunks: Vec<Chunk> = bounds.windows(2).map(|w| parse_range(&p, w[0]..w[1], &layout).unwrap().unwrap()).collect();
            let many = merge(chunks, &layout);
            assert_eq!(many.user, one.user, "{threads} chunks");
            assert_eq!(many.item, one.item);
            assert_eq!(many.time, one.time);
            assert_eq!(many.rating, one.rating);
            assert_eq!(many.users, one.users);
            assert_eq!(many.items, one.items);
        }
        assert_eq!(one.len(), 5000);
        assert_eq!(one.users.raw(0), "0");
        assert_eq!(one.items.raw(1), "i7");
    }
}
