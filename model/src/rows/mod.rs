//! Fused row updates of the embedding tables, through burn's backend-extension point.
//!
//! The composed row-sparse Adam in [`crate::optim`] is ~30 tensor ops per table per step: 8 row
//! gathers and scatters and a chain of element-wise passes, each allocating its result. Here one
//! pass walks the batch's unique rows and updates the table, both moments and the last-step
//! stamp in place, reading each row once: native Rust on flex (prefetching, AVX2 when the CPU has
//! it), a CubeCL kernel on the cubecl backends (wgpu, CUDA). Backends listed in [`RowUpdate`]'s
//! extension attribute run these kernels; every other device (ndarray) and `optim.fused = false`
//! keep the composed path. Both give the same numbers up to f32 rounding (`optim`'s fused tests,
//! on flex and on wgpu).
//!
//! By concern: the catch-up math of the row-sparse Adam (`catch_up.rs`), the flex kernels
//! (`flex.rs`), the CubeCL kernels (`cube.rs`), and the work a training loop carries from one step
//! to the next on flex's first helper (`pipeline.rs`: rows fetched ahead, an update left running).

mod catch_up;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "flex")]
pub(crate) mod flex;
mod pipeline;

pub use catch_up::{CatchUp, RowFactors, RowStep};
pub use pipeline::{Later, Pending, Pipeline, beside, gather_ahead, later, ready};

use burn::backend::backend_extension;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{Device, Int, Tensor};

/// Row-sparse table updates as one kernel per table and step.
///
/// # Shapes
/// - table, m, v: `[n, width]`; last: `[n]`; rows: `[r]` (unique); grad: `[r, width]`
#[backend_extension(Flex: cfg(feature = "flex"), Cube: cfg(feature = "cube"))]
pub trait RowUpdate: burn::backend::Backend {
    /// Row-sparse Adam with catch-up at `rows`; returns the updated (table, m, v, last).
    fn adam_rows(
        table: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        last: FloatTensor<Self>,
        rows: IntTensor<Self>,
        grad: FloatTensor<Self>,
        step: RowStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The table's rows at `rows`, in order: `[r, width]`. The same as `select` on dim 0, with
    /// the next rows prefetched while one is copied (a large table's rows are cache misses).
    fn gather_rows(table: FloatTensor<Self>, rows: IntTensor<Self>) -> FloatTensor<Self>;

    /// SGD at `rows`: `table[rows] -= lr · (grad + l2 · table[rows])`.
    fn sgd_rows(table: FloatTensor<Self>, rows: IntTensor<Self>, grad: FloatTensor<Self>, step: RowStep) -> FloatTensor<Self>;
}

/// Whether `device` is a flex device (in a build with flex's kernels).
pub(crate) fn on_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    if matches!(device.as_dispatch(), burn::backend::DispatchDevice::Flex(_)) {
        return true;
    }
    let _ = device;
    false
}

/// Whether `device` runs the fused kernels (otherwise the caller composes tensor ops).
pub fn fused_on(device: &Device) -> bool {
    if on_flex(device) {
        return true;
    }
    #[cfg(feature = "cube")]
    if matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_)) {
        return true;
    }
    let _ = device;
    false
}

/// Tells the flex kernels that `table` will be updated at about `rows` rows later in this step,
/// so that the helper threads are awake by then if they are to help (see [`crate::second_core`]).
pub fn expect_update(table: &Tensor<2>, rows: usize) {
    if update_beside(table, rows) {
        #[cfg(feature = "flex")]
        crate::second_core::expect_work(std::time::Duration::from_millis(5));
    }
}

/// Whether the fused Adam update of `table` at `rows` unique rows had best start on the second
/// thread while this one does the step's other updates ([`beside`]), that thread having read
/// the rows of a table past the caches into its own during the forward and backward passes
/// ([`gather_ahead`]): flex,
/// and enough rows to pay for the hand-over. (NeuMF factor 8, batch 4096, ML-1M's 3706 items:
/// 1.83 → 1.77 ms/step; a table past the caches also shares its update between the threads.)
pub fn update_beside(table: &Tensor<2>, rows: usize) -> bool {
    #[cfg(feature = "flex")]
    if on_flex(&table.device()) {
        return rows >= flex::MIN_SHARED_ROWS;
    }
    let _ = (table, rows);
    false
}

/// Adam state of a table as tensors, for the fused update.
pub struct AdamRows {
    pub table: Tensor<2>,
    pub m: Tensor<2>,
    pub v: Tensor<2>,
    pub last: Tensor<1>,
}

/// Fused [`RowUpdate::adam_rows`] on a device where [`fused_on`] holds.
pub fn adam_rows(state: AdamRows, rows: Tensor<1, Int>, grad: Tensor<2>, step: RowStep) -> AdamRows {
    use burn::backend::Dispatch;
    let (table, m, v, last) = <Dispatch as RowUpdate>::adam_rows(
        state.table.into_dispatch(),
        state.m.into_dispatch(),
        state.v.into_dispatch(),
        state.last.into_dispatch(),
        rows.into_dispatch(),
        grad.into_dispatch(),
        step,
    );
    AdamRows { table: Tensor::from_dispatch(table), m: Tensor::from_dispatch(m), v: Tensor::from_dispatch(v), last: Tensor::from_dispatch(last) }
}

/// `table.select(0, rows)`, through [`RowUpdate::gather_rows`] where [`fused_on`] holds.
pub fn gather(table: Tensor<2>, rows: Tensor<1, Int>) -> Tensor<2> {
    use burn::backend::Dispatch;
    if !fused_on(&table.device()) {
        return table.select(0, rows);
    }
    Tensor::from_dispatch(<Dispatch as RowUpdate>::gather_rows(table.into_dispatch(), rows.into_dispatch()))
}

/// Fused [`RowUpdate::sgd_rows`] on a device where [`fused_on`] holds.
pub fn sgd_rows(table: Tensor<2>, rows: Tensor<1, Int>, grad: Tensor<2>, step: RowStep) -> Tensor<2> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as RowUpdate>::sgd_rows(table.into_dispatch(), rows.into_dispatch(), grad.into_dispatch(), step))
}
