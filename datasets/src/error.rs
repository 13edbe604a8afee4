//! Errors of the data pipeline, each naming the file, line or column and what to do.

use std::path::PathBuf;

/// Everything that can go wrong between an interaction file and training batches.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// (The OS error is in the message, not a `source`, so `{:#}` chains print it once.)
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: the file is empty; expected one interaction per line")]
    Empty { path: PathBuf },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: line {line}: {message}")]
    Line { path: PathBuf, line: usize, message: String },
    #[error("{path}: no column {column:?}; the file has {available}. Pass --{flag} with a name or 0-based index")]
    MissingColumn { path: PathBuf, column: String, flag: &'static str, available: String },
    #[error("{path}: line {line}, column {column:?}: {value:?} is not {expected}")]
    BadValue { path: PathBuf, line: usize, column: String, value: String, expected: &'static str },
    #[error("unsupported format {0:?}: use csv, tsv, movielens or parquet")]
    UnknownFormat(String),
    #[error(
        "user {user:?} has no training interaction left after the {split} split; \
         drop such users with data.clean.min_user_interactions = {need} (or a larger k-core)"
    )]
    EmptyTrainUser { user: String, split: &'static str, need: usize },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, DataError>;
