//! DyCoke stage 1, temporal token merging (TTM): within each aligned window of four frames, the
//! tokens that barely changed since a reference frame are dropped before prefill.
//!
//! With `X[f][j]` the pooled tokens (frame f, spatial position j) and `M = floor((1 - k) N)`:
//! - pair stage: for i = 0, 2, 4, ... with i + 1 < F, frame i+1 keeps the M positions j whose
//!   `cos(X[i][j], X[i+1][j])` is lowest (the ones that changed most);
//! - window stage: for i = 0, 4, 8, ... with i + 2 < F, frame i+2 keeps the M positions with the
//!   lowest `cos(X[i][j], X[i+2][j])`, on the original features;
//! - frames with index divisible by 4 stay whole.
//!
//! Survivors keep their spatial order; the video's trailing newline is not part of X and is kept.
//! Where the reference code differs (it skips the last window, drops the last frame of an odd
//! count, and emits survivors in similarity order), this follows the paper; see
//! shared/spec/dycoke.md and models.md.

use std::sync::{Arc, Mutex};

use super::cosine;
use crate::error::{Error, Result};
use crate::ggml::custom::{HostOp, OpInput, OpOutput};
use crate::ggml::{Backend, Context, Scheduler};
use crate::ggml::GgmlType;

/// What a frame keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kept {
    /// Every position.
    All,
    /// These positions, ascending.
    Positions(Vec<usize>),
}

impl Kept {
    pub fn count(&self, tokens_per_frame: usize) -> usize {
        match self {
            Kept::All => tokens_per_frame,
            Kept::Positions(p) => p.len(),
        }
    }
}

/// Survivors of a pruned frame: `floor((1 - k) * n)` (58 of 196 for k = 0.7), computed in f64 as
/// the reference's Python does.
pub fn survivors(k: f64, n: usize) -> usize {
    ((1.0 - k) * n as f64).floor().max(0.0) as usize
}

/// The frame a frame is compared with, or None for frames kept whole. (The stages' bounds,
/// i + 1 < F and i + 2 < F, hold for every frame that exists.)
pub fn reference_frame(f: usize) -> Option<usize> {
    match f % 4 {
        0 => None,
        // Pair stage: frame i+1 against frame i, for even i.
        1 | 3 => Some(f - 1),
        // Window stage: frame i+2 against frame i, for i divisible by 4.
        _ => Some(f - 2),
    }
}

/// The TTM selection for `n_frames` frames of `n` tokens of `dim` values each (`x` is
/// [frame][position][dim]).
pub fn select(x: &[f32], n_frames: usize, n: usize, dim: usize, k: f64) -> Vec<Kept> {
    assert_eq!(x.len(), n_frames * n * dim, "features of {n_frames} frames of {n} x {dim}");
    let m = survivors(k, n).min(n);
    let token = |f: usize, j: usize| &x[(f * n + j) * dim..(f * n + j + 1) * dim];
    (0..n_frames)
        .map(|f| match reference_frame(f) {
            None => Kept::All,
            Some(_) if m == n => Kept::All,
            Some(r) => {
                // Similarities quantized to 1e-10, so that rounding noise (identical tokens give 1
                // +- an ulp) makes true ties, which go by position: the result is unique.
                let sims: Vec<i64> = (0..n).map(|j| (cosine(token(r, j), token(f, j)) * 1e10).round() as i64).collect();
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by_key(|&j| (sims[j], j));
                let mut kept = order[..m].to_vec();
                kept.sort_unstable();
                Kept::Positions(kept)
            }
        })
        .collect()
}

/// Tokens kept for `n_frames` frames (without the newline): known before any feature is seen.
pub fn kept_count(n_frames: usize, n: usize, k: f64) -> usize {
    let m = survivors(k, n).min(n);
    (0..n_frames).map(|f| if reference_frame(f).is_none() { n } else { m }).sum()
}

