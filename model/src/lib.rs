//! NCF models on burn: GMF, MLP, NeuMF (He et al. 2017) and an MF baseline behind one contract,
//! with their losses, row-sparse optimizers, training step and metrics; and EASE, an item-item
//! model fitted in closed form behind the same scoring contract. Knows nothing of files
//! or command lines; every tensor lives on the `Device` the caller picks.

pub mod config;
pub mod data_parallel;
pub mod ease;
pub mod eval;
pub mod features;
pub mod head_grad;
pub mod loss;
pub mod metrics;
pub mod ncf;
pub mod optim;
// Built with neither kernel backend, burn's generated routing never reads the kernels' scalars.
#[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(unused_variables))]
pub mod rows;
pub mod scatter;
#[cfg(feature = "flex")]
mod second_core;
pub mod step;

pub use config::{ModelConfig, ModelKind, TableLayout};
pub use data_parallel::DataParallel;
pub use features::{FeatureRows, HostFeatureRows};
pub use loss::{LossConfig, LossKind};
pub use ncf::{COSINE_EPS, Head, HistoryRows, ItemSide, Ncf};
pub use optim::{LrSchedule, OptimConfig, OptimKind, Optimizer};
pub use step::{SharedNegatives, StepInput, train_step};
