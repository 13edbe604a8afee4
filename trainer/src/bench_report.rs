//! What `ncf bench` reports: the figures, the terminal table, `bench.json` (machine, backends,
//! adapters, versions, every figure) and `bench.png` (throughput per backend as bars).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use serde::Serialize;

use crate::curves;

/// The burn release ncf is built on (pinned `=0.22.1` in the workspace; a test checks Cargo.lock).
pub const BURN_VERSION: &str = "0.22.1";

/// What a figure measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    Train,
    EvalSampled,
    EvalFull,
    Recommend,
}

impl Measure {
    fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::EvalSampled => "eval sampled",
            Self::EvalFull => "eval full",
            Self::Recommend => "recommend",
        }
    }
}

/// One measured figure: throughput per repetition and its median and spread.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub model: String,
    pub measure: Measure,
    pub batch: Option<usize>,
    /// The catalogue (items) trained on, when the run measured training at several.
    pub items: Option<usize>,
    /// Work per repetition: samples for training, users for evaluation and recommend.
    pub work: usize,
    /// Steps (training) or passes per repetition.
    pub ops: usize,
    pub unit: &'static str,
    /// Throughput of each repetition, in `unit`.
    pub reps: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Median milliseconds per step (training) or per pass.
    pub ms_median: f64,
    pub ms_unit: &'static str,
    /// ncf / PyTorch median throughput at the same batch and catalogue, when the peer ran.
    pub vs_torch: Option<f64>,
}

/// (median, min, max) of `v` (sorted in place); zeros when empty.
pub fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (median, v[0], v[n - 1])
}

impl Figure {
    /// A figure from the wall time of each repetition, each doing `work` units in `ops` steps.
    #[allow(clippy::too_many_arguments)]
    pub fn from_times(
        model: &str,
        measure: Measure,
        batch: Option<usize>,
        work: usize,
        ops: usize,
        unit: &'static str,
        ms_unit: &'static str,
        secs: &[f64],
    ) -> Self {
        let reps: Vec<f64> = secs.iter().map(|&s| work as f64 / s.max(1e-9)).collect();
        let (median, min, max) = stats(&mut reps.clone());
        let (t, _, _) = stats(&mut secs.to_vec());
        Self {
            model: model.into(),
            measure,
            batch,
            items: None,
            work,
            ops,
            unit,
            reps,
            median,
            min,
            max,
            ms_median: t * 1e3 / ops.max(1) as f64,
            ms_unit,
            vs_torch: None,
        }
    }

    /// Sets [`Figure::vs_torch`] from the peer's figure at this batch size, if there is one.
    pub fn attach_peer(&mut self, peer: &PeerReport) {
        if self.measure != Measure::Train {
            return;
        }
        if let Some(p) = peer.figure_for(self) {
            self.vs_torch = Some(self.median / p.median);
        }
    }

    /// Whether the peer's figure `p` is at this figure's batch and catalogue.
    fn same_run_as(&self, p: &PeerFigure) -> bool {
        Some(p.batch) == self.batch && self.items.is_none_or(|i| i == p.items)
    }

    /// Half the min–max range as a share of the median.
    pub fn spread(&self) -> f64 {
        (self.max - self.min) / 2.0 / self.median.max(1e-12)
    }

    fn what(&self) -> String {
        match self.batch {
            Some(b) if self.measure == Measure::Train => train_what(b, self.items),
            Some(b) => format!("{} b={b}", self.measure.name()),
            None => format!("{} {}u", self.measure.name(), self.work),
        }
    }
}

/// The measure column of a training row: `train b=4096`, or `train b=4096 i=1000000` when the run
/// trained at several catalogues.
pub fn train_what(batch: usize, items: Option<usize>) -> String {
    match items {
        Some(i) => format!("train b={batch} i={i}"),
        None => format!("train b={batch}"),
    }
}

/// The table's header line.
pub fn header() -> String {
    format!("{:<8} {:<10} {:<20} {:>12} {:<10} {:>7} {:>10} {:<7} {:>8}", "backend", "model", "measure", "median", "unit", "±", "time", "", "vs torch")
}

/// One table row.
pub fn row(backend: &str, f: &Figure) -> String {
    let vs = f.vs_torch.map_or(String::new(), |r| format!("{r:.2}x"));
    format!(
        "{:<8} {:<10} {:<20} {:>12.0} {:<10} {:>6.1}% {:>10.3} {:<7} {:>8}",
        backend,
        f.model,
        f.what(),
        f.median,
        f.unit,
        f.spread() * 100.0,
        f.ms_median,
        f.ms_unit,
        vs
    )
}

