//! Interaction data for ncf: read files, re-index ids, clean, split, and sample negatives.
//!
//! Data flows one way: files → [`Interactions`] → [`Split`] → per-epoch samples → [`Batch`]es.
//! Nothing here knows about models or devices.

pub mod batch;
pub mod candidates;
pub mod clean;
pub mod error;
mod fast_hash;
pub mod features;
pub mod given;
pub mod history;
pub mod interactions;
pub mod parts;
pub mod reader;
pub mod rng;
pub mod sampler;
pub mod split;
pub mod stats;
pub mod synthetic;
pub mod table;
pub mod user_items;

pub use batch::{Batch, BatchBuilder};
pub use candidates::SampledCandidates;
pub use clean::{CleanConfig, CleanReport};
pub use error::DataError;
pub use features::{EntityFeatures, FeatureConfig, FeatureVocab, FeaturesConfig, SideFeatures};
pub use given::{Given, GivenReport};
pub use history::HistoryDraws;
pub use interactions::{ByUser, IdMap, Interactions};
pub use reader::{ColumnRef, Format, ReadOptions};
pub use sampler::{EpochSamples, NegativeSampler, SamplerConfig, SharedDraws};
pub use split::{Split, SplitConfig, SplitGroup, SplitMethod, drop_unsplittable_users};
pub use stats::{Quantiles, Stats};
pub use synthetic::{DemoConfig, shaped_split};
pub use table::{KeyedTable, ParquetSink};
pub use user_items::UserItems;
