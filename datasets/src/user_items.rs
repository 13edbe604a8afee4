//! Each user's items as one compressed sparse row table: sorted, for binary-search membership.

/// Items per user in CSR form; each user's items are sorted and unique.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserItems {
    offsets: Vec<usize>,
    items: Vec<u32>,
}

impl UserItems {
    /// Builds the table from (user, item) pairs; duplicates collapse.
    pub fn from_pairs(n_users: usize, pairs: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let pairs: Vec<(u32, u32)> = pairs.into_iter().collect();
        let mut counts = vec![0usize; n_users + 1];
        for &(u, _) in &pairs {
            counts[u as usize + 1] += 1;
        }
        for k in 1..counts.len() {
            counts[k] += counts[k - 1];
        }
        let mut items = vec![0u32; pairs.len()];
        let mut next = counts.clone();
        for &(u, i) in &pairs {
            items[next[u as usize]] = i;
            next[u as usize] += 1;
        }
        // Sort and dedupe each row in place, then compact.
        let mut offsets = vec![0usize; n_users + 1];
        let mut write = 0;
        for u in 0..n_users {
            let row = &mut items[counts[u]..counts[u + 1]];
            row.sort_unstable();
            let mut last = None;
            for k in counts[u]..counts[u + 1] {
                let v = items[k];
                if last != Some(v) {
                    items[write] = v;
                    write += 1;
                    last = Some(v);
                }
            }
            offsets[u + 1] = write;
        }
        items.truncate(write);
        Self { offsets, items }
    }

    /// Builds the table from raw CSR arrays (e.g. read from a checkpoint), checking them.
    pub fn from_csr(offsets: Vec<usize>, items: Vec<u32>) -> Option<Self> {
        let ok = offsets.first() == Some(&0)
            && offsets.last() == Some(&items.len())
            && offsets.windows(2).all(|w| w[0] <= w[1] && items[w[0]..w[1]].windows(2).all(|p| p[0] < p[1]));
        ok.then_some(Self { offsets, items })
    }

    pub fn n_users(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Number of (user, item) pairs.
    pub fn nnz(&self) -> usize {
        self.items.len()
    }

    /// The sorted items of `user`.
    pub fn items(&self, user: u32) -> &[u32] {
        &self.items[self.offsets[user as usize]..self.offsets[user as usize + 1]]
    }

    pub fn contains(&self, user: u32, item: u32) -> bool {
        self.items(user).binary_search(&item).is_ok()
    }

    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    pub fn all_items(&self) -> &[u32] {
        &self.items
    }

    /// All (user, item) pairs in user order.
    pub fn pairs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (0..self.n_users() as u32).flat_map(move |u| self.items(u).iter().map(move |&i| (u, i)))
    }

    /// Each user's items of `self` and of `other` together (e.g. training and validation items,
    /// all masked when ranking for test).
    pub fn union(&self, other: &UserItems) -> UserItems {
        let n_users = self.n_users().max(other.n_users());
        fn side(t: &UserItems, u: u32) -> &[u32] {
            if (u as usize) < t.n_users() { t.items(u) } else { &[] }
        }
        let (mut offsets, mut items) = (vec![0usize], Vec::with_capacity(self.nnz() + other.nnz()));
        for u in 0..n_users as u32 {
            let (mut a, mut b) = (side(self, u).iter().peekable(), side(other, u).iter().peekable());
            // Merge two sorted unique rows into one.
            loop {
                let next = match (a.peek(), b.peek()) {
                    (Some(&&x), Some(&&y)) if x == y => {
                        b.next();
                        a.next()
                    }
                    (Some(&&x), Some(&&y)) => {
                        if x < y {
                            a.next()
                        } else {
                            b.next()
                        }
                    }
                    (Some(_), None) => a.next(),
                    (None, _) => b.next(),
                };
                let Some(&i) = next else { break };
                items.push(i);
            }
            offsets.push(items.len());
        }
        Self { offsets, items }
    }

    /// [`union`](Self::union) with `other` when there is one, else a copy: e.g. training items
    /// plus an optional validation split.
    pub fn union_with(&self, other: Option<&UserItems>) -> UserItems {
        other.map_or_else(|| self.clone(), |o| self.union(o))
    }

    /// How many users hold each item.
    pub fn item_counts(&self, n_items: usize) -> Vec<u32> {
        let mut c = vec![0u32; n_items];
        for &i in &self.items {
            c[i as usize] += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_sorted_unique_rows() {
        let t = UserItems::from_pairs(3, [(2, 5), (0, 3), (2, 1), (0, 3), (0, 1)]);
        assert_eq!(t.items(0), &[1, 3]);
        assert_eq!(t.items(1), &[] as &[u32]);
        assert_eq!(t.items(2), &[1, 5]);
        assert_eq!(t.nnz(), 4);
        assert!(t.contains(2, 5) && !t.contains(1, 5));
        assert_eq!(t.item_counts(6), vec![0, 2, 0, 1, 0, 1]);
        let back = UserItems::from_csr(t.offsets().to_vec(), t.all_items().to_vec()).unwrap();
        assert_eq!(back, t);
        assert!(UserItems::from_csr(vec![0, 2], vec![3, 1]).is_none());
        let other = UserItems::from_pairs(3, [(0, 2), (0, 3), (1, 4), (2, 0)]);
        let both = t.union(&other);
        assert_eq!(both, UserItems::from_pairs(3, t.pairs().chain(other.pairs())));
        assert_eq!(both.items(0), &[1, 2, 3]);
    }
}
