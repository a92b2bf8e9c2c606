//! The sessions that answer at once (`-np`), sharing one loaded model, and the bounded queue in
//! front of them.
//!
//! A request goes to the free session whose last conversation shares the longest prefix of turns
//! with it (as llama-server's slots do), so a follow-up that repeats the conversation so far finds
//! its video and earlier turns still in that session's KV cache; among equals, the one used least
//! recently. When every session is busy a request waits, up to `max_queue` of them; beyond that
//! it is refused at once.

use std::sync::{Arc, Mutex, MutexGuard};

use dycoke::{Conversation, ConversationOptions, Model};
use tokio::sync::Notify;

struct Slot {
    /// None while a request holds it.
    conversation: Option<Conversation>,
    /// Identities of the turns its cache holds (see `Pool::acquire`).
    history: Vec<u64>,
    last_used: u64,
}

struct State {
    slots: Vec<Slot>,
    queued: usize,
    clock: u64,
}

pub struct Pool {
    state: Mutex<State>,
    freed: Notify,
    max_queue: usize,
    model: Arc<Model>,
    options: ConversationOptions,
}

/// Every session busy and the queue full.
#[derive(Debug)]
pub struct QueueFull;

/// A session held by one request; dropping it gives the session back.
pub struct Lease {
    pool: Arc<Pool>,
    index: usize,
    conversation: Option<Conversation>,
    /// What the session's cache holds when it is given back.
    pub history: Vec<u64>,
}

impl Lease {
    pub fn conversation(&mut self) -> &mut Conversation {
        self.conversation.as_mut().expect("held until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        let slot = &mut state.slots[self.index];
        slot.conversation = if std::thread::panicking() {
            // The conversation may be half-updated: start the session afresh.
            Conversation::new(self.pool.model.clone(), &self.pool.options).ok()
        } else {
            self.conversation.take()
        };
        slot.history = std::mem::take(&mut self.history);
        drop(state);
        self.pool.freed.notify_waiters();
    }
}

/// Removes a request from the queue count however its wait ends (served, refused, abandoned).
struct Queued<'a>(&'a Pool);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.lock().queued -= 1;
    }
}

impl Pool {
    /// `n` sessions on `model`, each opened with `options`.
    pub fn new(model: Arc<Model>, options: ConversationOptions, n: usize, max_queue: usize) -> dycoke::Result<Arc<Pool>> {
        let slots = (0..n)
            .map(|_| Ok(Slot { conversation: Some(Conversation::new(model.clone(), &options)?), history: Vec::new(), last_used: 0 }))
            .collect::<dycoke::Result<Vec<_>>>()?;
        Ok(Arc::new(Pool { state: Mutex::new(State { slots, queued: 0, clock: 0 }), freed: Notify::new(), max_queue, model, options }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sessions' context size.
    pub fn n_ctx(&self) -> usize {
        self.lock().slots.iter().find_map(|s| s.conversation.as_ref()).map_or(0, |c| c.session().n_ctx())
    }

    /// (sessions, busy, queued)
    pub fn load(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.slots.len(), s.slots.iter().filter(|x| x.conversation.is_none()).count(), s.queued)
    }

    /// Waits for a free session for a request whose turns have the identities `turns`.
    pub async fn acquire(self: &Arc<Self>, turns: &[u64]) -> Result<Lease, QueueFull> {
        let mut queued = None;
        loop {
            // Registered before looking, so a session freed in between still wakes this request.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = self.lock();
                let candidates = state.slots.iter().map(|s| (s.conversation.is_some(), s.history.as_slice(), s.last_used));
                if let Some((index, _)) = best_slot(candidates, turns) {
                    state.clock += 1;
                    let clock = state.clock;
                    let slot = &mut state.slots[index];
                    slot.last_used = clock;
                    let conversation = slot.conversation.take();
                    return Ok(Lease { pool: self.clone(), index, conversation, history: Vec::new() });
                }
                if queued.is_none() {
                    if state.queued >= self.max_queue {
                        return Err(QueueFull);
                    }
                    state.queued += 1;
                    queued = Some(Queued(self));
                }
            }
            freed.await;
        }
    }
}

/// Of slots given as (free, history, last used), the free one sharing the longest prefix with
/// `turns`, the least recently used among equals, and that prefix's length.
fn best_slot<'a>(slots: impl Iterator<Item = (bool, &'a [u64], u64)>, turns: &[u64]) -> Option<(usize, usize)> {
    slots
        .enumerate()
        .filter(|(_, s)| s.0)
        .map(|(i, s)| (i, common_prefix(s.1, turns), s.2))
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
        .map(|(i, matched, _)| (i, matched))
}

fn common_prefix(a: &[u64], b: &[u64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(slots: &[(&[u64], u64, bool)], turns: &[u64]) -> Option<(usize, usize)> {
        best_slot(slots.iter().map(|(h, t, free)| (*free, *h, *t)), turns)
    }

    #[test]
    fn the_longest_shared_prefix_wins_then_the_least_recently_used() {
        let slots: [(&[u64], u64, bool); 3] = [(&[1, 2], 5, true), (&[1, 2, 3, 4], 9, true), (&[], 1, true)];
        assert_eq!(pick(&slots, &[1, 2, 3, 4, 5]), Some((1, 4)));
        assert_eq!(pick(&slots, &[7]), Some((2, 0)));
        let tie: [(&[u64], u64, bool); 2] = [(&[1], 8, true), (&[1], 3, true)];
        assert_eq!(pick(&tie, &[1, 2]), Some((1, 1)));
        let busy: [(&[u64], u64, bool); 2] = [(&[1, 2, 3], 1, false), (&[], 2, true)];
        assert_eq!(pick(&busy, &[1, 2, 3]), Some((1, 0)));
        assert_eq!(pick(&[(&[1], 1, false)], &[1]), None);
    }

    #[test]
    fn common_prefix_counts_equal_leading_turns() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2]), 2);
    }
}
