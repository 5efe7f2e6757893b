//! Write-behind NAR uploads of the network targets.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use crate::error::{Error, Result};

/// NAR uploads running in the background, so the threads that compress
/// NARs never wait on the network ("write-behind"), with the closure
/// invariant kept by [`Background::wait`]: a narinfo is only written once
/// the upload of the NAR it names has succeeded.
#[derive(Debug, Default)]
pub struct Background {
    state: Mutex<BackgroundState>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct BackgroundState {
    in_flight: usize,
    bytes_in_flight: u64,
    /// NAR → `None` while uploading, then its outcome.
    nars: HashMap<String, Option<Result<(), String>>>,
}

/// Uploads in flight at once (each holds one spooled NAR: ≤ 1 MiB of memory
/// or an unlinked temp file); more wait, which holds back compression.
pub const MAX_BACKGROUND: usize = 8;
/// Spooled bytes waiting for upload, at most (one larger NAR goes alone).
pub const MAX_BACKGROUND_BYTES: u64 = 1 << 30;

impl Background {
    /// Runs `upload` of `rel` in the background once a slot is free. A NAR
    /// of the same name already uploaded or uploading is the same bytes
    /// (content-addressed): not sent twice.
    pub fn start(
        self: &Arc<Self>,
        rel: &str,
        bytes: u64,
        upload: impl FnOnce() -> Result<()> + Send + 'static,
    ) {
        let mut st = self.state.lock().expect("background state");
        while st.in_flight >= MAX_BACKGROUND
            || (st.in_flight > 0 && st.bytes_in_flight + bytes > MAX_BACKGROUND_BYTES)
        {
            st = self.cond.wait(st).expect("background state");
        }
        if matches!(st.nars.get(rel), Some(None) | Some(Some(Ok(())))) {
            return;
        }
        st.nars.insert(rel.to_string(), None);
        st.in_flight += 1;
        st.bytes_in_flight += bytes;
        drop(st);
        let me = self.clone();
        let rel = rel.to_string();
        std::thread::spawn(move || {
            let outcome = upload().map_err(|e| match e {
                Error::Cache { msg, .. } => msg,
                e => e.to_string(),
            });
            let mut st = me.state.lock().expect("background state");
            st.nars.insert(rel, Some(outcome));
            st.in_flight -= 1;
            st.bytes_in_flight -= bytes;
            me.cond.notify_all();
        });
    }

    /// Waits for the upload of `rel`, if one was started here; its error.
    pub fn wait(&self, rel: &str) -> Result<(), String> {
        let mut st = self.state.lock().expect("background state");
        loop {
            match st.nars.get(rel) {
                None => return Ok(()),
                Some(Some(outcome)) => return outcome.clone(),
                Some(None) => st = self.cond.wait(st).expect("background state"),
            }
        }
    }

    /// Waits for every upload started.
    pub fn wait_all(&self) {
        let mut st = self.state.lock().expect("background state");
        while st.in_flight > 0 {
            st = self.cond.wait(st).expect("background state");
        }
    }
}

/// The `URL:` of a narinfo being written (the NAR it needs first).
pub fn narinfo_nar_url(data: &[u8]) -> Option<String> {
    std::str::from_utf8(data)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .map(|u| u.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn background_uploads_gate_narinfos() {
        let bg = Arc::new(Background::default());
        let runs = Arc::new(AtomicUsize::new(0));
        for (rel, ok) in [("nar/a", true), ("nar/b", false), ("nar/a", true)] {
            let runs = runs.clone();
            bg.start(rel, 10, move || {
                runs.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
                if ok {
                    Ok(())
                } else {
                    Err(Error::cache("u", "HTTP 500"))
                }
            });
        }
        assert_eq!(bg.wait("nar/a"), Ok(()));
        assert_eq!(bg.wait("nar/b"), Err("HTTP 500".to_string()));
        assert_eq!(bg.wait("nar/never-started"), Ok(()));
        bg.wait_all();
        // The same NAR twice is uploaded once.
        assert_eq!(runs.load(Ordering::Relaxed), 2);
        assert_eq!(
            narinfo_nar_url(b"StorePath: /nix/store/x\nURL: nar/abc.nar.zst\n").as_deref(),
            Some("nar/abc.nar.zst")
        );
    }
}