/// The surviving rows, frame by frame, each frame's survivors in spatial order, written to `out`
/// (exactly the survivors' size).
pub fn gather(x: &[f32], n: usize, dim: usize, kept: &[Kept], out: &mut [f32]) {
    let mut at = 0;
    let mut put = |row: &[f32]| {
        out[at..at + row.len()].copy_from_slice(row);
        at += row.len();
    };
    for (f, keep) in kept.iter().enumerate() {
        let frame = &x[f * n * dim..(f + 1) * n * dim];
        match keep {
            Kept::All => put(frame),
            Kept::Positions(p) => p.iter().for_each(|&j| put(&frame[j * dim..(j + 1) * dim])),
        }
    }
    assert_eq!(at, out.len(), "TTM output size");
}

/// TTM as a graph operation: pooled frame tokens F32 [dim, n * frames] -> survivors F32
/// [dim, kept_count]. The selection it made is kept for the caller.
struct TtmOp {
    frames: usize,
    n: usize,
    dim: usize,
    k: f64,
    kept: Mutex<Vec<Kept>>,
}

impl HostOp for TtmOp {
    fn run(&self, inputs: &[OpInput], output: &mut OpOutput) {
        let kept = select(inputs[0].f32(), self.frames, self.n, self.dim, self.k);
        gather(inputs[0].f32(), self.n, self.dim, &kept, output.f32_mut());
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = kept;
    }
}

/// The result of TTM on a video.
#[derive(Clone, Debug)]
pub struct TtmOutput {
    /// The surviving rows ([tokens][dim]), frame by frame.
    pub rows: Vec<f32>,
    /// What each frame kept.
    pub kept: Vec<Kept>,
}

