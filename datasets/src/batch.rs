//! Row-indexed training batches: the unique users and items of a batch and, per sample, the
//! position of its user and item among them. Models gather only these rows, so gradients and
//! optimizer updates touch only the rows in the batch.

use crate::history::HistoryDraws;

/// One training batch in row-indexed form, packed into a single integer buffer for upload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// `[uniq_users | user_pos | uniq_items | item_pos | labels | neg_pos | history]`, all as
    /// i32; `neg_pos` (the batch's shared negatives as indices into `uniq_items`) may be empty.
    /// `history`, when drawn, is `[hist_item_pos | hist_user_pos | hist_count]`: each history
    /// entry's index into `uniq_items` and into `uniq_users`, then each unique user's count.
    pub packed: Vec<i32>,
    pub n_users: usize,
    pub n_items: usize,
    pub len: usize,
    /// History entries (`None`: no history drawn).
    pub n_hist: Option<usize>,
}

impl Batch {
    /// Ranges of the parts inside [`Batch::packed`]; the last three are empty without history.
    pub fn layout(&self) -> [std::ops::Range<usize>; 9] {
        let a = self.n_users;
        let b = a + self.len;
        let c = b + self.n_items;
        let d = c + self.len;
        let e = d + self.len;
        let (h, counts) = self.n_hist.map_or((0, 0), |h| (h, self.n_users));
        let end = self.packed.len();
        let f = end - 2 * h - counts;
        [0..a, a..b, b..c, c..d, d..e, e..f, f..f + h, f + h..f + 2 * h, f + 2 * h..end]
    }

    pub fn uniq_users(&self) -> &[i32] {
        &self.packed[self.layout()[0].clone()]
    }
    pub fn user_pos(&self) -> &[i32] {
        &self.packed[self.layout()[1].clone()]
    }
    pub fn uniq_items(&self) -> &[i32] {
        &self.packed[self.layout()[2].clone()]
    }
    pub fn item_pos(&self) -> &[i32] {
        &self.packed[self.layout()[3].clone()]
    }
    pub fn labels(&self) -> &[i32] {
        &self.packed[self.layout()[4].clone()]
    }
    pub fn neg_pos(&self) -> &[i32] {
        &self.packed[self.layout()[5].clone()]
    }
    pub fn hist_item_pos(&self) -> &[i32] {
        &self.packed[self.layout()[6].clone()]
    }
    pub fn hist_user_pos(&self) -> &[i32] {
        &self.packed[self.layout()[7].clone()]
    }
    pub fn hist_count(&self) -> &[i32] {
        &self.packed[self.layout()[8].clone()]
    }
}

/// Builds batches with O(batch) work: stamp arrays sized to the tables are allocated once.
pub struct BatchBuilder {
    user_stamp: Vec<(u32, i32)>,
    item_stamp: Vec<(u32, i32)>,
    generation: u32,
}

impl BatchBuilder {
    pub fn new(n_users: usize, n_items: usize) -> Self {
        Self { user_stamp: vec![(0, 0); n_users], item_stamp: vec![(0, 0); n_items], generation: 0 }
    }

    /// Packs samples `user[k], item[k], label[k]` into a row-indexed batch.
    pub fn build(&mut self, user: &[u32], item: &[u32], label: &[f32]) -> Batch {
        self.build_shared(user, item, label, &[], None)
    }

