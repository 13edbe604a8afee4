//! `RUN/run.json`: what produced a run and how it went. The command line, the resolved config's
//! hash, ncf's version and git commit, and per invocation (a `--resume` adds one) the backend,
//! adapter, threads, host, start and end times and the wall time of each phase; the best epoch
//! with its validation and test metrics. Rewritten after every epoch, so a killed run still says
//! how far it got. `metrics.csv` stays the per-epoch log.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::backend::Selected;
use crate::config::RunConfig;
use crate::history::{self, EpochRecord, SelectOn};
use crate::output;

/// The manifest's file name in a run directory.
pub const FILE: &str = "run.json";

/// Bumped when a field changes meaning; readers accept older versions' missing fields.
pub const MANIFEST_VERSION: u32 = 1;

/// How the latest invocation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Training, or killed while training (`updated_at` tells when it last wrote).
    Running,
    /// Every configured epoch ran.
    Finished,
    /// Early stopping ended it (`train.patience`).
    StoppedEarly,
    /// `ncf tune` stopped it as hopeless.
    Pruned,
    /// An error ended it (`error` in its invocation).
    Failed,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Finished => "finished",
            Self::StoppedEarly => "stopped early",
            Self::Pruned => "pruned",
            Self::Failed => "failed",
        }
    }
}

/// The chosen epoch and its metrics, named as in `metrics.csv` without the split prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    pub epoch: usize,
    /// The split it was chosen on: valid, test (paper protocol) or last (nothing chosen).
    pub chosen_on: SelectOn,
    /// The metric it was chosen by, e.g. `recall@20`.
    pub metric: String,
    pub valid: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
}

/// Seconds of wall time per phase of one invocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    /// Reading, cleaning and splitting the data, drawing evaluation candidates.
    pub data: f64,
    /// Backend start, model initialisation (or resume), evaluation uploads.
    pub setup: f64,
    /// Sampling and training steps.
    pub train: f64,
    /// Per-epoch evaluation.
    pub eval: f64,
    /// Checkpoints, metrics.csv, curves.
    pub write: f64,
    /// The whole invocation so far.
    pub total: f64,
}

/// One `ncf train` process that worked on the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    pub command_line: Vec<String>,
    /// UTC, RFC 3339.
    pub started_at: String,
    /// When it last wrote the manifest.
    pub updated_at: String,
    /// When it ended (finished, stopped early or failed); absent while running or if killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    pub backend: String,
    pub adapter: String,
    /// CPU threads the run used (`--threads`, NCF_THREADS, default: all available).
    pub threads: usize,
    pub host: String,
    /// The first epoch it trained (1 unless resumed).
    pub first_epoch: usize,
    /// With `--devices`: the devices it trained on, replica 0 (evaluated, checkpointed) first;
    /// empty: one device, `adapter`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    pub phases: Phases,
    /// What ended a failed invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    /// The ncf that last wrote the run.
    pub ncf_version: String,
    /// The git commit that ncf was built from, when built from a checkout.
    #[serde(default)]
    pub git_commit: Option<String>,
    /// FNV-1a 64 of the resolved `config.toml`: equal hashes, equal configs.
    pub config_hash: String,
    pub model: String,
    pub loss: String,
    pub status: Status,
    /// Epochs completed.
    pub epochs: usize,
    #[serde(default)]
    pub best: Option<BestEpoch>,
    /// Oldest first; the last one is the latest.
    pub invocations: Vec<Invocation>,
}

impl Manifest {
    /// Reads `RUN/run.json`; `None` when the run predates manifests.
    pub fn read(run: &Path) -> Result<Option<Self>> {
        let path = run.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text).map(Some).with_context(|| format!("{}: malformed run manifest", path.display()))
    }

    /// Wall time over every invocation.
    pub fn wall_secs(&self) -> f64 {
        self.invocations.iter().map(|i| i.phases.total).sum()
    }

    pub fn latest(&self) -> Option<&Invocation> {
        self.invocations.last()
    }
}

/// FNV-1a, 64 bits: a stable hash (unlike std's) for config identities.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The hash `run.json` records for a resolved config.
pub fn config_hash(config: &RunConfig) -> String {
    format!("{:016x}", fnv1a64(config.to_toml().as_bytes()))
}

/// `t` as UTC RFC 3339 to the second, e.g. `2026-12-03T11:28:11Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// The machine's host name.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    #[cfg(unix)]
    // SAFETY: `buf` is writable for its whole length, which is passed; gethostname writes at most
    // that many bytes.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        return String::from_utf8_lossy(&buf[..end]).into_owned();
    }
    std::env::var("COMPUTERNAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "unknown".into())
}