/// One line per ncf/PyTorch pair, in a fixed format that scripts parse:
/// `vs-torch BACKEND/DEVICE MODEL batch B users U items I: ncf X ms/step R samples/s, torch Y ms/step S samples/s, ratio Q`.
pub fn peer_lines(peer: &PeerReport, backends: &[BackendReport]) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(e) = &peer.error {
        lines.push(format!("vs-torch: peer not measured: {e}"));
    }
    for b in backends {
        for f in b.figures.iter().filter(|f| f.vs_torch.is_some()) {
            let Some(p) = peer.figure_for(f) else { continue };
            lines.push(format!(
                "vs-torch {}/{} {} batch {} users {} items {}: ncf {:.3} ms/step {:.0} samples/s, torch {:.3} ms/step {:.0} samples/s, ratio {:.2}",
                b.name,
                peer.device,
                f.model,
                p.batch,
                p.users,
                p.items,
                f.ms_median,
                f.median,
                p.ms_median,
                p.median,
                f.median / p.median
            ));
        }
    }
    if !peer.figures.is_empty() {
        let threads = peer.threads.map_or("default threads".to_string(), |n| format!("OMP_NUM_THREADS={n}"));
        lines.push(format!("vs-torch: ratio = ncf/torch throughput (medians, same run); torch ({threads}): {}", peer.shape));
    }
    lines
}

/// One line per larger catalogue when training was measured at several (`--items A,B,…`), in a
/// fixed format that scripts parse: `growth BACKEND MODEL batch B items I0 -> I: ncf per-step time
/// xR (X -> Y ms/step)`, then `, torch-DEVICE xR (X -> Y ms/step)` where the peer ran at both.
pub fn growth_lines(backends: &[BackendReport], peer: Option<&PeerReport>) -> Vec<String> {
    let peer_at = |f: &Figure| peer.and_then(|p| p.figure_for(f));
    let mut lines = Vec::new();
    for b in backends {
        let trained: Vec<&Figure> = b.figures.iter().filter(|f| f.measure == Measure::Train && f.items.is_some()).collect();
        for (k, f) in trained.iter().enumerate() {
            // Growth from the first catalogue measured with the same model and batch.
            let Some(base) = trained[..k].iter().find(|g| g.model == f.model && g.batch == f.batch) else { continue };
            let (i0, i1, batch) = (base.items.unwrap_or(0), f.items.unwrap_or(0), f.batch.unwrap_or(0));
            let (m0, m1) = (base.ms_median, f.ms_median);
            let mut line =
                format!("growth {} {} batch {batch} items {i0} -> {i1}: ncf per-step time x{:.2} ({m0:.3} -> {m1:.3} ms/step)", b.name, f.model, m1 / m0);
            if let (Some(p), Some(p0), Some(p1)) = (peer, peer_at(base), peer_at(f)) {
                let (t0, t1) = (p0.ms_median, p1.ms_median);
                line += &format!(", {} x{:.2} ({t0:.3} -> {t1:.3} ms/step)", p.device, t1 / t0);
            }
            lines.push(line);
        }
    }
    lines
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub threads: usize,
    pub memory_gib: f64,
    pub os: &'static str,
    pub arch: &'static str,
}

impl Machine {
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
        let kib = crate::backend::meminfo_kib("MemTotal").unwrap_or(0) as f64;
        Self {
            cpu,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
        }
    }
}

/// The PyTorch peer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    pub script: String,
    pub python: String,
    /// `torch-cpu` or `torch-cuda`.
    pub device: String,
    /// CPU threads the peer was limited to (OMP_NUM_THREADS), if any; otherwise torch's default.
    pub threads: Option<usize>,
    pub shape: String,
    pub figures: Vec<PeerFigure>,
    /// Why the peer was not (fully) measured.
    pub error: Option<String>,
}

impl PeerReport {
    /// The peer's figure at `f`'s batch and catalogue, if it ran there.
    fn figure_for(&self, f: &Figure) -> Option<&PeerFigure> {
        self.figures.iter().find(|p| f.same_run_as(p))
    }
}

/// The peer at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct PeerFigure {
    pub batch: usize,
    pub steps: usize,
    pub users: usize,
    pub items: usize,
    /// samples/s of each run.
    pub reps: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub ms_median: f64,
}

