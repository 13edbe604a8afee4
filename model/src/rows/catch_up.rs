//! The row-sparse Adam's catch-up math: the scalars of one step ([`RowStep`]), the constants every
//! row of a step shares ([`CatchUp`]) and the closed form of a row's factors after skipped steps
//! ([`CatchUp::factors_of`]), written once over [`Reals`] so that the flex kernel (f64 per row) and
//! the composed tensor ops of [`crate::optim`] (a column of rows) run the same formula. The CubeCL
//! kernel cannot call host code and repeats it in f32 (see `cube.rs`), with its constants taken
//! from [`CatchUp`]; `optim`'s fused-vs-composed tests on wgpu check that copy.

use std::ops::{Add, Div, Mul, Sub};

use burn::tensor::Tensor;

/// The scalars of one row update. `t` is the optimizer's step count including this step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowStep {
    pub t: f64,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty added to the rows' gradient.
    pub l2: f64,
}

impl RowStep {
    /// Per-row Adam factors for a row last updated at step `last` (0 = never): the closed-form
    /// catch-up of the skipped steps and the moment decays (see the module docs of
    /// [`crate::optim`]). Shared by every backend's kernel so they agree to the last bit on
    /// the per-row part; a kernel computing many rows builds the [`CatchUp`] once.
    pub fn row_factors(&self, last: f64) -> RowFactors {
        CatchUp::new(self).factors(last)
    }

    /// This step's bias-corrected step size and `1 / sqrt(1 - β2ᵗ)`.
    pub fn corrections(&self) -> (f64, f64) {
        let t = self.t as i32;
        (self.lr / (1.0 - self.beta1.powi(t)), 1.0 / (1.0 - self.beta2.powi(t)).sqrt())
    }
}

/// One step's constants of [`RowStep::row_factors`], so that each row costs only what depends
/// on it: on a large catalogue nearly every row of a batch comes back after a different number
/// of skipped steps, and the factors are computed per row.
#[derive(Debug, Clone, Copy)]
pub struct CatchUp {
    pub(super) t: f64,
    pub(super) lr: f64,
    pub(super) b1: f64,
    pub(super) b2: f64,
    pub(super) ln_b1: f64,
    pub(super) ln_b2: f64,
    /// r = β1 / sqrt(β2), ln r and 1 - r.
    pub(super) r: f64,
    pub(super) ln_r: f64,
    pub(super) one_r: f64,
}

impl CatchUp {
    pub fn new(s: &RowStep) -> Self {
        let r = s.beta1 / s.beta2.sqrt();
        Self { t: s.t, lr: s.lr, b1: s.beta1, b2: s.beta2, ln_b1: s.beta1.ln(), ln_b2: s.beta2.ln(), r, ln_r: r.ln(), one_r: 1.0 - r }
    }

    /// See [`RowStep::row_factors`].
    #[inline]
    pub fn factors(&self, last: f64) -> RowFactors {
        let k = self.t - 1.0 - last;
        if k <= 0.0 {
            // Updated on the previous step: plain Adam (what the closed form gives at k = 0).
            return RowFactors { catch_up: 0.0, decay1: self.b1, decay2: self.b2 };
        }
        self.factors_of(k, last)
    }