    /// [`build`](Self::build) with `negatives` shared by every sample of the batch, their rows
    /// among the batch's unique items (after the samples' own), and with `history` (the draws,
    /// epoch and batch) each unique user's history items, their rows among the unique items too.
    pub fn build_shared(&mut self, user: &[u32], item: &[u32], label: &[f32], negatives: &[u32], history: Option<(&HistoryDraws, u64, u64)>) -> Batch {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.user_stamp.iter_mut().for_each(|s| s.0 = 0);
            self.item_stamp.iter_mut().for_each(|s| s.0 = 0);
            self.generation = 1;
        }
        let g = self.generation;
        let len = user.len();
        // Positions of `ids` among `uniq`, appending the ids not in it yet.
        let dedupe = |ids: &[u32], stamp: &mut [(u32, i32)], uniq: &mut Vec<i32>| -> Vec<i32> {
            ids.iter()
                .map(|&id| {
                    let s = &mut stamp[id as usize];
                    if s.0 != g {
                        *s = (g, uniq.len() as i32);
                        uniq.push(id as i32);
                    }
                    s.1
                })
                .collect()
        };
        let (mut uu, mut ui) = (Vec::new(), Vec::new());
        let up = dedupe(user, &mut self.user_stamp, &mut uu);
        let ip = dedupe(item, &mut self.item_stamp, &mut ui);
        let np = dedupe(negatives, &mut self.item_stamp, &mut ui);
        let history = history.map(|(draws, epoch, batch)| {
            let (items, counts) = draws.draw(epoch, batch, &uu);
            let owners: Vec<i32> = counts.iter().enumerate().flat_map(|(r, &c)| std::iter::repeat_n(r as i32, c as usize)).collect();
            (dedupe(&items, &mut self.item_stamp, &mut ui), owners, counts)
        });
        let n_hist = history.as_ref().map(|h| h.0.len());
        let mut packed = Vec::with_capacity(uu.len() + ui.len() + 3 * len + negatives.len() + n_hist.map_or(0, |h| 2 * h + uu.len()));
        packed.extend_from_slice(&uu);
        packed.extend_from_slice(&up);
        packed.extend_from_slice(&ui);
        packed.extend_from_slice(&ip);
        packed.extend(label.iter().map(|&l| (l > 0.5) as i32));
        packed.extend_from_slice(&np);
        if let Some((pos, owners, counts)) = history {
            packed.extend(pos.into_iter().chain(owners).chain(counts));
        }
        Batch { packed, n_users: uu.len(), n_items: ui.len(), len, n_hist }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserItems;

    #[test]
    fn positions_index_the_unique_rows() {
        let mut b = BatchBuilder::new(10, 10);
        let (u, i, l) = ([3, 1, 3, 7], [2, 2, 5, 2], [1.0, 0.0, 0.0, 1.0]);
        for _ in 0..2 {
            let batch = b.build(&u, &i, &l);
            assert_eq!(batch.uniq_users(), &[3, 1, 7]);
            assert_eq!(batch.uniq_items(), &[2, 5]);
            for k in 0..4 {
                assert_eq!(batch.uniq_users()[batch.user_pos()[k] as usize], u[k] as i32);
                assert_eq!(batch.uniq_items()[batch.item_pos()[k] as usize], i[k] as i32);
            }
            assert_eq!(batch.labels(), &[1, 0, 0, 1]);
            assert!(batch.neg_pos().is_empty());
        }
        // Shared negatives: a known item keeps its row, new ones are appended.
        let batch = b.build_shared(&u, &i, &l, &[9, 5, 9, 0], None);
        assert_eq!(batch.uniq_items(), &[2, 5, 9, 0]);
        assert_eq!(batch.neg_pos(), &[2, 1, 2, 3]);
        assert_eq!(batch.labels(), &[1, 0, 0, 1]);
        // Histories: users 3, 1 and 7 trained on {2, 8}, {} and {8}; their rows join the items.
        let train = UserItems::from_pairs(10, [(3, 2), (3, 8), (7, 8)]);
        let draws = HistoryDraws::new(std::sync::Arc::new(train), 0, 1);
        let batch = b.build_shared(&u, &i, &l, &[9], Some((&draws, 1, 0)));
        assert_eq!(batch.uniq_items(), &[2, 5, 9, 8]);
        assert_eq!(batch.neg_pos(), &[2]);
        assert_eq!(batch.hist_item_pos(), &[0, 3, 3]);
        assert_eq!(batch.hist_user_pos(), &[0, 0, 2]);
        assert_eq!(batch.hist_count(), &[2, 0, 1]);
    }
}
