//! Where a run's interactions come from: the built-in demo data or a file, then cleaning.

use anyhow::Result;
use ncf_datasets::{Interactions, reader};

use crate::config::DataConfig;

/// Loads and cleans the interactions a run trains on, saying where they came from.
pub fn load(config: &DataConfig, seed: u64) -> Result<(Interactions, String)> {
    let (mut data, source) = match &config.path {
        None => {
            let d = &config.demo;
            (d.generate(seed), format!("built-in demo data ({} users × {} items, seed {seed})", d.users, d.items))
        }
        Some(path) => (reader::read(path, &config.read)?, path.display().to_string()),
    };
    let report = config.clean.apply(&mut data);
    let mut notes = Vec::new();
    if report.below_threshold > 0 {
        notes.push(format!("{} below the rating threshold", report.below_threshold));
    }
    if report.duplicates > 0 {
        notes.push(format!("{} duplicate pairs (latest kept)", report.duplicates));
    }
    if report.k_core > 0 {
        notes.push(format!("{} by the k-core filter", report.k_core));
    }
    let source = if notes.is_empty() { source } else { format!("{source}; dropped {}", notes.join(", ")) };
    Ok((data, source))
}