/// The manifest of a run in progress: the invocation's clocks, and the manifest rewritten after
/// every epoch.
pub struct Recorder {
    manifest: Manifest,
    started: Instant,
}

impl Recorder {
    /// Starts an invocation on `run`: a fresh manifest, or the resumed run's with one more
    /// invocation. `data_secs` and `setup_secs` are the phases already behind it.
    pub fn begin(run: &Path, config: &RunConfig, selected: &Selected, first_epoch: usize, started: (Instant, SystemTime)) -> Result<Self> {
        let previous = if first_epoch > 1 { Manifest::read(run).ok().flatten() } else { None };
        let invocation = Invocation {
            command_line: std::env::args().collect(),
            started_at: rfc3339(started.1),
            updated_at: rfc3339(SystemTime::now()),
            ended_at: None,
            backend: selected.name.as_str().into(),
            adapter: selected.adapter.clone(),
            threads: rayon::current_num_threads(),
            host: host_name(),
            first_epoch,
            devices: Vec::new(),
            phases: Phases::default(),
            error: None,
        };
        let mut invocations = previous.map_or_else(Vec::new, |m| m.invocations);
        invocations.push(invocation);
        let manifest = Manifest {
            manifest_version: MANIFEST_VERSION,
            ncf_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: option_env!("NCF_GIT_COMMIT").map(str::to_owned),
            config_hash: config_hash(config),
            model: config.model.kind.name().into(),
            loss: config.train.loss.name().into(),
            status: Status::Running,
            epochs: first_epoch - 1,
            best: None,
            invocations,
        };
        Ok(Self { manifest, started: started.0 })
    }

    /// Records the devices of a data-parallel invocation (`--devices`).
    pub fn devices(&mut self, devices: Vec<String>) {
        self.manifest.invocations.last_mut().expect("begin pushes one").devices = devices;
    }

    /// The current invocation's phase times, to add to.
    pub fn phases(&mut self) -> &mut Phases {
        &mut self.manifest.invocations.last_mut().expect("begin pushes one").phases
    }

    /// Records the history so far and `status`, and rewrites `RUN/run.json` atomically.
    pub fn save(&mut self, run: &Path, config: &RunConfig, history: &[EpochRecord], status: Status) -> Result<()> {
        let (metric, on, k) = (config.train.best_metric, config.train.select_on, config.train.k);
        self.manifest.status = status;
        self.manifest.epochs = history.last().map_or(0, |r| r.epoch);
        self.manifest.best = history::best(history, metric, on).and_then(|b| history.iter().find(|r| r.epoch == b.epoch)).map(|r| {
            let named = r.named(k);
            let side = |prefix: &str| named.iter().filter_map(|(n, &v)| n.strip_prefix(prefix).map(|n| (n.to_owned(), v))).collect();
            BestEpoch { epoch: r.epoch, chosen_on: on, metric: history::label(metric.name(), k), valid: side("valid_"), test: side("test_") }
        });
        let now = SystemTime::now();
        let total = self.started.elapsed().as_secs_f64();
        let invocation = self.manifest.invocations.last_mut().expect("begin pushes one");
        invocation.updated_at = rfc3339(now);
        invocation.phases.total = total;
        if status != Status::Running {
            invocation.ended_at = Some(rfc3339(now));
        }
        let text = serde_json::to_string_pretty(&self.manifest).expect("the manifest serializes");
        output::write_atomic(&run.join(FILE), text.as_bytes())
    }

    /// Marks the invocation failed with `error` and writes the manifest; a failure to write is
    /// ignored, so the error that ended the run is the one reported.
    pub fn fail(&mut self, run: &Path, config: &RunConfig, history: &[EpochRecord], error: &anyhow::Error) {
        self.manifest.invocations.last_mut().expect("begin pushes one").error = Some(format!("{error:#}"));
        let _ = self.save(run, config, history, Status::Failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        // As `date -u -d @1796297291` prints it.
        assert_eq!(at(1_796_297_291), "2026-12-03T11:28:11Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn config_hash_is_stable_and_tells_configs_apart() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let a = RunConfig::default();
        let mut b = a.clone();
        b.seed += 1;
        assert_eq!(config_hash(&a), config_hash(&a.clone()));
        assert_ne!(config_hash(&a), config_hash(&b));
    }
}
