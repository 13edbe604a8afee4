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

    /// Appends `other`'s rows after these, its ids re-interned into these maps (new ones after
    /// the existing ones, in `other`'s first-seen order). Both must have the same optional columns.
    pub fn append(&mut self, other: Interactions) {
        let users: Vec<u32> = other.users.raw_ids().iter().map(|r| self.users.intern(r)).collect();
        let items: Vec<u32> = other.items.raw_ids().iter().map(|r| self.items.intern(r)).collect();
        self.user.extend(other.user.iter().map(|&u| users[u as usize]));
        self.item.extend(other.item.iter().map(|&i| items[i as usize]));
        if let (Some(a), Some(b)) = (self.rating.as_mut(), other.rating) {
            a.extend(b);
        }
        if let (Some(a), Some(b)) = (self.time.as_mut(), other.time) {
            a.extend(b);
        }
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

    /// Rows grouped by user (users in dense order), each user's rows sorted by time, ties by file
    /// order. A counting sort by user, then one small sort per user: O(n) plus the per-user sorts.
    pub fn by_user_chronological(&self) -> ByUser {
        assert!(self.len() < u32::MAX as usize, "more than 2^32 - 1 interactions");
        let mut offsets = vec![0usize; self.n_users() + 1];
        for &u in &self.user {
            offsets[u as usize + 1] += 1;
        }
        for k in 1..offsets.len() {
            offsets[k] += offsets[k - 1];
        }
        let mut next = offsets.clone();
        let Some(t) = &self.time else {
            let mut rows = vec![0u32; self.len()];
            for (r, &u) in self.user.iter().enumerate() {
                rows[next[u as usize]] = r as u32;
                next[u as usize] += 1;
            }
            return ByUser { rows, offsets };
        };
        // Scatter (time, row) so each user's sort works on contiguous memory, then sort the users'
        // slices on all cores; rows are unique, so the order is total and ties go by file order.
        let mut keyed = vec![(0i64, 0u32); self.len()];
        for (r, (&u, &time)) in self.user.iter().zip(t).enumerate() {
            keyed[next[u as usize]] = (time, r as u32);
            next[u as usize] += 1;
        }
        drop(next);
        let threads = rayon::current_num_threads().min(16);
        std::thread::scope(|s| {
            let mut rest: &mut [(i64, u32)] = &mut keyed;
            let mut first_user = 0;
            for k in 1..=threads {
                // Users up to the one where the k-th share of rows ends.
                let target = self.len() * k / threads;
                let last_user = if k == threads { self.n_users() } else { offsets.partition_point(|&o| o < target).max(first_user) };
                let (base, end) = (offsets[first_user], offsets[last_user.min(self.n_users())]);
                let (mine, tail) = std::mem::take(&mut rest).split_at_mut(end - base);
                rest = tail;
                let bounds = &offsets[first_user..=last_user.min(self.n_users())];
                s.spawn(move || {
                    for w in bounds.windows(2) {
                        mine[w[0] - base..w[1] - base].sort_unstable();
                    }
                });
                first_user = last_user.min(self.n_users());
            }
        });
        let rows = keyed.iter().map(|&(_, r)| r).collect();
        ByUser { rows, offsets }
    }
}

/// Row indices grouped by user: user `u`'s rows are `rows[offsets[u]..offsets[u + 1]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByUser {
    pub rows: Vec<u32>,
    pub offsets: Vec<usize>,
}

impl ByUser {
    /// The rows of `user`, in the order the table was built with.
    pub fn user_rows(&self, user: u32) -> &[u32] {
        &self.rows[self.offsets[user as usize]..self.offsets[user as usize + 1]]
    }

    pub fn n_users(&self) -> usize {
        self.offsets.len() - 1
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
            users: IdMap::from_raw(vec!["a".into(), "b".into()]),
            time: Some(vec![5, 3, 5, 1]),
            ..Default::default()
        };
        let by = it.by_user_chronological();
        assert_eq!(by.rows, vec![1, 0, 2, 3]);
        assert_eq!(by.user_rows(1), &[3]);
        let no_time = Interactions { time: None, ..it.clone() };
        // Many users with repeated times: the same order as a plain sort by (user, time, row).
        let n = 5000u32;
        let big = Interactions {
            user: (0..n).map(|r| (r * 7919) % 301).collect(),
            item: vec![0; n as usize],
            time: Some((0..n).map(|r| ((r * 104_729) % 37) as i64).collect()),
            users: IdMap::from_raw((0..301).map(|u| u.to_string()).collect()),
            ..Default::default()
        };
        let mut want: Vec<u32> = (0..n).collect();
        let t = big.time.as_ref().unwrap();
        want.sort_by_key(|&r| (big.user[r as usize], t[r as usize], r));
        assert_eq!(big.by_user_chronological().rows, want);
        assert_eq!(no_time.by_user_chronological().rows, vec![0, 1, 2, 3]);
    }
}
