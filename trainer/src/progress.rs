//! What a command prints while it works. Progress lines (the backend, the data, each epoch, what
//! was written) go to stdout whether or not it is a terminal, so `ncf train > log.txt` keeps
//! them; warnings and errors go to stderr; bars go to stderr, drawn only on a terminal.
//! `--quiet` drops the progress lines and bars and keeps warnings, errors and a command's results
//! (the metrics `ncf evaluate` prints, `ncf data stats`' table, the bench table).

use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Turns progress lines and bars off for the rest of the process (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Where bars draw: stderr (shown only on a terminal), or nowhere with `--quiet`.
fn draw_target() -> ProgressDrawTarget {
    if quiet() { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() }
}

/// Prints a progress line to stdout unless `--quiet`.
macro_rules! say {
    ($($arg:tt)*) => {
        if !$crate::progress::quiet() {
            println!($($arg)*);
        }
    };
}

pub struct Progress {
    multi: MultiProgress,
    pub epochs: ProgressBar,
}

impl Progress {
    pub fn new(epochs: usize) -> Self {
        let multi = MultiProgress::with_draw_target(draw_target());
        let bar = multi.add(ProgressBar::new(epochs as u64));
        bar.set_style(ProgressStyle::with_template("epoch {pos}/{len} [{elapsed_precise}] {wide_bar} eta {eta}").unwrap());
        Self { multi, epochs: bar }
    }

    /// A bar over the samples of one epoch.
    pub fn batches(&self, samples: usize) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(samples as u64));
        bar.set_style(ProgressStyle::with_template("  {bar:30} {human_pos}/{human_len} samples {per_sec} eta {eta} {msg}").unwrap());
        bar
    }

    /// Prints a progress line to stdout, with the bars lifted out of the way while it does.
    pub fn println(&self, line: &str) {
        if !quiet() {
            self.multi.suspend(|| println!("{line}"));
        }
    }

    /// A bar over users for scoring commands.
    pub fn users(total: usize) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(total as u64), draw_target());
        bar.set_style(ProgressStyle::with_template("{bar:30} {human_pos}/{human_len} users {per_sec} eta {eta}").unwrap());
        bar
    }
}
