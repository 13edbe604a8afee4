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

/// Reads a float tensor and passes its values to `f` without copying them into a new vector
/// where the backend allows (flex hands over its own buffer); counts the read.
pub fn with_f32<const D: usize, R>(tensor: Tensor<D>, f: impl FnOnce(&[f32]) -> R) -> R {
    count();
    let data = tensor.into_data().convert::<f32>();
    match data.as_slice::<f32>() {
        Ok(values) => f(values),
        // Bytes not aligned for f32: copy once.
        Err(_) => f(&data.try_into_vec_as::<f32>().expect("float data")),
    }
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
