//! The interaction table after reading: dense ids, optional rating and time, raw ids kept for output.

use std::collections::HashMap;

/// A bidirectional map between raw ids (as written in the input) and dense ids `0..len`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdMap {
    raw: Vec<String>,
    index: HashMap<String, u32>,
}

impl IdMap {
    /// Builds a map from raw ids in first-seen order.
    pub fn from_raw(raw: Vec<String>) -> Self {
        let index = raw.iter().enumerate().map(|(i, r)| (r.clone(), i as u32)).collect();
        Self { raw, index }
    }

    /// The dense id of `raw`, inserting it when new.
    pub fn intern(&mut self, raw: &str) -> u32 {
        if let Some(&id) = self.index.get(raw) {
            return id;
        }
        let id = self.raw.len() as u32;
        self.raw.push(raw.to_owned());
        self.index.insert(raw.to_owned(), id);
        id
    }

    /// The dense id of `raw`, if known.
    pub fn get(&self, raw: &str) -> Option<u32> {
        self.index.get(raw).copied()
    }

    /// The raw id of dense id `id`.
    pub fn raw(&self, id: u32) -> &str {
        &self.raw[id as usize]
    }

    /// All raw ids in dense order.
    pub fn raw_ids(&self) -> &[String] {
        &self.raw
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Keeps only the ids where `keep[id]` holds and returns the old→new mapping.
    pub fn retain(&mut self, keep: &[bool]) -> Vec<Option<u32>> {
        let mut remap = vec![None; self.raw.len()];
        let mut raw = Vec::new();
        for (old, r) in self.raw.drain(..).enumerate() {
            if keep[old] {
                remap[old] = Some(raw.len() as u32);
                raw.push(r);
            }
        }
        *self = Self::from_raw(raw);
        remap
    }
}

/// User-item interactions in file order, with dense ids.
#[derive(Debug, Clone, Default)]
pub struct Interactions {
    pub user: Vec<u32>,
    pub item: Vec<u32>,
    /// Explicit ratings when the input has them.
    pub rating: Option<Vec<f32>>,
    /// Timestamps when the input has them; ties and absence fall back to file order.
    pub time: Option<Vec<i64>>,
    pub users: IdMap,
    pub items: IdMap,
}

impl Interactions {
    pub fn len(&self) -> usize {
        self.user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.user.is_empty()
    }

    pub fn n_users(&self) -> usize {
        self.users.len()
    }

    pub fn n_items(&self) -> usize {
        self.items.len()
    }

    /// Keeps the rows where `keep[row]` holds, in order.
    pub fn retain_rows(&mut self, keep: &[bool]) {
        fn filter<T: Copy>(v: &mut Vec<T>, keep: &[bool]) {
            let mut k = keep.iter();
            v.retain(|_| *k.next().unwrap());
        }
        filter(&mut self.user, keep);
        filter(&mut self.item, keep);
        if let Some(r) = self.rating.as_mut() {
            filter(r, keep);
        }
        if let Some(t) = self.time.as_mut() {
            filter(t, keep);
        }
    }

    /// Drops users and items that no longer appear in any row and re-densifies the ids.
    pub fn compact_ids(&mut self) {
        let mut seen_u = vec![false; self.n_users()];
        let mut seen_i = vec![false; self.n_items()];
        for (&u, &i) in self.user.iter().zip(&self.item) {
            seen_u[u as usize] = true;
            seen_i[i as usize] = true;
        }
        let map_u = self.users.retain(&seen_u);
        let map_i = self.items.retain(&seen_i);
        for u in &mut self.user {
            *u = map_u[*u as usize].expect("seen user");
        }
        for i in &mut self.item {
            *i = map_i[*i as usize].expect("seen item");
        }
    }

    /// The row order that sorts each user's interactions by time, ties by file order.
    pub fn chronological_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        match &self.time {
            Some(t) => order.sort_by_key(|&r| (self.user[r], t[r], r)),
            None => order.sort_by_key(|&r| (self.user[r], r)),
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intern_and_retain() {
        let mut m = IdMap::default();
        assert_eq!(m.intern("b"), 0);
        assert_eq!(m.intern("a"), 1);
        assert_eq!(m.intern("b"), 0);
        let remap = m.retain(&[false, true]);
        assert_eq!(remap, vec![None, Some(0)]);
        assert_eq!(m.get("a"), Some(0));
        assert_eq!(m.get("b"), None);
        assert_eq!(m.raw(0), "a");
    }

    #[test]
    fn chronological_order_breaks_ties_by_file_order() {
        let it = Interactions {
            user: vec![0, 0, 0, 1],
            item: vec![0, 1, 2, 0],
            time: Some(vec![5, 3, 5, 1]),
            ..Default::default()
        };
        assert_eq!(it.chronological_order(), vec![1, 0, 2, 3]);
    }
}
