//! Tables beside the interactions: export batches written as Parquet (the binary builds CSV and
//! JSONL itself), and side files such as item metadata read as string columns keyed by one column.

use std::collections::HashMap;
use std::path::Path;

use polars::prelude::{
    Column, CsvParseOptions, CsvReadOptions, DataFrame, DataType, Field, Float32Type, IntoColumn, ListBuilderTrait, ListPrimitiveChunkedBuilder, ParquetWriter,
    PolarsError, Schema, SerReader,
};

use crate::error::{DataError, Result};
use crate::reader::{ColumnRef, ITEM_NAMES, UNIT_SEP, looks_numeric, rewrite_double_colon};

/// The type of an export column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    U32,
    F32,
    /// A vector of f32 per row (Parquet `list<float>`), e.g. an embedding.
    F32List,
}

/// One column of an export batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// `None` is a missing value (null in Parquet, empty in CSV).
    Str(Vec<Option<String>>),
    U32(Vec<u32>),
    F32(Vec<f32>),
    /// Rows of `width` values each, row-major in `values` (`width` > 0).
    F32List {
        width: usize,
        values: Vec<f32>,
    },
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::Str(v) => v.len(),
            Values::U32(v) => v.len(),
            Values::F32(v) => v.len(),
            Values::F32List { width, values } => values.len() / width,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The column type these values have.
    pub fn kind(&self) -> Kind {
        match self {
            Values::Str(_) => Kind::Str,
            Values::U32(_) => Kind::U32,
            Values::F32(_) => Kind::F32,
            Values::F32List { .. } => Kind::F32List,
        }
    }

    /// A copy of rows `rows`, e.g. to write a long column in batches.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Values {
        match self {
            Values::Str(v) => Values::Str(v[rows].to_vec()),
            Values::U32(v) => Values::U32(v[rows].to_vec()),
            Values::F32(v) => Values::F32(v[rows].to_vec()),
            Values::F32List { width, values } => Values::F32List { width: *width, values: values[rows.start * width..rows.end * width].to_vec() },
        }
    }
}

fn dtype(kind: Kind) -> DataType {
    match kind {
        Kind::Str => DataType::String,
        Kind::U32 => DataType::UInt32,
        Kind::F32 => DataType::Float32,
        Kind::F32List => DataType::List(Box::new(DataType::Float32)),
    }
}

fn io(path: &Path) -> impl Fn(PolarsError) -> DataError + '_ {
    move |e| DataError::Parse { path: path.to_path_buf(), message: e.to_string() }
}

/// A Parquet file written one batch (row group) at a time, so memory stays bounded by a batch.
pub struct ParquetSink {
    writer: polars::io::parquet::write::BatchedWriter<std::fs::File>,
    names: Vec<String>,
    path: std::path::PathBuf,
}

impl ParquetSink {
    /// Starts a Parquet file in `file` (at `path`, for messages) with the given columns.
    pub fn new(file: std::fs::File, path: &Path, columns: &[(String, Kind)]) -> Result<Self> {
        let schema = Schema::from_iter(columns.iter().map(|(n, k)| Field::new(n.as_str().into(), dtype(*k))));
        let writer = ParquetWriter::new(file).batched(&schema).map_err(io(path))?;
        Ok(Self { writer, names: columns.iter().map(|c| c.0.clone()).collect(), path: path.to_path_buf() })
    }

    /// Writes one batch; `columns` follow the order given to [`ParquetSink::new`].
    pub fn write(&mut self, columns: &[Values]) -> Result<()> {
        let height = columns.first().map_or(0, Values::len);
        if height == 0 {
            return Ok(());
        }
        let cols: Vec<Column> = self
            .names
            .iter()
            .zip(columns)
            .map(|(n, v)| match v {
                Values::Str(v) => Column::new(n.as_str().into(), v),
                Values::U32(v) => Column::new(n.as_str().into(), v),
                Values::F32(v) => Column::new(n.as_str().into(), v),
                Values::F32List { width, values } => {
                    let mut list = ListPrimitiveChunkedBuilder::<Float32Type>::new(n.as_str().into(), height, values.len(), DataType::Float32);
                    values.chunks_exact(*width).for_each(|row| list.append_slice(row));
                    list.finish().into_column()
                }
            })
            .collect();
        let df = DataFrame::new(height, cols).map_err(io(&self.path))?;
        self.writer.write_batch(&df).map_err(io(&self.path))
    }

    /// Writes the footer.
    pub fn finish(self) -> Result<()> {
        self.writer.finish().map_err(io(&self.path))?;
        Ok(())
    }
}

