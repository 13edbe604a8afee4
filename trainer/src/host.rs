//! The one door from device to host. Every read the trainer makes goes through this module,
//! which counts, so tests and `--profile` can prove the training step makes none.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{Int, Tensor};

static READS: AtomicU64 = AtomicU64::new(0);

fn count() {
    READS.fetch_add(1, Ordering::Relaxed);
}

/// Reads a float tensor as `Vec<f32>`, counting the read.
pub fn read_f32<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    count();
    tensor.into_data().try_into_vec_as::<f32>().expect("float data")
}

/// Reads an int tensor as `Vec<i64>`, counting the read.
pub fn read_i64<const D: usize>(tensor: Tensor<D, Int>) -> Vec<i64> {
    count();
    tensor.into_data().try_into_vec_as::<i64>().expect("int data")
}

/// Device→host reads so far in this process.
pub fn reads() -> u64 {
    READS.load(Ordering::Relaxed)
}
