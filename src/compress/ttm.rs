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
//!
//! The selection rule (`select`) is a plain function. In the vision graph it runs as a host
//! operation right after pooling (`build`) that outputs the kept rows' indices, and a row gather
//! picks the survivors there, so pooled rows come back to the host once, already compressed.
//! `apply` does the same on rows already on the host (cached or saved embeddings).

use std::sync::Arc;

use super::cosine;
use crate::error::{Error, Result};
use crate::ggml::custom::{HostOp, OpInput, OpOutput};
use crate::ggml::{Context, GgmlType, Tensor};

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

/// The kept rows' indices into `x`'s rows (frame f, position j is row f * n + j), frame by frame,
/// each frame's survivors in spatial order: the order `gather` writes them in.
pub fn kept_rows(kept: &[Kept], n: usize) -> Vec<i32> {
    let mut rows = Vec::new();
    for (f, keep) in kept.iter().enumerate() {
        match keep {
            Kept::All => rows.extend((0..n).map(|j| (f * n + j) as i32)),
            Kept::Positions(p) => rows.extend(p.iter().map(|&j| (f * n + j) as i32)),
        }
    }
    rows
}

/// The selection back from `kept_rows`' indices for `frames` frames of `n` tokens: a frame that
/// keeps all its positions is `Kept::All`, as `select` says of it. None when the indices are not
/// ascending rows of those frames.
pub fn kept_from_rows(rows: &[i32], frames: usize, n: usize) -> Option<Vec<Kept>> {
    let mut positions = vec![Vec::new(); frames];
    let mut last = -1i64;
    for &r in rows {
        let r64 = i64::from(r);
        if r64 <= last || r64 >= (frames * n) as i64 {
            return None;
        }
        last = r64;
        positions[r as usize / n].push(r as usize % n);
    }
    Some(positions.into_iter().map(|p| if p.len() == n { Kept::All } else { Kept::Positions(p) }).collect())
}

/// The selection as a graph operation: pooled frame tokens F32 [dim, n * frames] -> the kept rows'
/// indices I32 [kept_count] (see `kept_rows`).
struct TtmSelect {
    frames: usize,
    n: usize,
    dim: usize,
    k: f64,
}

impl HostOp for TtmSelect {
    fn run(&self, inputs: &[OpInput], output: &mut OpOutput) {
        let kept = select(inputs[0].f32(), self.frames, self.n, self.dim, self.k);
        output.i32_mut().copy_from_slice(&kept_rows(&kept, self.n));
    }
}

/// TTM as nodes of a graph: `pooled` F32 [dim, n * frames] (contiguous; frame 0 must be the first
/// of a window of four) -> (survivors F32 [dim, kept_count], their row indices I32 [kept_count]).
/// The selection runs on the host; the gather runs wherever the pooled rows are.
pub fn build(g: &mut Context, pooled: &Tensor, frames: usize, n: usize, k: f64) -> (Tensor, Tensor) {
    let dim = pooled.ne()[0];
    let op = Arc::new(TtmSelect { frames, n, dim: dim as usize, k });
    let idx = g.host_op(GgmlType::I32, [kept_count(frames, n, k) as i64, 1, 1, 1], &[pooled], op);
    g.set_name(&idx, "v_ttm_rows");
    let rows = g.get_rows(pooled, &idx);
    g.set_name(&rows, "v_ttm_out");
    (rows, idx)
}

/// The result of TTM on a video.
#[derive(Clone, Debug)]
pub struct TtmOutput {
    /// The surviving rows ([tokens][dim]), frame by frame.
    pub rows: Vec<f32>,
    /// What each frame kept.
    pub kept: Vec<Kept>,
}

/// TTM on the host, on `frames` frames of `n` pooled tokens of `dim` values (`pooled` is
/// [frame][position][dim], the newline not included), for rows that are already there (an
/// embedding cache, a features file). The vision graph's TTM node gives the same rows and kept sets.
pub fn apply(pooled: &[f32], frames: usize, n: usize, dim: usize, k: f64) -> Result<TtmOutput> {
    if frames == 0 || n == 0 || dim == 0 || pooled.len() != frames * n * dim {
        return Err(Error::invalid("TTM input", format!("{} values are not {frames} frames of {n} tokens of {dim}", pooled.len())));
    }
    let kept = select(pooled, frames, n, dim, k);
    let mut rows = vec![0.0; kept_count(frames, n, k) * dim];
    gather(pooled, n, dim, &kept, &mut rows);
    Ok(TtmOutput { rows, kept })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::{Backend, Scheduler};

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
    fn the_graph_nodes_equal_the_host_function() {
        let (n_frames, n, dim, k) = (6, 9, 3, 0.6);
        let x = frames(n_frames, n, |f, j| ((f * 7 + j * 3) % 11) as f32 * 0.37);
        let mut g = Context::new(8, 8);
        let input = g.input("ttm_in", GgmlType::F32, &[dim as i64, (n_frames * n) as i64]);
        let (rows, idx) = build(&mut g, &input, n_frames, n, k);
        g.set_output(&rows);
        g.set_output(&idx);
        let mut graph = g.new_graph(8);
        graph.expand(&rows);
        let mut sched = Scheduler::new(vec![Backend::cpu(1)], 8);
        sched.alloc(&graph, &g).unwrap();
        input.write_f32(&x);
        sched.compute(&graph).unwrap();
        let want = apply(&x, n_frames, n, dim, k).unwrap();
        assert_eq!(want.kept, select(&x, n_frames, n, dim, k));
        assert_eq!(rows.read_f32(), want.rows);
        let idx: Vec<i32> = idx.read_i32();
        assert_eq!(idx, kept_rows(&want.kept, n));
        assert_eq!(kept_from_rows(&idx, n_frames, n), Some(want.kept));
        assert!(apply(&x, 5, n, dim, k).is_err());
    }

    #[test]
    fn row_indices_round_trip_and_reject_what_is_not_a_selection() {
        let kept = vec![Kept::All, Kept::Positions(vec![1, 3]), Kept::Positions(vec![]), Kept::Positions(vec![0, 1, 2, 3])];
        let rows = kept_rows(&kept, 4);
        assert_eq!(rows, [0, 1, 2, 3, 5, 7, 12, 13, 14, 15]);
        // A frame keeping every position is "All", as `select` reports it.
        let back = kept_from_rows(&rows, 4, 4).unwrap();
        assert_eq!(back[..3], kept[..3]);
        assert_eq!(back[3], Kept::All);
        assert_eq!(kept_from_rows(&[0, 0], 1, 4), None);
        assert_eq!(kept_from_rows(&[2, 1], 1, 4), None);
        assert_eq!(kept_from_rows(&[4], 1, 4), None);
        assert_eq!(kept_from_rows(&[-1], 1, 4), None);
    }
}