/// The column names of a Parquet file, or `None` when it is not one polars can read.
pub fn parquet_columns(path: &Path) -> Option<Vec<String>> {
    let file = std::fs::File::open(path).ok()?;
    let schema = polars::prelude::ParquetReader::new(file).schema().ok()?;
    Some(schema.iter_names().map(|n| n.to_string()).collect())
}

/// A side table (e.g. item metadata) as strings, rows found by the raw value of a key column.
#[derive(Debug, Clone, Default)]
pub struct KeyedTable {
    /// Names of the non-key columns, in file order.
    pub names: Vec<String>,
    rows: HashMap<String, usize>,
    /// Row-major values of the non-key columns.
    values: Vec<Option<String>>,
    /// Rows whose key repeated an earlier one (the first is kept).
    pub duplicates: usize,
}

impl KeyedTable {
    /// The non-key values of the row whose key is `key`.
    pub fn get(&self, key: &str) -> Option<&[Option<String>]> {
        let w = self.names.len();
        self.rows.get(key).map(|&r| &self.values[r * w..(r + 1) * w])
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The values of non-key column `column`, one per row, in file order.
    pub fn column(&self, column: usize) -> impl Iterator<Item = Option<&str>> {
        self.values.chunks(self.names.len().max(1)).map(move |row| row[column].as_deref())
    }
}

/// Reads a delimited side table: separator `,`, tab, `|` or `::` sniffed from the first line,
/// header detected (or implied by a key given by name), Latin-1 accepted when the file is not
/// UTF-8 (MovieLens `u.item`, `movies.dat`). Without a header, columns are named by their 0-based
/// index. The key defaults to a column named like an item id, else column 0; `keep` picks
/// the other columns returned (all by default).
pub fn read_keyed(path: &Path, key: Option<&ColumnRef>, keep: &[ColumnRef]) -> Result<KeyedTable> {
    read_keyed_with(path, key, keep, ["item-key", "item-columns"])
}

/// [`read_keyed`], naming the command's flags for the key and the kept columns in its messages.
pub fn read_keyed_with(path: &Path, key: Option<&ColumnRef>, keep: &[ColumnRef], flags: [&'static str; 2]) -> Result<KeyedTable> {
    let raw = std::fs::read(path).map_err(|error| DataError::Io { path: path.to_path_buf(), error })?;
    let first_line = raw.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let double_colon = first_line.windows(2).any(|w| w == b"::");
    let bytes = if double_colon { rewrite_double_colon(path)? } else { raw };
    let text = match String::from_utf8(bytes) {
        Ok(s) => s,
        // Latin-1: every byte is the code point of the same value.
        Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(first) = lines.next() else { return Err(DataError::Empty { path: path.to_path_buf() }) };
    let separator = if double_colon { UNIT_SEP } else { [b',', b'\t', b'|'].into_iter().max_by_key(|&s| first.bytes().filter(|&b| b == s).count()).unwrap() };
    let has_header = match (key, lines.next()) {
        (Some(ColumnRef::Name(_)), _) => true,
        (_, Some(second)) => {
            let (f1, f2) = (first.split(separator as char), second.split(separator as char).collect::<Vec<_>>());
            f1.zip(&f2).any(|(a, b)| !looks_numeric(a) && looks_numeric(b))
        }
        (_, None) => first.split(separator as char).all(|a| !looks_numeric(a)),
    };
    let df = CsvReadOptions::default()
        .with_has_header(has_header)
        .with_infer_schema_length(Some(0))
        .with_parse_options(CsvParseOptions::default().with_separator(separator))
        .into_reader_with_file_handle(std::io::Cursor::new(text.into_bytes()))
        .finish()
        .map_err(io(path))?;
    let names: Vec<String> =
        if has_header { df.get_column_names().iter().map(|s| s.to_string()).collect() } else { (0..df.width()).map(|i| i.to_string()).collect() };
    let find = |c: &ColumnRef, flag: &'static str| -> Result<usize> {
        let found = match c {
            ColumnRef::Index(i) => (*i < names.len()).then_some(*i),
            ColumnRef::Name(n) => names.iter().position(|x| x == n),
        };
        found.ok_or_else(|| DataError::MissingColumn {
            path: path.to_path_buf(),
            column: match c {
                ColumnRef::Index(i) => i.to_string(),
                ColumnRef::Name(n) => n.clone(),
            },
            flag,
            available: if has_header { format!("columns {names:?}") } else { format!("{} unnamed columns (0-based indices 0..{})", names.len(), names.len()) },
        })
    };
    let key_col = match key {
        Some(c) => find(c, flags[0])?,
        None => names.iter().position(|n| has_header && ITEM_NAMES.contains(&n.to_ascii_lowercase().as_str())).unwrap_or(0),
    };
    let kept: Vec<usize> =
        if keep.is_empty() { (0..names.len()).filter(|&i| i != key_col).collect() } else { keep.iter().map(|c| find(c, flags[1])).collect::<Result<_>>()? };
    let columns = df.columns();
    let strings = |i: usize| -> Result<Vec<Option<String>>> {
        let c = columns[i].cast(&DataType::String).map_err(io(path))?;
        Ok(c.str().map_err(io(path))?.iter().map(|v| v.map(str::to_owned)).collect())
    };
    let keys = strings(key_col)?;
    let kept_values: Vec<Vec<Option<String>>> = kept.iter().map(|&i| strings(i)).collect::<Result<_>>()?;
    let mut table = KeyedTable { names: kept.iter().map(|&i| names[i].clone()).collect(), ..Default::default() };
    for (r, k) in keys.iter().enumerate() {
        let Some(k) = k.as_deref().map(str::trim).filter(|k| !k.is_empty()) else { continue };
        if table.rows.contains_key(k) {
            table.duplicates += 1;
            continue;
        }
        table.rows.insert(k.to_owned(), table.rows.len());
        table.values.extend(kept_values.iter().map(|col| col[r].clone()));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ncf-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_pipe_latin1_without_header_and_quoted_csv_with_header() {
        // MovieLens u.item style: pipe-separated, no header, Latin-1 (0xE9 = é).
        let p = write("u.item", b"1|Toy Story (1995)|01-Jan-1995\n2|Caf\xe9 (1994)|01-Jan-1994\n");
        let t = read_keyed(&p, None, &[]).unwrap();
        assert_eq!(t.names, vec!["1", "2"]);
        assert_eq!(t.get("2").unwrap()[0].as_deref(), Some("Café (1994)"));
        let t = read_keyed(&p, Some(&ColumnRef::Index(0)), &[ColumnRef::Index(1)]).unwrap();
        assert_eq!(t.get("1").unwrap(), &[Some("Toy Story (1995)".to_owned())]);

        // movies.csv style: header, quoted titles with commas, pipes inside a field.
        let p = write("movies.csv", b"movieId,title,genres\n1,\"American President, The (1995)\",Comedy|Drama\n2,Heat (1995),Action\n2,dup,x\n");
        let t = read_keyed(&p, None, &[]).unwrap();
        assert_eq!(t.names, vec!["title", "genres"]);
        assert_eq!(t.get("1").unwrap()[0].as_deref(), Some("American President, The (1995)"));
        assert_eq!(t.get("1").unwrap()[1].as_deref(), Some("Comedy|Drama"));
        assert_eq!((t.len(), t.duplicates), (2, 1));

        let e = read_keyed(&p, Some(&ColumnRef::Name("item".into())), &[]).unwrap_err().to_string();
        assert!(e.contains("\"item\"") && e.contains("--item-key") && e.contains("movieId"), "{e}");
    }

    #[test]
    fn parquet_sink_round_trips() {
        let dir = std::env::temp_dir().join(format!("ncf-table-pq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.parquet");
        let cols = [("user".to_owned(), Kind::Str), ("rank".to_owned(), Kind::U32), ("score".to_owned(), Kind::F32), ("v".to_owned(), Kind::F32List)];
        let mut sink = ParquetSink::new(std::fs::File::create(&p).unwrap(), &p, &cols).unwrap();
        let v = |values: Vec<f32>| Values::F32List { width: 2, values };
        sink.write(&[Values::Str(vec![Some("a".into()), None]), Values::U32(vec![1, 2]), Values::F32(vec![0.5, -1.0]), v(vec![1.0, 2.0, 3.0, 4.0])]).unwrap();
        sink.write(&[Values::Str(vec![Some("b".into())]), Values::U32(vec![1]), Values::F32(vec![2.0]), v(vec![5.0, 6.0])]).unwrap();
        sink.finish().unwrap();
        let df = polars::prelude::ParquetReader::new(std::fs::File::open(&p).unwrap()).finish().unwrap();
        assert_eq!(df.height(), 3);
        let users: Vec<Option<&str>> = df.column("user").unwrap().str().unwrap().iter().collect();
        assert_eq!(users, vec![Some("a"), None, Some("b")]);
        let scores: Vec<Option<f32>> = df.column("score").unwrap().f32().unwrap().iter().collect();
        assert_eq!(scores, vec![Some(0.5), Some(-1.0), Some(2.0)]);
        let list = df.column("v").unwrap().list().unwrap().clone();
        let rows: Vec<Vec<f32>> = (0..list.len()).map(|r| list.get_as_series(r).unwrap().f32().unwrap().into_no_null_iter().collect()).collect();
        assert_eq!(rows, vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]]);
    }
}