/// One backend: its figures, or why it is not available.
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    pub name: String,
    pub available: bool,
    /// Why it was chosen, or why it is not available.
    pub reason: String,
    pub adapter: Option<String>,
    pub figures: Vec<Figure>,
    /// The measurement that failed on this backend (the ones after it were not run).
    pub failure: Option<String>,
}

/// A model shape under test.
#[derive(Debug, Clone, Serialize)]
pub struct VariantInfo {
    pub label: String,
    pub kind: String,
    pub factors: usize,
    pub layers: Vec<usize>,
}

/// The workload as run.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadInfo {
    pub name: String,
    pub users: usize,
    pub items: usize,
    /// Every catalogue training was measured at (`items` first).
    pub catalogues: Vec<usize>,
    pub interactions: usize,
    pub batches: Vec<usize>,
    pub reps: usize,
    pub warmup_steps: usize,
    pub eval_users: usize,
    pub eval_negatives: usize,
    pub recommend_users: usize,
    pub k: usize,
    pub optimizer: String,
    pub variants: Vec<VariantInfo>,
}

/// The whole of `bench.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ncf_version: &'static str,
    pub burn_version: &'static str,
    /// Compiled-in backend features.
    pub features: Vec<&'static str>,
    /// UTC, ISO 8601.
    pub date: String,
    pub machine: Machine,
    pub workload: WorkloadInfo,
    pub backends: Vec<BackendReport>,
    pub peer: Option<PeerReport>,
}

impl Report {
    pub fn new(workload: WorkloadInfo, backends: Vec<BackendReport>, peer: Option<PeerReport>) -> Self {
        let features =
            [("flex", cfg!(feature = "flex")), ("wgpu", cfg!(feature = "wgpu")), ("ndarray", cfg!(feature = "ndarray")), ("cuda", cfg!(feature = "cuda"))]
                .into_iter()
                .filter_map(|(n, on)| on.then_some(n))
                .collect();
        Self {
            ncf_version: env!("CARGO_PKG_VERSION"),
            burn_version: BURN_VERSION,
            features,
            date: utc_now(),
            machine: Machine::this(),
            workload,
            backends,
            peer,
        }
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    crate::manifest::rfc3339(std::time::SystemTime::now())
}

/// Writes `bench.json` (temp file, then rename).
pub fn write_json(path: &Path, report: &Report) -> Result<()> {
    let text = serde_json::to_string_pretty(report).context("serializing bench.json")?;
    crate::output::write_atomic(path, (text + "\n").as_bytes())
}

/// Bars of `(group label, [(series, value)])`: one group per model × batch, one bar per backend.
struct Bars {
    title: String,
    groups: Vec<String>,
    series: Vec<String>,
    /// `values[series][group]`, `None` where a backend has no figure.
    values: Vec<Vec<Option<f64>>>,
}

impl Bars {
    fn collect(title: &str, report: &Report, measures: &[Measure]) -> Self {
        let mut groups: Vec<String> = Vec::new();
        let mut series: Vec<String> = Vec::new();
        let mut points: Vec<(String, String, f64)> = Vec::new();
        for b in report.backends.iter().filter(|b| b.available) {
            for f in b.figures.iter().filter(|f| measures.contains(&f.measure)) {
                points.push((b.name.clone(), Self::group(f), f.median));
            }
        }
        if let (true, Some(p)) = (measures.contains(&Measure::Train), &report.peer) {
            for pf in &p.figures {
                // The peer's bar beside each figure compared with it (same batch and catalogue).
                let compared = report.backends.iter().flat_map(|b| &b.figures).filter(|f| f.vs_torch.is_some() && f.same_run_as(pf));
                for g in compared.map(Self::group).collect::<Vec<_>>() {
                    if !points.iter().any(|(s, pg, _)| *s == p.device && *pg == g) {
                        points.push((p.device.clone(), g, pf.median));
                    }
                }
            }
        }
        for (s, g, _) in &points {
            if !series.contains(s) {
                series.push(s.clone());
            }
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        let mut values = vec![vec![None; groups.len()]; series.len()];
        for (s, g, v) in points {
            let si = series.iter().position(|x| *x == s).unwrap();
            let gi = groups.iter().position(|x| *x == g).unwrap();
            values[si][gi] = Some(v);
        }
        Self { title: title.into(), groups, series, values }
    }

    /// A figure's group of bars: `neumf b4096`, `neumf b4096 i1000000` (several catalogues), `mf`.
    fn group(f: &Figure) -> String {
        match (f.batch, f.items) {
            (Some(batch), Some(items)) => format!("{} b{batch} i{items}", f.model),
            (Some(batch), None) => format!("{} b{batch}", f.model),
            _ => f.model.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    fn draw(&self, area: &DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()> {
        let all = self.values.iter().flatten().flatten().copied().filter(|v| *v > 0.0);
        let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo.is_finite() { (lo / 3.0, hi * 4.0) } else { (1.0, 10.0) };
        // Bars rise from `lo`; the group labels sit in the band below it.
        let floor = lo / 6.0;
        let n = self.groups.len() as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(10)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n, (floor..hi).log_scale())
            .map_err(|e| anyhow!("{e}"))?;
        chart.configure_mesh().disable_x_mesh().x_labels(0).y_label_formatter(&|v| human(*v)).draw().map_err(|e| anyhow!("{e}"))?;
        let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        let s = self.series.len().max(1) as f64;
        let w = 0.8 / s;
        for (si, (name, &color)) in self.series.iter().zip(colors.iter().cycle()).enumerate() {
            let bars: Vec<Rectangle<(f64, f64)>> = self.values[si]
                .iter()
                .enumerate()
                .filter_map(|(gi, v)| v.map(|v| (gi, v)))
                .map(|(gi, v)| {
                    let x0 = gi as f64 + 0.1 + si as f64 * w;
                    Rectangle::new([(x0, lo), (x0 + w * 0.92, v)], color.mix(0.8).filled())
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| anyhow!("{e}"))?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.mix(0.8).filled()));
        }
        let style = TextStyle::from(("sans-serif", 13).into_font())
            .pos(plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Center, plotters::style::text_anchor::VPos::Top));
        chart
            .draw_series(self.groups.iter().enumerate().map(|(gi, g)| Text::new(g.clone(), (gi as f64 + 0.5, lo * 0.9), style.clone())))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }
}

/// 1234567 → "1.2M".
fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.1}"),
    }
}

