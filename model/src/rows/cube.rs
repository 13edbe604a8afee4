//! The CubeCL kernels (wgpu, CUDA): one unit per batch row, walking the row's columns, so a
//! row's last-step stamp is read and written by the unit that owns the row.

use super::{CatchUp, RowStep, RowUpdate};
use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::{DType, IntDType};
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adam_rows_kernel(
    table: &mut Tensor<f32>,
    m: &mut Tensor<f32>,
    v: &mut Tensor<f32>,
    last: &mut Tensor<f32>,
    rows: &Tensor<i32>,
    grad: &Tensor<f32>,
    t: f32,
    lr: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    l2: f32,
    // This step's bias-corrected step size and 1/sqrt(1 - β2ᵗ).
    step_size: f32,
    inv_sqrt_c2: f32,
    // ln β1, ln β2, r = β1/sqrt(β2) and ln r, for the catch-up factors (from `CatchUp`).
    ln_b1: f32,
    ln_b2: f32,
    r: f32,
    ln_r: f32,
    // 1 - β1, 1 - β2 and 1 - r, taken in f64 as the composed ops take them: 1 - β2 from β2 =
    // 0.999 rounded to f32 is 1.3e-5 of itself short, a bias in every v that training amplified
    // into weights 0.04 away from the composed path's after one epoch.
    one_b1: f32,
    one_b2: f32,
    one_r: f32,
    width: u32,
) {
    if ABSOLUTE_POS >= rows.len() {
        terminate!();
    }
    let row = usize::cast_from(rows[ABSOLUTE_POS]);
    let w = width as usize;
    let prev = last[row];
    let k = t - 1.0 - prev;
    let mut catch_up = 0.0;
    let mut d1 = b1;
    let mut d2 = b2;
    if k > 0.0 {
        // `CatchUp::factors_of`, the same operations in the same order in f32: `#[cube]` code
        // cannot call host code, so this is the formula's one copy. `optim`'s fused tests on
        // wgpu check it against the composed ops, which run `factors_of`.
        let rk = f32::exp(k * ln_r);
        let geo = (1.0 - rk) * r / one_r;
        let j_bar = ((1.0 - rk) - k * rk * one_r) / f32::max((1.0 - rk) * one_r, 1e-12);
        let t_mid = prev + j_bar;
        let c1 = f32::max(1.0 - f32::exp(t_mid * ln_b1), 1e-12);
        let c2 = f32::max(1.0 - f32::exp(t_mid * ln_b2), 1e-12);
        catch_up = geo * f32::sqrt(c2) / c1 * lr;
        d1 = f32::exp(k * ln_b1) * b1;
        d2 = f32::exp(k * ln_b2) * b2;
    }
    let base = row * w;
    let gbase = ABSOLUTE_POS * w;
    for c in 0..w {
        let x = table[base + c];
        let g = grad[gbase + c] + l2 * x;
        let m0 = m[base + c];
        let v0 = v[base + c];
        let catch = m0 * catch_up / (f32::sqrt(v0) + eps);
        // The flex kernel's association (`flex::adam_row`), so the two round alike.
        let m1 = m0 * d1 + g * one_b1;
        let v1 = v0 * d2 + (g * g) * one_b2;
        table[base + c] = x - (m1 * step_size / (f32::sqrt(v1) * inv_sqrt_c2 + eps) + catch);
        m[base + c] = m1;
        v[base + c] = v1;
    }
    last[row] = t;
}

#[cube(launch)]
fn sgd_rows_kernel(table: &mut Tensor<f32>, rows: &Tensor<i32>, grad: &Tensor<f32>, lr: f32, l2: f32, width: u32) {
    if ABSOLUTE_POS >= rows.len() {
        terminate!();
    }
    let w = width as usize;
    let base = usize::cast_from(rows[ABSOLUTE_POS]) * w;
    let gbase = ABSOLUTE_POS * w;
    for c in 0..w {
        let x = table[base + c];
        table[base + c] = x - lr * (grad[gbase + c] + l2 * x);
    }
}

/// A contiguous f32 tensor this kernel may write in place (copied if shared).
fn writable(t: CubeTensor) -> CubeTensor {
    assert_eq!(t.dtype, DType::F32, "row updates run on f32 tables");
    let t = if t.is_contiguous() { t } else { burn_cubecl::kernel::into_contiguous(t) };
    if t.can_mut() { t } else { t.copy() }
}

fn readable(t: CubeTensor) -> CubeTensor {
    if t.is_contiguous() { t } else { burn_cubecl::kernel::into_contiguous(t) }
}

fn int32(rows: CubeTensor) -> CubeTensor {
    let rows = if rows.dtype == DType::I32 { rows } else { CubeBackend::int_cast(rows, IntDType::I32) };
    readable(rows)
}

/// One unit per batch row.
fn grid(client: &cubecl::client::Client, rows: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new(client, rows);
    (calculate_cube_count_elemwise(client, rows, cube_dim), cube_dim)
}

impl RowUpdate for CubeBackend {
    fn adam_rows(
        table: CubeTensor,
        m: CubeTensor,
        v: CubeTensor,
        last: CubeTensor,
        rows: CubeTensor,
        grad: CubeTensor,
        s: RowStep,
    ) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
        let (table, m, v, last) = (writable(table), writable(m), writable(v), writable(last));
        let (rows, grad) = (int32(rows), readable(grad));
        let width = table.meta.shape()[1];
        let r = rows.meta.shape()[0];
        let (step_size, inv_sqrt_c2) = s.corrections();
        let c = CatchUp::new(&s);
        let client = table.client.clone();
        let (count, cube_dim) = grid(&client, r);
        adam_rows_kernel::launch(
            &client,
            count,
            cube_dim,
            table.clone().into_tensor_arg(),
            m.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            last.clone().into_tensor_arg(),
            rows.into_tensor_arg(),
            grad.into_tensor_arg(),
            s.t as f32,
            s.lr as f32,
            s.beta1 as f32,
            s.beta2 as f32,
            s.eps as f32,
            s.l2 as f32,
            step_size as f32,
            inv_sqrt_c2 as f32,
            c.ln_b1 as f32,
            c.ln_b2 as f32,
            c.r as f32,
            c.ln_r as f32,
            (1.0 - s.beta1) as f32,
            (1.0 - s.beta2) as f32,
            c.one_r as f32,
            width as u32,
        );
        (table, m, v, last)
    }

    fn gather_rows(table: CubeTensor, rows: CubeTensor) -> CubeTensor {
        CubeBackend::float_select(table, 0, rows)
    }

    fn sgd_rows(table: CubeTensor, rows: CubeTensor, grad: CubeTensor, s: RowStep) -> CubeTensor {
        let table = writable(table);
        let (rows, grad) = (int32(rows), readable(grad));
        let width = table.meta.shape()[1];
        let r = rows.meta.shape()[0];
        let client = table.client.clone();
        let (count, cube_dim) = grid(&client, r);
        sgd_rows_kernel::launch(
            &client,
            count,
            cube_dim,
            table.clone().into_tensor_arg(),
            rows.into_tensor_arg(),
            grad.into_tensor_arg(),
            s.lr as f32,
            s.l2 as f32,
            width as u32,
        );
        table
    }
}
