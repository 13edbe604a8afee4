//! Tabular exports (recommendations, scores, per-user metrics) as CSV, Parquet or JSONL, chosen
//! by `--out-format` or the file extension, written in batches to a temporary file that replaces
//! the target only when complete: an error or panic leaves no partial output.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use ncf_datasets::ParquetSink;
pub use ncf_datasets::table::{Kind, Values};

use crate::output;

/// Export file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutFormat {
    Csv,
    Parquet,
    Jsonl,
}

impl OutFormat {
    /// `given` (from `--out-format`), else the format named by the extension of `out`.
    pub fn resolve(out: &Path, given: Option<OutFormat>) -> Result<OutFormat> {
        Self::resolve_with_hint(out, given, ", or pass --out-format csv|parquet|jsonl")
    }

    /// [`OutFormat::resolve`] for commands without `--out-format`.
    pub fn from_extension(out: &Path) -> Result<OutFormat> {
        Self::resolve_with_hint(out, None, "")
    }

    fn resolve_with_hint(out: &Path, given: Option<OutFormat>, hint: &str) -> Result<OutFormat> {
        if let Some(f) = given {
            return Ok(f);
        }
        let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        Ok(match ext.as_str() {
            "csv" => Self::Csv,
            "parquet" | "pq" => Self::Parquet,
            "jsonl" | "ndjson" => Self::Jsonl,
            _ => bail!("{}: cannot tell the output format from the extension; use .csv, .parquet or .jsonl{hint}", out.display()),
        })
    }
}

enum Sink {
    Csv(csv::Writer<std::fs::File>),
    Jsonl(BufWriter<std::fs::File>),
    Parquet(ParquetSink, std::fs::File),
}

/// An export being written. Dropping it before [`Export::finish`] removes the temporary file.
pub struct Export {
    names: Vec<String>,
    /// JSON-encoded column names, for JSONL rows.
    json_keys: Vec<String>,
    sink: Option<Sink>,
    tmp: PathBuf,
    out: PathBuf,
    rows: usize,
}

/// The one CSV writer behind every CSV file ncf writes: RFC 4180 (a field holding a comma, a
/// quote, CR or LF is quoted, quotes doubled), `\n` line ends, buffered.
pub fn csv_writer<W: Write>(w: W) -> csv::Writer<W> {
    csv::WriterBuilder::new().buffer_capacity(1 << 20).terminator(csv::Terminator::Any(b'\n')).from_writer(w)
}

/// A CSV file's rows in memory (e.g. `metrics.csv`), through [`csv_writer`].
pub fn csv_string<R: AsRef<[u8]>>(rows: impl IntoIterator<Item = Vec<R>>) -> String {
    let mut w = csv_writer(Vec::new());
    for row in rows {
        w.write_record(&row).expect("writing to memory");
    }
    String::from_utf8(w.into_inner().expect("writing to memory")).expect("UTF-8 fields")
}

impl Export {
    /// Starts an export of the named, typed columns to `out`, after checking that `out` may be
    /// written ([`output::claim_file`]: not one of `inputs`, and absent, empty, an ncf export
    /// with the same columns, or `force`d).
    pub fn create(out: &Path, format: OutFormat, columns: &[(String, Kind)], inputs: &[&Path], force: bool) -> Result<Self> {
        let names: Vec<String> = columns.iter().map(|c| c.0.clone()).collect();
        output::claim_file(out, inputs, force, "export with these columns", |p| holds_columns(p, format, &names))?;
        let tmp = output::tmp_path(out);
        let file = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot write the output (as {} first)", out.display(), tmp.display()))?;
        let mut export = Self {
            json_keys: names.iter().map(|n| serde_json::to_string(n).expect("string")).collect(),
            names,
            sink: None,
            tmp,
            out: out.to_path_buf(),
            rows: 0,
        };
        export.sink = Some(match format {
            OutFormat::Parquet => {
                let keep = file.try_clone()?;
                Sink::Parquet(ParquetSink::new(file, out, columns)?, keep)
            }
            OutFormat::Csv => {
                let mut w = csv_writer(file);
                w.write_record(&export.names).with_context(|| format!("writing {}", export.tmp.display()))?;
                Sink::Csv(w)
            }
            OutFormat::Jsonl => Sink::Jsonl(BufWriter::with_capacity(1 << 20, file)),
        });
        Ok(export)
    }