/// Runs TTM on `frames` frames of `n` pooled tokens of `dim` values (`pooled` is
/// [frame][position][dim], the newline not included) as a one-node ggml graph on the CPU.
pub fn apply(pooled: &[f32], frames: usize, n: usize, dim: usize, k: f64) -> Result<TtmOutput> {
    if frames == 0 || n == 0 || dim == 0 || pooled.len() != frames * n * dim {
        return Err(Error::invalid("TTM input", format!("{} values are not {frames} frames of {n} tokens of {dim}", pooled.len())));
    }
    let out_rows = kept_count(frames, n, k);
    let op = Arc::new(TtmOp { frames, n, dim, k, kept: Mutex::new(Vec::new()) });
    let mut g = Context::new(4, 8);
    let input = g.input("ttm_in", GgmlType::F32, &[dim as i64, (frames * n) as i64]);
    let out = g.host_op(GgmlType::F32, [dim as i64, out_rows as i64, 1, 1], &[&input], op.clone());
    g.set_name(&out, "ttm_out");
    g.set_output(&out);
    let mut graph = g.new_graph(8);
    graph.expand(&out);
    let mut sched = Scheduler::new(vec![Backend::cpu(1)], 8);
    sched.alloc(&graph, &g)?;
    input.write_f32(pooled);
    sched.compute(&graph)?;
    let rows = out.read_f32();
    let kept = std::mem::take(&mut *op.kept.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(TtmOutput { rows, kept })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame f, position j: a vector that turns with `angle(f, j)`.
    fn frames(n_frames: usize, n: usize, angle: impl Fn(usize, usize) -> f32) -> Vec<f32> {
        let mut x = Vec::new();
        for f in 0..n_frames {
            for j in 0..n {
                let a = angle(f, j);
                x.extend_from_slice(&[a.cos(), a.sin(), 0.5]);
            }
        }
        x
    }

    fn counts(kept: &[Kept], n: usize) -> Vec<usize> {
        kept.iter().map(|k| k.count(n)).collect()
    }

    #[test]
    fn token_counts_match_the_spec() {
        assert_eq!(survivors(0.7, 196), 58);
        // A full window: 196 + 3 * 58 = 370; 32 frames: 8 windows and a newline = 2961.
        assert_eq!(kept_count(4, 196, 0.7), 370);
        assert_eq!(kept_count(32, 196, 0.7) + 1, 2961);
        assert_eq!(kept_count(8, 196, 0.7) + 1, 741);
    }

    #[test]
    fn pruned_frames_keep_the_most_changed_positions_in_order() {
        // Position j of frame f turns by f * j degrees: higher positions change more.
        let x = frames(4, 10, |f, j| (f * j) as f32 * 0.05);
        let kept = select(&x, 4, 10, 3, 0.7);
        assert_eq!(kept[0], Kept::All);
        for (f, k) in kept.iter().enumerate().skip(1) {
            assert_eq!(*k, Kept::Positions(vec![7, 8, 9]), "frame {f}");
        }
        let mut out = vec![0.0; kept_count(4, 10, 0.7) * 3];
        gather(&x, 10, 3, &kept, &mut out);
        assert_eq!(out.len(), (10 + 3 * 3) * 3);
        assert_eq!(&out[10 * 3..10 * 3 + 3], &x[(10 + 7) * 3..(10 + 7) * 3 + 3]);
    }

    #[test]
    fn odd_and_small_frame_counts() {
        let n = 6;
        let x = frames(7, n, |f, j| (f * (j + 1)) as f32 * 0.1);
        // 7 frames: 0 and 4 whole; 1, 3, 5 by pair; 2 and 6 by window. The last frame stays in.
        assert_eq!(counts(&select(&x, 7, n, 3, 0.5), n), [6, 3, 3, 3, 6, 3, 3]);
        let x5 = &x[..5 * n * 3];
        assert_eq!(counts(&select(x5, 5, n, 3, 0.5), n), [6, 3, 3, 3, 6]);
        assert_eq!(counts(&select(&x[..n * 3], 1, n, 3, 0.5), n), [6]);
        assert_eq!(counts(&select(&x[..2 * n * 3], 2, n, 3, 0.5), n), [6, 3]);
        assert_eq!(counts(&select(&x[..3 * n * 3], 3, n, 3, 0.5), n), [6, 3, 3]);
        for f in [1, 2, 3, 5, 7] {
            assert_eq!(select(&x[..f * n * 3], f, n, 3, 0.5).len(), f);
            assert_eq!(kept_count(f, n, 0.5), counts(&select(&x[..f * n * 3], f, n, 3, 0.5), n).iter().sum::<usize>());
        }
    }

    #[test]
    fn k_zero_keeps_everything_and_k_near_one_keeps_the_anchors() {
        let x = frames(8, 5, |f, j| (f + j) as f32 * 0.3);
        assert!(select(&x, 8, 5, 3, 0.0).iter().all(|k| *k == Kept::All));
        let kept = select(&x, 8, 5, 3, 0.99);
        assert_eq!(counts(&kept, 5), [5, 0, 0, 0, 5, 0, 0, 0]);
    }

    #[test]
    fn identical_and_all_different_frames() {
        // Identical frames: every similarity is 1; the tie keeps the first M positions.
        let same = frames(4, 8, |_, j| j as f32 * 0.2);
        assert_eq!(select(&same, 4, 8, 3, 0.5)[1], Kept::Positions(vec![0, 1, 2, 3]));
        // Frames that differ everywhere still keep exactly M positions, the least similar ones.
        let different = frames(4, 8, |f, j| if f % 2 == 1 { j as f32 * 0.2 + std::f32::consts::PI * (j % 2) as f32 } else { j as f32 * 0.2 });
        let kept = select(&different, 4, 8, 3, 0.5);
        // Odd positions flipped by pi (cosine -1) in frames 1 and 3; frame 2 equals frame 0.
        assert_eq!(kept[1], Kept::Positions(vec![1, 3, 5, 7]));
        assert_eq!(kept[3], Kept::Positions(vec![1, 3, 5, 7]));
        assert_eq!(kept[2], Kept::Positions(vec![0, 1, 2, 3]));
    }

    #[test]
    fn the_graph_operation_equals_the_plain_function() {
        let x = frames(6, 9, |f, j| ((f * 7 + j * 3) % 11) as f32 * 0.37);
        let kept = select(&x, 6, 9, 3, 0.6);
        let mut expected = vec![0.0; kept_count(6, 9, 0.6) * 3];
        gather(&x, 9, 3, &kept, &mut expected);
        let out = apply(&x, 6, 9, 3, 0.6).unwrap();
        assert_eq!(out.kept, kept);
        assert_eq!(out.rows, expected);
        assert!(apply(&x, 5, 9, 3, 0.6).is_err());
    }
}
