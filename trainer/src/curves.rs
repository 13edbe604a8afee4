//! `RUN/curves.png`: training loss and ranking metrics per epoch.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

/// The embedded font (DejaVu Sans, see assets/DejaVuSans-LICENSE.txt): one binary, no system fonts.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// One labelled series of per-epoch values.
pub struct Series<'a> {
    pub name: &'a str,
    pub values: &'a [f64],
}

/// Registers the embedded font as "sans-serif" for every chart this binary draws.
pub(crate) fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn panel(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, title: &str, series: &[Series]) -> Result<()> {
    let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0).max(2);
    let (lo, hi) = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(1f64..n as f64, (lo - pad)..(hi + pad))
        .map_err(|e| anyhow!("{e}"))?;
    chart.configure_mesh().x_desc("epoch").x_labels(n.min(10)).draw().map_err(|e| anyhow!("{e}"))?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK, RGBColor(230, 130, 0), RGBColor(120, 120, 120)];
    for (s, &color) in series.iter().zip(colors.iter().cycle()) {
        // Epochs without a value (not evaluated) are left out; the line joins the others.
        let pts: Vec<(f64, f64)> = s.values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| ((i + 1) as f64, v)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Writes a one-panel PNG of `series` per epoch, titled `title` (temp file, then renamed).
pub fn write_one(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    draw(path, (900, 500), |root| panel(root, title, series))
}

/// One panel of a scatter chart: values of a key (as labelled positions) against a metric.
pub struct Scatter {
    pub title: String,
    /// The key's values, in order: the x axis.
    pub labels: Vec<String>,
    /// (position in `labels`, metric) per point.
    pub points: Vec<(usize, f64)>,
}

/// Writes a PNG with a panel per [`Scatter`] side by side, the y axis named `metric`.
pub fn write_scatter(path: &Path, metric: &str, panels: &[Scatter]) -> Result<()> {
    let n = panels.len().max(1);
    draw(path, (420 * n as u32, 420), |root| {
        for (area, p) in root.split_evenly((1, n)).iter().zip(panels) {
            let (lo, hi) = p.points.iter().map(|q| q.1).filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
            let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
            let pad = ((hi - lo) * 0.1).max(1e-3);
            let last = p.labels.len().saturating_sub(1) as f64;
            let labels = p.labels.clone();
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d(-0.5f64..last + 0.5, (lo - pad)..(hi + pad))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .y_desc(metric)
                .x_labels(p.labels.len().max(1))
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 { labels.get(i as usize).cloned().unwrap_or_default() } else { String::new() }
                })
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            chart.draw_series(p.points.iter().map(|&(x, y)| Circle::new((x as f64, y), 5, BLUE.filled()))).map_err(|e| anyhow!("{e}"))?;
        }
        Ok(())
    })
}

/// Draws a `size` PNG at `path` through a temporary file renamed into place when complete.
fn draw(path: &Path, size: (u32, u32), paint: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>) -> Result<()> {
    register_font();
    // The backend picks the image format by the extension.
    let tmp = std::path::PathBuf::from(format!("{}.png", crate::output::tmp_path(path).display()));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        paint(&root)?;
        root.present().map_err(|e| anyhow!("writing {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

/// Writes a two-panel PNG: loss on the left, metrics on the right (written to a temp file, then renamed).
pub fn write(path: &Path, loss: &[f64], metrics: &[Series]) -> Result<()> {
    draw(path, (1200, 450), |root| {
        let (left, right) = root.split_horizontally(520);
        panel(&left, "training loss", &[Series { name: "loss", values: loss }])?;
        panel(&right, "evaluation", metrics)
    })
}
