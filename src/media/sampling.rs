//! Which frames of a video to use. Pure functions, tested without videos.

use crate::error::{Error, Result, Setting};

/// How frames are picked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FrameSelection {
    /// N frames spread uniformly with lmms-eval's indices (the evaluation convention).
    Count(usize),
    /// Frames at this rate (frames per second of video time).
    Fps(f64),
}

/// Frame sampling settings, valid by construction (see [`Sampling::new`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    selection: FrameSelection,
    max_frames: usize,
}

/// The default: 32 frames, as lmms-eval samples for LLaVA-OneVision.
pub const DEFAULT_FRAMES: usize = 32;
/// The default cap on sampled frames (each costs 196 visual tokens before compression).
pub const DEFAULT_MAX_FRAMES: usize = 128;
/// No video is sampled into more frames than this, whatever the cap says.
pub const MAX_FRAMES_LIMIT: usize = 4096;

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling { selection: FrameSelection::Count(DEFAULT_FRAMES), max_frames: DEFAULT_MAX_FRAMES }
    }
}

impl Sampling {
    /// Checks the settings once: a cap in 1..=4096, at least one frame and no more than the cap,
    /// a rate in (0, 1000].
    pub fn new(selection: FrameSelection, max_frames: usize) -> Result<Sampling> {
        if max_frames == 0 || max_frames > MAX_FRAMES_LIMIT {
            return Err(Error::setting(Setting::MaxFrames, format!("{max_frames} is outside 1..={MAX_FRAMES_LIMIT}")));
        }
        match selection {
            FrameSelection::Count(0) => Err(Error::setting(Setting::Frames, "must be at least 1")),
            FrameSelection::Count(n) if n > max_frames => {
                Err(Error::setting(Setting::Frames, format!("{n} is more than the frame cap of {max_frames}")))
            }
            FrameSelection::Fps(r) if !(r.is_finite() && r > 0.0 && r <= 1000.0) => Err(Error::setting(Setting::Fps, format!("{r} is outside (0, 1000]"))),
            _ => Ok(Sampling { selection, max_frames }),
        }
    }

    /// `n` frames under the default cap (or `n` itself, when larger).
    pub fn frames(n: usize) -> Result<Sampling> {
        Sampling::new(FrameSelection::Count(n), n.max(DEFAULT_MAX_FRAMES).min(MAX_FRAMES_LIMIT))
    }

    pub fn selection(&self) -> FrameSelection {
        self.selection
    }

    /// Never more frames than this.
    pub fn max_frames(&self) -> usize {
        self.max_frames
    }
}

/// `np.linspace(0, total - 1, n, dtype=int)`: numpy multiplies `i * step` in f64, floors, and
/// sets the last element to the end point exactly. lmms-eval samples LLaVA-OneVision's frames so.
pub fn uniform_indices(total: usize, n: usize) -> Vec<usize> {
    if n == 0 || total == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![0];
    }
    let stop = (total - 1) as f64;
    let step = stop / (n - 1) as f64;
    let mut out: Vec<usize> = (0..n).map(|i| (i as f64 * step).floor() as usize).collect();
    out[n - 1] = total - 1;
    out
}

/// Frames at `rate` per second of a video with `native_fps`: `arange(0, total, native_fps / rate)`
/// truncated.
pub fn fps_indices(total: usize, native_fps: f64, rate: f64) -> Vec<usize> {
    let step = native_fps / rate;
    if !(step.is_finite() && step > 0.0) {
        return uniform_indices(total, total.min(1));
    }
    let mut out = Vec::new();
    let mut k = 0usize;
    loop {
        let idx = (k as f64 * step).floor();
        if idx >= total as f64 {
            break;
        }
        if out.last() != Some(&(idx as usize)) {
            out.push(idx as usize);
        }
        k += 1;
    }
    out
}

/// The frame indices to decode, and a note for the user when the request could not be met as is.
pub fn select(total: usize, native_fps: f64, s: &Sampling) -> (Vec<usize>, Option<String>) {
    match s.selection {
        FrameSelection::Count(n) if total < n => {
            ((0..total).collect(), Some(format!("the video has {total} frames, fewer than the {n} asked for; using all of them")))
        }
        FrameSelection::Count(n) => (uniform_indices(total, n), None),
        FrameSelection::Fps(rate) => {
            let picked = fps_indices(total, native_fps, rate);
            if picked.len() > s.max_frames {
                let keep = uniform_indices(picked.len(), s.max_frames);
                let note = format!(
                    "{} frames at {rate} fps exceed the cap of {}; taking {} of them uniformly",
                    picked.len(),
                    s.max_frames,
                    s.max_frames
                );
                (keep.into_iter().map(|i| picked[i]).collect(), Some(note))
            } else {
                (picked, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_indices_follow_numpy_linspace() {
        // Values computed with numpy.linspace(0, total-1, n, dtype=int).
        assert_eq!(uniform_indices(100, 8), [0, 14, 28, 42, 56, 70, 84, 99]);
        assert_eq!(uniform_indices(10, 4), [0, 3, 6, 9]);
        assert_eq!(uniform_indices(7, 7), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(uniform_indices(300, 32)[..6], [0, 9, 19, 28, 38, 48]);
        assert_eq!(*uniform_indices(300, 32).last().unwrap(), 299);
        assert_eq!(uniform_indices(5, 1), [0]);
        assert_eq!(uniform_indices(0, 3), Vec::<usize>::new());
    }

    #[test]
    fn fewer_frames_than_asked_uses_all_and_says_so() {
        let (idx, note) = select(5, 30.0, &Sampling::default());
        assert_eq!(idx, [0, 1, 2, 3, 4]);
        assert!(note.unwrap().contains("fewer than the 32"));
    }

    #[test]
    fn fps_sampling_and_its_cap() {
        assert_eq!(fps_indices(90, 30.0, 1.0), [0, 30, 60]);
        assert_eq!(fps_indices(10, 5.0, 10.0).len(), 10);
        let s = Sampling::new(FrameSelection::Fps(30.0), 4).unwrap();
        let (idx, note) = select(300, 30.0, &s);
        assert_eq!(idx, [0, 99, 199, 299]);
        assert!(note.is_some());
    }

    #[test]
    fn invalid_settings() {
        for (sel, cap, setting) in [
            (FrameSelection::Count(0), 8, Setting::Frames),
            (FrameSelection::Count(9), 8, Setting::Frames),
            (FrameSelection::Fps(0.0), 8, Setting::Fps),
            (FrameSelection::Fps(f64::NAN), 8, Setting::Fps),
            (FrameSelection::Count(4), 0, Setting::MaxFrames),
            (FrameSelection::Count(4), MAX_FRAMES_LIMIT + 1, Setting::MaxFrames),
        ] {
            match Sampling::new(sel, cap) {
                Err(Error::Setting { setting: s, .. }) => assert_eq!(s, setting, "{sel:?} {cap}"),
                other => panic!("{sel:?} {cap}: {other:?}"),
            }
        }
        assert_eq!(Sampling::frames(200).unwrap().max_frames(), 200);
        assert_eq!(Sampling::frames(8).unwrap().max_frames(), DEFAULT_MAX_FRAMES);
    }
}
