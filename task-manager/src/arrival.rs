//! An upload's bytes as they reach its file, followed by the engine: it can aggregate an upload
//! while it still arrives (embedded mode), reading what the upload writer has written and
//! waiting for the rest.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use processor::{Control, Growth};

/// How often a waiting reader checks whether its engine was cancelled.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// How far an upload has reached its file.
#[derive(Debug, Default)]
pub struct Arrival {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    /// Bytes in the file, from its start.
    written: u64,
    end: End,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum End {
    #[default]
    Open,
    /// Every byte of the upload is in the file.
    Complete,
    /// The upload stopped early: its bytes are not an input.
    Aborted,
}

impl Arrival {
    pub fn new() -> Arc<Arrival> {
        Arc::default()
    }

    /// The first `written` bytes are in the file.
    pub fn advance(&self, written: u64) {
        let mut state = self.lock();
        if state.end == End::Open && written > state.written {
            state.written = written;
            self.changed.notify_all();
        }
    }

    /// The upload is entirely in the file.
    pub fn complete(&self) {
        self.end(End::Complete);
    }

    /// The upload stopped before its end; readers fail.
    pub fn abort(&self) {
        self.end(End::Aborted);
    }

    fn end(&self, end: End) {
        let mut state = self.lock();
        if state.end == End::Open {
            state.end = end;
            self.changed.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until more than `pos` bytes are in the file (returns how many are), the upload is
    /// complete (returns its length, which may be `pos` or less), it was aborted or `control`
    /// cancelled (an error).
    fn wait_beyond(&self, pos: u64, control: &Control) -> io::Result<u64> {
        let mut state = self.lock();
        loop {
            if state.end == End::Aborted {
                return Err(io::Error::other("the upload stopped before its end"));
            }
            if control.is_cancelled() {
                return Err(io::Error::other("cancelled"));
            }
            if state.written > pos || state.end == End::Complete {
                return Ok(state.written);
            }
            state = self
                .changed
                .wait_timeout(state, CANCEL_CHECK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// An upload's file as the engine follows it while it arrives: it maps the file and reads
/// only what [`Arrival`] reports written; a wait ends with an error when `control` is
/// cancelled.
pub struct FollowedUpload {
    arrival: Arc<Arrival>,
    control: Control,
}

impl FollowedUpload {
    /// Follows the upload whose bytes `arrival` reports, for the engine run under `control`.
    pub fn new(arrival: Arc<Arrival>, control: Control) -> FollowedUpload {
        FollowedUpload { arrival, control }
    }
}

impl Growth for FollowedUpload {
    fn wait_beyond(&self, pos: u64) -> io::Result<u64> {
        self.arrival.wait_beyond(pos, &self.control)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_writer_to_the_end() {
        let arrival = Arrival::new();
        let followed = FollowedUpload::new(arrival.clone(), Control::new());
        let writer = {
            let arrival = arrival.clone();
            std::thread::spawn(move || {
                for written in (100..=2000).step_by(100) {
                    arrival.advance(written);
                    std::thread::sleep(Duration::from_millis(1));
                }
                arrival.complete();
            })
        };
        let mut pos = 0;
        loop {
            let written = followed.wait_beyond(pos).expect("written");
            if written <= pos {
                break;
            }
            assert!(written > pos && written <= 2000, "{written} after {pos}");
            pos = written;
        }
        writer.join().expect("writer");
        assert_eq!(pos, 2000);
        // At the end, asking beyond it returns the whole length at once.
        assert_eq!(followed.wait_beyond(5000).expect("complete"), 2000);
    }

    #[test]
    fn an_aborted_upload_is_an_error_and_not_an_end() {
        let arrival = Arrival::new();
        arrival.advance(10);
        let followed = FollowedUpload::new(arrival.clone(), Control::new());
        assert_eq!(followed.wait_beyond(0).expect("first bytes"), 10);
        arrival.abort();
        assert!(followed.wait_beyond(10).is_err());
        // Completing after an abort changes nothing.
        arrival.complete();
        assert!(followed.wait_beyond(10).is_err());
    }

    #[test]
    fn a_waiting_follower_stops_when_cancelled() {
        let control = Control::new();
        let followed = FollowedUpload::new(Arrival::new(), control.clone());
        let waiting = std::thread::spawn(move || followed.wait_beyond(0).is_err());
        std::thread::sleep(Duration::from_millis(100));
        control.cancel();
        assert!(
            waiting.join().expect("follower thread"),
            "the wait did not fail"
        );
    }
}
