//! Whether the server answers at all: a server that accepts connections but never answers (a
//! frozen process, a dead backend behind a reverse proxy) costs one full `--timeout`, not one
//! per request.
//!
//! - A request that got no answer within `--timeout` (no response head; or an upload the
//!   server stopped taking) makes the server *silent*.
//! - While it is silent, one request at a time may try it (a *probe*), at most every
//!   [`PROBE_GAP`], and waits at most [`PROBE_WAIT`] for its answer. Every other request fails
//!   at once with [`TransportKind::Timeout`] naming how long the server has been silent.
//! - Any answer, whatever its status, ends the silence.
//!
//! So an operation against a silent server fails within `--timeout` plus the time its first
//! request took to be sent (the documented margin is one second), and the operations after it
//! fail at once, or within [`PROBE_WAIT`] when they are a probe.
//! Connection refusals do not count: they cost nothing to find out, and the client's own
//! reconnect retries handle a restarting server.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::error::{DavError, TransportKind};

/// Least time between two probes of a silent server.
pub const PROBE_GAP: Duration = Duration::from_secs(2);
/// How long a probe waits for the silent server's answer (or `--timeout`, if shorter).
pub const PROBE_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(crate) struct Health {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Since when the server has not answered (`None`: it answers).
    silent_since: Option<(Instant, SystemTime)>,
    /// When the last request to the silent server was given up.
    last_try: Option<Instant>,
    /// A probe is out.
    probing: bool,
}

/// Leave to send one request; a probe's ends the probe when dropped (a request abandoned by
/// its caller must not keep every other request refused).
pub(crate) struct Ticket<'a> {
    health: &'a Health,
    probe: bool,
}

impl Ticket<'_> {
    /// How long this request may wait for its answer.
    pub fn wait(&self, timeout: Duration) -> Duration {
        if self.probe {
            timeout.min(PROBE_WAIT)
        } else {
            timeout
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.health.lock().probing = false;
        }
    }
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leave to send a request, or the error to fail it with at once.
    pub fn admit(&self, method: &str, path: &str) -> Result<Ticket<'_>, DavError> {
        let mut st = self.lock();
        let Some((since, _)) = st.silent_since else {
            return Ok(Ticket {
                health: self,
                probe: false,
            });
        };
        let due = st.last_try.is_none_or(|t| t.elapsed() >= PROBE_GAP);
        if due && !st.probing {
            st.probing = true;
            return Ok(Ticket {
                health: self,
                probe: true,
            });
        }
        Err(DavError::Transport {
            method: method.into(),
            path: path.into(),
            kind: TransportKind::Timeout,
            detail: format!(
                "the server has not answered for {} s (it is tried again every {} s)",
                since.elapsed().as_secs(),
                PROBE_GAP.as_secs()
            ),
        })
    }

    /// A request got no answer in time.
    pub fn silent(&self) {
        let mut st = self.lock();
        if st.silent_since.is_none() {
            tracing::warn!(
                "the server does not answer: requests fail at once until it does (it is \
                 tried again every {} s)",
                PROBE_GAP.as_secs()
            );
            st.silent_since = Some((Instant::now(), SystemTime::now()));
        }
        st.last_try = Some(Instant::now());
    }

    /// An answer came (any status).
    pub fn answered(&self) {
        let mut st = self.lock();
        if let Some((since, _)) = st.silent_since.take() {
            tracing::info!(
                "the server answers again after {} s",
                since.elapsed().as_secs()
            );
        }
        st.last_try = None;
    }

    /// Since when the server has not answered, if it is silent.
    pub fn silent_since(&self) -> Option<SystemTime> {
        self.lock().silent_since.map(|(_, at)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_server_gets_one_probe_at_a_time_and_answers_end_the_silence() {
        let h = Health::default();
        let t = h.admit("GET", "/a").expect("answers");
        assert_eq!(t.wait(Duration::from_secs(30)), Duration::from_secs(30));
        drop(t);
        h.silent();
        // Just given up: the next request fails at once, naming the silence.
        let e = h.admit("GET", "/a").err().expect("refused");
        assert!(e.to_string().contains("has not answered"), "{e}");
        // Once the gap has passed, one probe goes, with a short wait; nobody else meanwhile.
        h.lock().last_try = Some(Instant::now() - PROBE_GAP);
        let probe = h.admit("GET", "/a").expect("probe");
        assert_eq!(probe.wait(Duration::from_secs(30)), PROBE_WAIT);
        assert!(h.admit("GET", "/b").is_err());
        // A dropped probe frees the way for the next one.
        drop(probe);
        let probe = h.admit("GET", "/b").expect("next probe");
        h.answered();
        drop(probe);
        assert!(h.silent_since().is_none());
        let t = h.admit("GET", "/c").expect("answers again");
        assert_eq!(t.wait(Duration::from_secs(3)), Duration::from_secs(3));
    }
}
