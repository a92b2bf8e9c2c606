//! Turns at the CPU. Sessions answer at once, but each graph computation already uses every core
//! (ggml's threads spin while they wait for each other), so two computations at the same time
//! only slow each other down, badly (each one's threads spin while another's hold the cores).
//! A session computes while it holds the turn and offers it between steps (a prompt chunk, a
//! decode step, a batch of frames); tickets keep the order fair. A turn lasts at least `SLICE`:
//! the threads of a session that just computed keep spinning for a few milliseconds, so passing
//! at every token would hand the next session a CPU still busy with them.

use std::cell::Cell;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The shortest turn (answers interleave in pieces of about this long).
const SLICE: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct Turns {
    /// (next ticket to hand out, ticket whose turn it is)
    state: Mutex<(u64, u64)>,
    changed: Condvar,
}

/// A held turn; dropping it passes the turn on.
pub struct Turn<'a> {
    turns: &'a Turns,
    held: Cell<bool>,
    since: Cell<Instant>,
}

impl Turns {
    /// Waits for a turn, behind everyone already waiting.
    pub fn take(&self) -> Turn<'_> {
        self.acquire();
        Turn { turns: self, held: Cell::new(true), since: Cell::new(Instant::now()) }
    }

    fn acquire(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = s.0;
        s.0 += 1;
        drop(s);
        self.wait_for(ticket);
    }

    /// Gives the turn to the next in line and queues behind everyone waiting, in one step: were
    /// the two separate, the next in line could pass and queue again before us.
    fn requeue(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = s.0;
        s.0 += 1;
        s.1 += 1;
        drop(s);
        self.changed.notify_all();
        self.wait_for(ticket);
    }

    fn wait_for(&self, ticket: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.1 != ticket {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether anyone waits for a turn.
    fn contended(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 > s.1 + 1
    }

    fn release(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 += 1;
        drop(s);
        self.changed.notify_all();
    }
}

impl Turn<'_> {
    /// Once the turn has lasted `SLICE`, lets everyone waiting go first, then takes a turn again.
    pub fn pass(&self) {
        if self.held.get() && (self.since.get().elapsed() < SLICE || !self.turns.contended()) {
            return;
        }
        self.pass_now();
    }

    fn pass_now(&self) {
        if self.held.get() {
            self.turns.requeue();
        } else {
            self.turns.acquire();
            self.held.set(true);
        }
        self.since.set(Instant::now());
    }
}

impl Turn<'_> {
    /// Runs `f` (a wait) without the turn, then takes a turn again.
    pub fn away<R>(&self, f: impl FnOnce() -> R) -> R {
        if self.held.replace(false) {
            self.turns.release();
        }
        let r = f();
        self.turns.acquire();
        self.held.set(true);
        self.since.set(Instant::now());
        r
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.held.get() {
            self.turns.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Turns, SLICE};
    use std::time::Instant;
    use std::sync::Mutex;

    #[test]
    fn two_sessions_alternate_step_by_step() {
        let turns = Turns::default();
        let log = Mutex::new(Vec::new());
        let first = turns.take();
        std::thread::scope(|s| {
            s.spawn(|| {
                let turn = turns.take();
                for i in 0..3 {
                    log.lock().unwrap().push(('b', i));
                    turn.pass_now();
                }
            });
            // Wait until the second thread is queued behind us.
            while turns.state.lock().unwrap().0 < 2 {
                std::thread::yield_now();
            }
            for i in 0..3 {
                log.lock().unwrap().push(('a', i));
                first.pass_now();
            }
            drop(first);
        });
        let log = log.into_inner().unwrap();
        assert_eq!(log, vec![('a', 0), ('b', 0), ('a', 1), ('b', 1), ('a', 2), ('b', 2)]);
    }

    #[test]
    fn a_turn_is_kept_for_its_slice_and_while_nobody_waits() {
        let turns = Turns::default();
        let t = turns.take();
        t.pass();
        assert_eq!(turns.state.lock().unwrap().1, 0, "kept: the slice has not passed");
        t.since.set(Instant::now() - SLICE * 2);
        t.pass();
        assert_eq!(turns.state.lock().unwrap().1, 0, "kept: nobody waits");
    }

    #[test]
    fn passing_alone_keeps_the_turn() {
        let turns = Turns::default();
        let t = turns.take();
        t.pass();
        t.pass();
        drop(t);
        let _again = turns.take();
    }
}