    /// Appends a batch of rows given column by column, in the order passed to [`Export::create`].
    pub fn write(&mut self, columns: &[Values]) -> Result<()> {
        assert_eq!(columns.len(), self.names.len(), "one value vector per column");
        let height = columns.first().map_or(0, Values::len);
        debug_assert!(columns.iter().all(|c| c.len() == height));
        let path = self.tmp.clone();
        let io = || format!("writing {}", path.display());
        match self.sink.as_mut().expect("export not finished") {
            Sink::Parquet(p, _) => p.write(columns)?,
            Sink::Csv(w) => {
                let mut field = String::new();
                for r in 0..height {
                    for col in columns {
                        field.clear();
                        push_csv(&mut field, col, r);
                        w.write_field(&field).with_context(io)?;
                    }
                    w.write_record(None::<&[u8]>).with_context(io)?;
                }
            }
            Sink::Jsonl(w) => {
                let mut line = String::new();
                for r in 0..height {
                    line.clear();
                    for (j, col) in columns.iter().enumerate() {
                        line.push(if j == 0 { '{' } else { ',' });
                        line.push_str(&self.json_keys[j]);
                        line.push(':');
                        push_json(&mut line, col, r);
                    }
                    line.push_str("}\n");
                    w.write_all(line.as_bytes()).with_context(io)?;
                }
            }
        }
        self.rows += height;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Flushes, syncs and moves the file into place.
    pub fn finish(mut self) -> Result<()> {
        let file = match self.sink.take().expect("export not finished") {
            Sink::Parquet(p, file) => {
                p.finish()?;
                file
            }
            Sink::Csv(w) => w.into_inner().map_err(|e| anyhow::anyhow!("writing {}: {}", self.tmp.display(), e.error()))?,
            Sink::Jsonl(w) => w.into_inner().map_err(|e| e.into_error())?,
        };
        file.sync_all().with_context(|| format!("writing {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.out).with_context(|| format!("renaming to {}", self.out.display()))?;
        Ok(())
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if self.sink.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Whether `path` is an ncf export in `format` with exactly the columns `names`: its CSV header,
/// its first JSONL row's keys, or its Parquet schema.
fn holds_columns(path: &Path, format: OutFormat, names: &[String]) -> bool {
    use std::io::{BufRead, Read};
    let Ok(file) = std::fs::File::open(path) else { return false };
    match format {
        OutFormat::Csv => {
            let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(file.take(1 << 16));
            r.records().next().and_then(|h| h.ok()).is_some_and(|h| h.iter().eq(names.iter().map(String::as_str)))
        }
        OutFormat::Jsonl => {
            let mut line = String::new();
            let _ = std::io::BufReader::new(file.take(1 << 20)).read_line(&mut line);
            let row: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(&line).ok();
            row.is_some_and(|m| m.len() == names.len() && names.iter().all(|n| m.contains_key(n)))
        }
        OutFormat::Parquet => ncf_datasets::table::parquet_columns(path).is_some_and(|c| c == names),
    }
}

fn push_csv(field: &mut String, col: &Values, r: usize) {
    use std::fmt::Write as _;
    match col {
        Values::Str(v) => field.push_str(v[r].as_deref().unwrap_or("")),
        Values::U32(v) => {
            let _ = write!(field, "{}", v[r]);
        }
        Values::F32(v) => {
            let _ = write!(field, "{}", v[r]);
        }
        // One field holding the vector as a JSON-style list: `[0.5,-1]`.
        Values::F32List { .. } => push_json(field, col, r),
    }
}

fn push_json(line: &mut String, col: &Values, r: usize) {
    use std::fmt::Write as _;
    match col {
        Values::Str(v) => match &v[r] {
            Some(s) => line.push_str(&serde_json::to_string(s).expect("string")),
            None => line.push_str("null"),
        },
        Values::U32(v) => {
            let _ = write!(line, "{}", v[r]);
        }
        Values::F32(v) => push_json_f32(line, v[r]),
        Values::F32List { width, values } => {
            line.push('[');
            for (k, &x) in values[r * width..(r + 1) * width].iter().enumerate() {
                if k > 0 {
                    line.push(',');
                }
                push_json_f32(line, x);
            }
            line.push(']');
        }
    }
}

/// Shortest round-trip decimal, a valid JSON number when finite; `null` otherwise.
fn push_json_f32(line: &mut String, x: f32) {
    use std::fmt::Write as _;
    if x.is_finite() {
        let _ = write!(line, "{x}");
    } else {
        line.push_str("null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<(String, Kind)> {
        vec![("user".into(), Kind::Str), ("rank".into(), Kind::U32), ("score".into(), Kind::F32)]
    }

    fn batch() -> Vec<Values> {
        vec![Values::Str(vec![Some("a,\"b\"".into()), None]), Values::U32(vec![1, 2]), Values::F32(vec![0.25, f32::NEG_INFINITY])]
    }

    #[test]
    fn csv_and_jsonl_rows_and_atomicity() {
        let dir = std::env::temp_dir().join(format!("ncf-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("x.csv");
        let mut e = Export::create(&csv, OutFormat::resolve(&csv, None).unwrap(), &columns(), &[], false).unwrap();
        e.write(&batch()).unwrap();
        assert!(!csv.exists(), "nothing at the target before finish");
        e.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&csv).unwrap(), "user,rank,score\n\"a,\"\"b\"\"\",1,0.25\n,2,-inf\n");

        let jsonl = dir.join("x.jsonl");
        let mut e = Export::create(&jsonl, OutFormat::resolve(&jsonl, None).unwrap(), &columns(), &[], false).unwrap();
        e.write(&batch()).unwrap();
        e.finish().unwrap();
        let text = std::fs::read_to_string(&jsonl).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows[0]["user"], "a,\"b\"");
        assert_eq!(rows[0]["score"], 0.25);
        assert!(rows[1]["user"].is_null() && rows[1]["score"].is_null());

        let dropped = dir.join("dropped.csv");
        let mut e = Export::create(&dropped, OutFormat::Csv, &columns(), &[], false).unwrap();
        e.write(&batch()).unwrap();
        drop(e);
        assert!(!dropped.exists() && !output::tmp_path(&dropped).exists());

        // An existing file is replaced only when it is an export with the same columns, or forced.
        for format in [OutFormat::Csv, OutFormat::Jsonl, OutFormat::Parquet] {
            let other = dir.join(format!("other-{format:?}"));
            std::fs::write(&other, "user,item\n1,2\n").unwrap();
            let e = Export::create(&other, format, &columns(), &[], false).err().expect("refused").to_string();
            assert!(e.contains("--force"), "{e}");
            let mut e = Export::create(&other, format, &columns(), &[], true).unwrap();
            e.write(&batch()).unwrap();
            e.finish().unwrap();
            Export::create(&other, format, &columns(), &[], false).expect("an export with these columns");
            let fewer = &columns()[..2];
            assert!(Export::create(&other, format, fewer, &[], false).is_err(), "{format:?}: other columns");
        }
        assert!(OutFormat::resolve(Path::new("x.txt"), None).unwrap_err().to_string().contains("--out-format"));
    }

    #[test]
    fn vector_columns_in_csv_and_jsonl() {
        let dir = std::env::temp_dir().join(format!("ncf-export-list-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let columns = [("id".to_owned(), Kind::Str), ("vector".to_owned(), Kind::F32List)];
        let batch = [Values::Str(vec![Some("a".into()), Some("b".into())]), Values::F32List { width: 2, values: vec![0.5, -1.0, f32::NAN, 3.0] }];
        for (name, want) in
            [("v.csv", "id,vector\na,\"[0.5,-1]\"\nb,\"[null,3]\"\n"), ("v.jsonl", "{\"id\":\"a\",\"vector\":[0.5,-1]}\n{\"id\":\"b\",\"vector\":[null,3]}\n")]
        {
            let out = dir.join(name);
            let mut e = Export::create(&out, OutFormat::resolve(&out, None).unwrap(), &columns, &[], true).unwrap();
            e.write(&batch).unwrap();
            e.finish().unwrap();
            assert_eq!(std::fs::read_to_string(&out).unwrap(), want);
        }
    }
}
