//! Progress of the long steps (restore, save, push) as plain counters: the
//! steps count paths and bytes here, and the binary's front end draws them
//! (a bar on a terminal, a line every few seconds in a CI log). The library
//! draws nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One step's counters.
#[derive(Debug)]
pub struct Step {
    pub label: String,
    pub total_paths: u64,
    pub total_bytes: u64,
    pub paths: AtomicU64,
    pub bytes: AtomicU64,
    pub started: Instant,
}

static CURRENT: Mutex<Option<Arc<Step>>> = Mutex::new(None);

/// A step begins (it replaces any other); it ends when the guard drops.
pub fn begin(label: &str, total_paths: u64, total_bytes: u64) -> Guard {
    let step = Arc::new(Step {
        label: label.to_string(),
        total_paths,
        total_bytes,
        paths: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        started: Instant::now(),
    });
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(step.clone());
    Guard(step)
}

/// `paths` more paths (of `bytes` bytes) done in the current step.
pub fn add(paths: u64, bytes: u64) {
    if let Some(s) = current() {
        s.paths.fetch_add(paths, Ordering::Relaxed);
        s.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// The step running now, if any.
pub fn current() -> Option<Arc<Step>> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Ends its step when dropped.
pub struct Guard(Arc<Step>);

impl Drop for Guard {
    fn drop(&mut self) {
        let mut c = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        if c.as_ref().is_some_and(|s| Arc::ptr_eq(s, &self.0)) {
            *c = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_while_the_step_lives() {
        {
            let _g = begin("push", 3, 300);
            add(1, 100);
            add(1, 50);
            let s = current().unwrap();
            assert_eq!(s.paths.load(Ordering::Relaxed), 2);
            assert_eq!(s.bytes.load(Ordering::Relaxed), 150);
        }
        assert!(current().is_none());
        add(1, 1); // no step: ignored
    }
}
