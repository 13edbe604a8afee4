//! Progress bars: one for epochs, one for the batches of the current epoch with samples/s,
//! ETA and the latest loss. Hidden when stderr is not a terminal.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Progress {
    multi: MultiProgress,
    pub epochs: ProgressBar,
}

impl Progress {
    pub fn new(epochs: usize) -> Self {
        let multi = MultiProgress::new();
        let bar = multi.add(ProgressBar::new(epochs as u64));
        bar.set_style(ProgressStyle::with_template("epoch {pos}/{len} [{elapsed_precise}] {wide_bar} eta {eta}").unwrap());
        Self { multi, epochs: bar }
    }

    /// A bar over the samples of one epoch.
    pub fn batches(&self, samples: usize) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(samples as u64));
        bar.set_style(
            ProgressStyle::with_template("  {bar:30} {human_pos}/{human_len} samples {per_sec} eta {eta} {msg}").unwrap(),
        );
        bar
    }

    /// Prints a line above the bars.
    pub fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            println!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// A bar over users for scoring commands.
    pub fn users(total: usize) -> ProgressBar {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(ProgressStyle::with_template("{bar:30} {human_pos}/{human_len} users {per_sec} eta {eta}").unwrap());
        bar
    }
}