/// Writes `bench.png`: training samples/s per model and batch on the left, recommend and
/// evaluation users/s on the right, one bar per backend (and the PyTorch peer), log scale.
pub fn write_chart(path: &Path, report: &Report) -> Result<()> {
    curves::register_font();
    let train = Bars::collect("training throughput (samples/s, log scale)", report, &[Measure::Train]);
    let users = Bars::collect("recommend top-k (users/s, log scale)", report, &[Measure::Recommend]);
    let panels: Vec<&Bars> = [&train, &users].into_iter().filter(|b| !b.is_empty()).collect();
    let tmp = path.with_extension("tmp.png");
    {
        let width = 120 + panels.iter().map(|b| 60 + 130 * b.groups.len() as u32).sum::<u32>().max(500);
        let root = BitMapBackend::new(&tmp, (width, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut rest = root.clone();
        let total: usize = panels.iter().map(|b| b.groups.len() + 1).sum::<usize>().max(1);
        for (k, bars) in panels.iter().enumerate() {
            let area = if k + 1 == panels.len() {
                rest.clone()
            } else {
                let w = (width as usize * (bars.groups.len() + 1) / total) as u32;
                let (l, r) = rest.split_horizontally(w);
                rest = r;
                l
            };
            bars.draw(&area)?;
        }
        if panels.is_empty() {
            root.draw_text("no figures", &("sans-serif", 20).into_font().color(&BLACK), (20, 20)).map_err(|e| anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow!("writing {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_median_and_range() {
        assert_eq!(stats(&mut [3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&mut [4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        let f = Figure::from_times("neumf", Measure::Train, Some(10), 100, 4, "samples/s", "ms/step", &[1.0, 2.0, 0.5]);
        assert_eq!((f.median, f.min, f.max), (100.0, 50.0, 200.0));
        assert!((f.ms_median - 250.0).abs() < 1e-9);
    }

    #[test]
    fn burn_version_matches_the_lockfile() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
        assert!(lock.contains(&format!("name = \"burn\"\nversion = \"{BURN_VERSION}\"")), "update BURN_VERSION");
    }

    #[test]
    fn utc_date_is_well_formed() {
        let d = utc_now();
        assert_eq!(d.len(), 20, "{d}");
        let year: i32 = d[..4].parse().unwrap();
        assert!(year >= 2024, "{d}");
        assert!(d.ends_with('Z') && &d[4..5] == "-" && &d[10..11] == "T", "{d}");
    }
}
