//! A progress bar while a storm runs (only on a terminal).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::report::{ClientRecord, Outcome};

#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    booted: std::cell::Cell<u64>,
    failed: std::cell::Cell<u64>,
    bytes: std::cell::Cell<u64>,
    start: std::time::Instant,
}

impl Progress {
    pub fn new(total: u64, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} clients  {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self {
            bar,
            booted: 0.into(),
            failed: 0.into(),
            bytes: 0.into(),
            start: std::time::Instant::now(),
        }
    }

    pub fn record(&self, rec: &ClientRecord) {
        match rec.outcome {
            Outcome::Booted => self.booted.set(self.booted.get() + 1),
            Outcome::Failed { .. } => self.failed.set(self.failed.get() + 1),
        }
        self.bytes.set(self.bytes.get() + rec.bytes());
        if let Some(bar) = &self.bar {
            let mib_s = self.bytes.get() as f64
                / (1 << 20) as f64
                / self.start.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!(
                "booted {}  failed {}  {mib_s:.0} MiB/s",
                self.booted.get(),
                self.failed.get()
            ));
            bar.inc(1);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
