//! Progress of slow work, one vocabulary for every layer: which phase runs, how far it is, and a
//! way to stop it. A progress callback returns `false` to stop the work at the next step it can
//! stop at (a chunk of frames, a chunk of prompt); the work then fails with `Error::Cancelled`.

/// Which slow step is under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Decoding a video's frames (`total` = frames).
    Decoding,
    /// Running frames or image crops through the vision model (`total` = frames or crops).
    Encoding,
    /// Evaluating the prompt (`total` = positions to evaluate).
    Prefill,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Decoding => "decoding",
            Phase::Encoding => "encoding",
            Phase::Prefill => "prompt",
        }
    }
}

/// `progress(phase, done, total)`; returning false stops the work.
pub type Progress<'a> = dyn FnMut(Phase, usize, usize) -> bool + 'a;

/// A callback that only watches.
pub fn ignore(_: Phase, _: usize, _: usize) -> bool {
    true
}
