use std::time::Instant;
use burn::tensor::{Device, Int, Tensor, TensorData, Distribution};
use ncf_model::rows::{self, AdamRows, RowStep};

fn main() {
    unsafe extern "C" { fn mallopt(param: i32, value: i32) -> i32; }
    unsafe { mallopt(-3, 32 << 20); mallopt(-1, 512 << 20); mallopt(-2, 64 << 20); }
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (n, r, steps) = (args[0], args[1], args[2]);
    let w = 40;
    let d = Device::flex();
    let mut st = AdamRows { table: Tensor::random([n, w], Distribution::Normal(0.0, 0.01), &d), m: Tensor::zeros([n, w], &d), v: Tensor::zeros([n, w], &d), last: Tensor::zeros([n], &d) };
    let mut s: u64 = 99;
    let mut sets = Vec::new();
    for _ in 0..64 {
        let mut seen = std::collections::HashSet::new();
        let mut ids = Vec::new();
        while ids.len() < r.min(n) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; let x = (s % n as u64) as i32; if seen.insert(x) { ids.push(x); } }
        sets.push(ids);
    }
    let grad = Tensor::<2>::random([r.min(n), w], Distribution::Normal(0.0, 0.01), &d);
    let mut total = 0.0;
    for t in 1..=steps + 20 {
        let ids = sets[t % 64].clone();
        let k = ids.len();
        let rows_t = Tensor::<1, Int>::from_data(TensorData::new(ids, [k]), &d);
        let step = RowStep { t: t as f64, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, l2: 0.0 };
        let t0 = Instant::now();
        st = rows::adam_rows(st, rows_t, grad.clone(), step);
        if t > 20 { total += t0.elapsed().as_secs_f64(); }
    }
    println!("n {n} rows {r}: {:.3} ms/update", total * 1e3 / steps as f64);
}
