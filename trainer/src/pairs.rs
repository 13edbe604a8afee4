//! (user, item) files read against a checkpoint: raw ids in, the checkpoint's dense ids out,
//! with rows naming an unknown user or item kept as `None` so callers can count and report them.

use std::path::Path;

use anyhow::Result;
use ncf_datasets::{IdMap, Interactions, ReadOptions, reader};

/// The rows of a pairs file, in file order.
pub struct Pairs {
    /// The file as read (raw ids in its `users` and `items` id maps).
    pub data: Interactions,
    /// Checkpoint user id per row, `None` when unknown.
    pub user: Vec<Option<u32>>,
    /// Checkpoint item id per row, `None` when unknown.
    pub item: Vec<Option<u32>>,
}

impl Pairs {
    /// Reads `path` with the reader flags' options and maps its ids through `users` and `items`.
    pub fn read(path: &Path, opts: &ReadOptions, users: &IdMap, items: &IdMap) -> Result<Self> {
        let data = reader::read(path, opts)?;
        let map = |file: &IdMap, ck: &IdMap, rows: &[u32]| -> Vec<Option<u32>> {
            let to_ck: Vec<Option<u32>> = file.raw_ids().iter().map(|r| ck.get(r)).collect();
            rows.iter().map(|&i| to_ck[i as usize]).collect()
        };
        let user = map(&data.users, users, &data.user);
        let item = map(&data.items, items, &data.item);
        Ok(Self { data, user, item })
    }

    /// Rows whose user or item is unknown to the checkpoint: (count, up to five examples).
    pub fn unknown(&self) -> (usize, Vec<String>) {
        let rows: Vec<usize> = (0..self.data.len()).filter(|&r| self.user[r].is_none() || self.item[r].is_none()).collect();
        let examples = rows.iter().take(5).map(|&r| format!("({}, {})", self.raw_user(r), self.raw_item(r))).collect();
        (rows.len(), examples)
    }

    pub fn raw_user(&self, row: usize) -> &str {
        self.data.users.raw(self.data.user[row])
    }

    pub fn raw_item(&self, row: usize) -> &str {
        self.data.items.raw(self.data.item[row])
    }
}