    /// The closed form for rows last updated at `last` after `k = t - 1 - last` skipped steps
    /// (k ≥ 0): dense Adam's moves over the skipped steps s+1..s+k (g = 0, s = last),
    ///   Σ_j lr/c1(s+j) · rʲ · m / (sqrt(v)/sqrt(c2(s+j))),  r = β1/sqrt(β2),
    /// with the bias corrections taken at the rʲ-weighted mean step s + j̄, and the moments'
    /// decays over the skipped steps and this one, β^(k+1).
    #[inline]
    pub(crate) fn factors_of<X: Reals>(&self, k: X, last: X) -> RowFactors<X> {
        // rᵏ by its own exp: β1ᵏ / sqrt(β2ᵏ) is 0/0 once both underflow (a row skipped for
        // ~750k steps at β2 = 0.999, e.g. one no batch has held yet).
        let rk = k.clone().scale(self.ln_r).exp();
        let one_rk = rk.clone().one_minus();
        let geo = one_rk.clone().scale(self.r).over(self.one_r);
        // j̄ = (1 - (k+1)rᵏ + k rᵏ⁺¹) / ((1-r)(1-rᵏ))
        let j_bar = (one_rk.clone() - (k.clone() * rk).scale(self.one_r)) / one_rk.scale(self.one_r).at_least(1e-12);
        let t_mid = last + j_bar;
        let c1 = t_mid.clone().scale(self.ln_b1).one_minus_exp().at_least(1e-12);
        let c2 = t_mid.scale(self.ln_b2).one_minus_exp().at_least(1e-12);
        RowFactors {
            catch_up: (geo * c2.sqrt() / c1).scale(self.lr),
            decay1: k.clone().scale(self.ln_b1).exp().scale(self.b1),
            decay2: k.scale(self.ln_b2).exp().scale(self.b2),
        }
    }
}

/// Per-row factors of a row-sparse Adam update, see [`RowStep::row_factors`]: for one row (f64)
/// or, in the composed tensor ops, a column of rows (`[r, 1]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowFactors<X = f64> {
    /// Multiplies `m / (sqrt(v) + ε)` for the moves of the skipped steps.
    pub catch_up: X,
    /// `β1^(k+1)` and `β2^(k+1)` for `k` skipped steps.
    pub decay1: X,
    pub decay2: X,
}

/// The arithmetic [`CatchUp::factors_of`] runs on: one row's value on the host, or every row's
/// at once as a tensor column. Each method is one IEEE operation (per element), so the formula
/// rounds the same way wherever it runs at the same precision.
pub(crate) trait Reals: Clone + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> {
    /// `self · c`.
    fn scale(self, c: f64) -> Self;
    /// `self / c`.
    fn over(self, c: f64) -> Self;
    /// `1 - self`.
    fn one_minus(self) -> Self;
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    /// `1 - eˢᵉˡᶠ`.
    fn one_minus_exp(self) -> Self;
    /// `max(self, c)`.
    fn at_least(self, c: f64) -> Self;
}

impl Reals for f64 {
    #[inline]
    fn scale(self, c: f64) -> Self {
        self * c
    }
    #[inline]
    fn over(self, c: f64) -> Self {
        self / c
    }
    #[inline]
    fn one_minus(self) -> Self {
        1.0 - self
    }
    #[inline]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline]
    fn one_minus_exp(self) -> Self {
        // eˣ below 2⁻⁵⁴ leaves exactly 1 in f64, so its exp is skipped.
        if self < -38.0 { 1.0 } else { 1.0 - f64::exp(self) }
    }
    #[inline]
    fn at_least(self, c: f64) -> Self {
        self.max(c)
    }
}

