//! Progress on stderr while a run goes: elapsed time, send rate, calls in flight, errors and the corrected p99 of
//! the last interval. On a terminal it is one line redrawn in place (indicatif); otherwise (CI logs, files) a
//! plain line per interval.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::record::{Live, Recorder};
use crate::report::human;

/// The progress task; stop it with [`Progress::finish`].
pub struct Progress {
    task: JoinHandle<()>,
    bar: Option<ProgressBar>,
}

fn line(now: &Live, before: &Live, interval: Duration) -> String {
    let rate = (now.sent - before.sent) as f64 / interval.as_secs_f64();
    format!(
        "{:>6.1}s  sending {:>8.1}/s  in flight {:>5}  ok {:>8}  errors {:>6}  p99 {}",
        now.elapsed.as_secs_f64(),
        rate,
        now.in_flight,
        now.ok,
        now.errors,
        now.p99.map_or_else(|| "-".to_owned(), human)
    )
}

impl Progress {
    /// Starts reporting every `interval`.
    pub fn start(recorder: Arc<Recorder>, interval: Duration) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let mut before = Live::default();
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = recorder.take_window();
                let text = line(&now, &before, interval);
                match &shown {
                    Some(bar) => {
                        bar.set_message(text);
                        bar.tick();
                    }
                    None => eprintln!("{text}"),
                }
                before = now;
            }
        });
        Self { task, bar }
    }

    /// Stops reporting and clears the terminal line.
    pub async fn finish(self) {
        self.task.abort();
        // Wait until the task is gone, so it no longer holds the recorder.
        let _ = self.task.await;
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
