//! Tabular exports (recommendations, scores, per-user metrics) as CSV, Parquet or JSONL, chosen
//! by `--out-format` or the file extension, written in batches to a temporary file that replaces
//! the target only when complete: an error or panic leaves no partial output.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use ncf_datasets::ParquetSink;
pub use ncf_datasets::table::{Kind, Values};

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
    Text(BufWriter<std::fs::File>),
    Parquet(ParquetSink, std::fs::File),
}

/// An export being written. Dropping it before [`Export::finish`] removes the temporary file.
pub struct Export {
    format: OutFormat,
    names: Vec<String>,
    /// JSON-encoded column names, for JSONL rows.
    json_keys: Vec<String>,
    sink: Option<Sink>,
    tmp: PathBuf,
    out: PathBuf,
    rows: usize,
}

/// `.NAME.tmp-PID` beside `out`, so the final rename stays on one file system.
pub fn tmp_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Quotes a field for CSV when it needs it.
pub fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

impl Export {
    /// Starts an export of the named, typed columns to `out`.
    pub fn create(out: &Path, format: OutFormat, columns: &[(String, Kind)]) -> Result<Self> {
        if out.is_dir() {
            bail!("{}: is a directory; --out takes a file", out.display());
        }
        let tmp = tmp_path(out);
        let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let names: Vec<String> = columns.iter().map(|c| c.0.clone()).collect();
        let mut export = Self {
            format,
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
            _ => {
                let mut w = BufWriter::with_capacity(1 << 20, file);
                if format == OutFormat::Csv {
                    let header: Vec<_> = export.names.iter().map(|n| csv_field(n)).collect();
                    writeln!(w, "{}", header.join(","))?;
                }
                Sink::Text(w)
            }
        });
        Ok(export)
    }

    /// Appends a batch of rows given column by column, in the order passed to [`Export::create`].
    pub fn write(&mut self, columns: &[Values]) -> Result<()> {
        assert_eq!(columns.len(), self.names.len(), "one value vector per column");
        let height = columns.first().map_or(0, Values::len);
        debug_assert!(columns.iter().all(|c| c.len() == height));
        let path = self.tmp.clone();
        match self.sink.as_mut().expect("export not finished") {
            Sink::Parquet(p, _) => p.write(columns)?,
            Sink::Text(w) => {
                let mut line = String::new();
                for r in 0..height {
                    line.clear();
                    for (j, col) in columns.iter().enumerate() {
                        if self.format == OutFormat::Jsonl {
                            line.push(if j == 0 { '{' } else { ',' });
                            line.push_str(&self.json_keys[j]);
                            line.push(':');
                            push_json(&mut line, col, r);
                        } else {
                            if j > 0 {
                                line.push(',');
                            }
                            push_csv(&mut line, col, r);
                        }
                    }
                    if self.format == OutFormat::Jsonl {
                        line.push('}');
                    }
                    line.push('\n');
                    w.write_all(line.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
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
            Sink::Text(w) => w.into_inner().map_err(|e| e.into_error())?,
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

fn push_csv(line: &mut String, col: &Values, r: usize) {
    use std::fmt::Write as _;
    match col {
        Values::Str(v) => line.push_str(&csv_field(v[r].as_deref().unwrap_or(""))),
        Values::U32(v) => {
            let _ = write!(line, "{}", v[r]);
        }
        Values::F32(v) => {
            let _ = write!(line, "{}", v[r]);
        }
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
        // Shortest round-trip decimal, a valid JSON number when finite.
        Values::F32(v) if v[r].is_finite() => {
            let _ = write!(line, "{}", v[r]);
        }
        Values::F32(_) => line.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<(String, Kind)> {
        vec![("user".into(), Kind::Str), ("rank".into(), Kind::U32), ("score".into(), Kind::F32)]
    }

    fn batch() -> Vec<Values> {
        vec![
            Values::Str(vec![Some("a,\"b\"".into()), None]),
            Values::U32(vec![1, 2]),
            Values::F32(vec![0.25, f32::NEG_INFINITY]),
        ]
    }

    #[test]
    fn csv_and_jsonl_rows_and_atomicity() {
        let dir = std::env::temp_dir().join(format!("ncf-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("x.csv");
        let mut e = Export::create(&csv, OutFormat::resolve(&csv, None).unwrap(), &columns()).unwrap();
        e.write(&batch()).unwrap();
        assert!(!csv.exists(), "nothing at the target before finish");
        e.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&csv).unwrap(), "user,rank,score\n\"a,\"\"b\"\"\",1,0.25\n,2,-inf\n");

        let jsonl = dir.join("x.jsonl");
        let mut e = Export::create(&jsonl, OutFormat::resolve(&jsonl, None).unwrap(), &columns()).unwrap();
        e.write(&batch()).unwrap();
        e.finish().unwrap();
        let text = std::fs::read_to_string(&jsonl).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows[0]["user"], "a,\"b\"");
        assert_eq!(rows[0]["score"], 0.25);
        assert!(rows[1]["user"].is_null() && rows[1]["score"].is_null());

        let dropped = dir.join("dropped.csv");
        let mut e = Export::create(&dropped, OutFormat::Csv, &columns()).unwrap();
        e.write(&batch()).unwrap();
        drop(e);
        assert!(!dropped.exists() && !tmp_path(&dropped).exists());
        assert!(OutFormat::resolve(Path::new("x.txt"), None).unwrap_err().to_string().contains("--out-format"));
    }
}