impl Reals for Tensor<2> {
    fn scale(self, c: f64) -> Self {
        self.mul_scalar(c)
    }
    fn over(self, c: f64) -> Self {
        self.div_scalar(c)
    }
    fn one_minus(self) -> Self {
        self.neg().add_scalar(1.0)
    }
    fn exp(self) -> Self {
        Tensor::exp(self)
    }
    fn sqrt(self) -> Self {
        Tensor::sqrt(self)
    }
    fn one_minus_exp(self) -> Self {
        Tensor::exp(self).neg().add_scalar(1.0)
    }
    fn at_least(self, c: f64) -> Self {
        self.clamp_min(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense Adam's moves over `k` skipped steps after `last`, summed step by step: what the
    /// closed form stands for (as `catch_up`: the factor of `m / sqrt(v)`).
    fn summed(s: &RowStep, last: f64) -> f64 {
        let r = s.beta1 / s.beta2.sqrt();
        let k = (s.t - 1.0 - last) as i32;
        (1..=k)
            .map(|j| {
                let at = last + f64::from(j);
                s.lr / (1.0 - s.beta1.powf(at)) * r.powi(j) * (1.0 - s.beta2.powf(at)).sqrt()
            })
            .sum()
    }

    #[test]
    fn catch_up_factors_follow_dense_adams_skipped_steps() {
        for (beta1, beta2) in [(0.9, 0.999), (0.5, 0.99), (0.99, 0.9999)] {
            for t in [2.0, 3.0, 50.0, 400.0, 5_000.0, 200_000.0, 3e6] {
                let s = RowStep { t, lr: 0.001, beta1, beta2, eps: 1e-8, l2: 0.0 };
                let c = CatchUp::new(&s);
                for last in [0.0, 1.0, 7.0, (t / 2.0).floor(), t - 3.0, t - 2.0].into_iter().filter(|&l| l >= 0.0 && l < t - 1.0) {
                    let (f, k) = (c.factors(last), t - 1.0 - last);
                    let what = format!("β {beta1}/{beta2} t {t} last {last}");
                    assert_eq!(f, s.row_factors(last), "{what}");
                    let decay = |b: f64| (k * b.ln()).exp() * b;
                    assert!((f.decay1 - decay(beta1)).abs() <= 1e-12 * decay(beta1), "{what}: {f:?}");
                    assert!((f.decay2 - decay(beta2)).abs() <= 1e-12 * decay(beta2), "{what}: {f:?}");
                    // Exact where the bias corrections stay put over the skipped steps (both
                    // βˡᵃˢᵗ past f64's resolution, late in a run); where they move, the closed
                    // form takes them at one mean step: within 30% on these cases (27% for a row
                    // never updated before, at β1 = 0.99).
                    if k < 5e4 {
                        let want = summed(&s, last);
                        let settled = last * beta1.ln() < -38.0 && last * beta2.ln() < -38.0;
                        let tol = if settled { 1e-9 } else { 0.3 };
                        assert!((f.catch_up - want).abs() <= tol * want, "{what}: closed form {} vs summed {want}", f.catch_up);
                    }
                }
                // A row never updated, after as many steps as β2ᵏ takes to underflow: finite.
                let f = c.factors(0.0);
                assert!(f.catch_up.is_finite() && f.decay1.is_finite() && f.decay2.is_finite(), "{f:?}");
                // Updated on the previous step: no catch-up, one step's decay, which is what the
                // closed form gives at k = 0 (the early return only skips the work).
                assert_eq!(c.factors(t - 1.0), RowFactors { catch_up: 0.0, decay1: beta1, decay2: beta2 });
                assert_eq!(c.factors_of(0.0, t - 1.0), c.factors(t - 1.0));
            }
        }
    }

    /// The tensor column and the host give the same factors up to f32 rounding (the composed
    /// ops run in f32): the one formula on both.
    #[cfg(feature = "flex")]
    #[test]
    fn the_tensor_column_runs_the_host_formula() {
        use burn::tensor::{Device, TensorData};
        let d = Device::flex();
        let s = RowStep { t: 5_000.0, lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, l2: 0.0 };
        let c = CatchUp::new(&s);
        let lasts: Vec<f32> = vec![0.0, 1.0, 7.0, 100.0, 2_500.0, 4_990.0, 4_998.0, 4_999.0];
        let n = lasts.len();
        let last = Tensor::<2>::from_data(TensorData::new(lasts.clone(), [n, 1]), &d);
        let k = last.clone().neg().add_scalar(s.t - 1.0);
        let col = c.factors_of(k, last);
        let values = |t: Tensor<2>| t.into_data().try_into_vec_as::<f32>().unwrap();
        let (cu, d1, d2) = (values(col.catch_up), values(col.decay1), values(col.decay2));
        for (i, &l) in lasts.iter().enumerate() {
            let f = c.factors(f64::from(l));
            for (what, got, want) in [("catch_up", cu[i], f.catch_up), ("decay1", d1[i], f.decay1), ("decay2", d2[i], f.decay2)] {
                assert!((f64::from(got) - want).abs() <= 1e-5 * want.abs() + 1e-30, "last {l} {what}: column {got} vs host {want}");
            }
        }
    }
}
