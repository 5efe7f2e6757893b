//! Draws the library's step counters ([`nixdelta::progress`]): a bar on a
//! terminal (paths, bytes, rate, ETA); in a CI log (no terminal) one line
//! every 10 s (`NIXDELTA_PROGRESS_INTERVAL` seconds), and nothing for a
//! step that ends sooner.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nixdelta::progress::{self, Step};

/// Starts the drawing thread for the rest of the process.
pub fn spawn() {
    let tty = std::io::stderr().is_terminal();
    let every = std::env::var("NIXDELTA_PROGRESS_INTERVAL")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(Duration::from_secs(10), Duration::from_secs_f64);
    std::thread::spawn(move || draw(tty, every));
}

fn draw(tty: bool, every: Duration) {
    let mut shown: Option<(Arc<Step>, Option<ProgressBar>, Duration)> = None;
    loop {
        std::thread::sleep(every.min(Duration::from_millis(100)));
        let now = progress::current();
        let same = matches!((&shown, &now), (Some((a, ..)), Some(b)) if Arc::ptr_eq(a, b));
        if !same {
            if let Some((_, Some(bar), _)) = shown.take() {
                bar.finish_and_clear();
            }
            shown = now.map(|s| {
                let bar = tty.then(|| bar_for(&s));
                (s, bar, every)
            });
        }
        let Some((step, bar, next)) = &mut shown else {
            continue;
        };
        let (paths, bytes) = (
            step.paths.load(Ordering::Relaxed),
            step.bytes.load(Ordering::Relaxed),
        );
        if let Some(bar) = bar {
            bar.set_position(bytes);
            bar.set_message(format!(
                "{}: {paths}/{} paths",
                step.label, step.total_paths
            ));
        } else if step.started.elapsed() >= *next {
            eprintln!("nixdelta: {}", line(step, paths, bytes));
            *next += every;
        }
    }
}

fn bar_for(s: &Step) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(s.total_bytes), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// `push: 120/870 paths, 300.0/1429.8 MB, 85.1 MB/s, ETA 13 s`.
fn line(s: &Step, paths: u64, bytes: u64) -> String {
    let secs = s.started.elapsed().as_secs_f64().max(1e-3);
    let rate = bytes as f64 / secs;
    let eta = if rate > 0.0 {
        format!("{:.0} s", s.total_bytes.saturating_sub(bytes) as f64 / rate)
    } else {
        "?".into()
    };
    format!(
        "{}: {paths}/{} paths, {:.1}/{:.1} MB, {:.1} MB/s, ETA {eta}",
        s.label,
        s.total_paths,
        bytes as f64 / 1e6,
        s.total_bytes as f64 / 1e6,
        rate / 1e6
    )
}
