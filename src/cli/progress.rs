//! Progress while a command runs: spinners counting rows on a terminal (never with `--json`,
//! never when stderr is piped), and the demo's one line per finished step.

use std::io::IsTerminal;

use indicatif::{HumanCount, ProgressBar, ProgressState, ProgressStyle};

use crate::demo::{Observer, Step};

/// Whether progress is shown: on a terminal, not with `--json`.
fn shows_progress(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// A spinner counting rows, with a whole-number rate: `⠁ seeding 12,000 rows (48,211 rows/s) 0s`.
fn spinner(label: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    let rows = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let n = state.pos();
        let _ = write!(
            w,
            "{} {}",
            HumanCount(n),
            if n == 1 { "row" } else { "rows" }
        );
    };
    let rate = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{} rows/s", HumanCount(state.per_sec().round() as u64));
    };
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {rows} ({rate}) {elapsed}") {
        pb.set_style(style.with_key("rows", rows).with_key("rate", rate));
    }
    pb.set_message(label.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// A row counter: a spinner on a terminal, nothing otherwise.
pub struct Rows(Option<ProgressBar>);

impl Rows {
    pub fn new(json: bool, label: &str) -> Rows {
        Rows(shows_progress(json).then(|| spinner(label)))
    }

    pub fn set(&self, rows: u64) {
        if let Some(b) = &self.0 {
            b.set_position(rows);
        }
    }

    /// Removes the spinner (before the command's output is printed).
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// The demo's output: one spinner per step while it runs, replaced by the step's line once it
/// is done (the spinner is cleared first, so no stale spinner line stays on screen).
pub struct DemoUi {
    progress: bool,
    json: bool,
    current: std::sync::Mutex<Option<(&'static str, ProgressBar)>>,
}

impl DemoUi {
    pub fn new(json: bool) -> Self {
        DemoUi {
            progress: shows_progress(json),
            json,
            current: std::sync::Mutex::new(None),
        }
    }

    /// Clears the running step's spinner, if any.
    pub fn clear(&self) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, b)) = current.take() {
            b.finish_and_clear();
        }
    }
}

impl Observer for DemoUi {
    fn progress(&self, step: &'static str, rows: u64) {
        if !self.progress {
            return;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some((name, b)) if *name == step => b.set_position(rows),
            _ => {
                if let Some((_, old)) = current.take() {
                    old.finish_and_clear();
                }
                let b = spinner(step);
                b.set_position(rows);
                *current = Some((step, b));
            }
        }
    }

    fn step_done(&self, step: &Step) {
        self.clear();
        if !self.json {
            super::output::demo_step(step);
        }
    }
}
