//! Temporal reuse inside the vision tower: from block M on, the positions of a frame whose hidden
//! state barely changed since the previous frame are not recomputed.
//!
//! Blocks before M run on every position of every frame (batched, as without reuse). At the input
//! of block M, position j of frame t is compared with the state that produced the outputs now held
//! for j (the last frame that recomputed j): when the relative L2 distance
//! `|x_t[j] - ref[j]| / |ref[j]|` is below the threshold, j is reused: its tower output is the one
//! held, and in blocks M and above its keys and values are the held ones. The other positions run
//! through blocks M..L, attending over the whole frame: their fresh keys and values where they were
//! recomputed, the held ones elsewhere; their outputs, keys, values and reference states replace the
//! held ones. Comparing with the reference (not with frame t-1) keeps slow drifts from
//! accumulating: a position is recomputed once its total change since then crosses the threshold.
//!
//! The comparison is strict, so a threshold of 0 reuses nothing: every position takes the reuse
//! path and the result must equal the tower without reuse (a test holds it to that, bit for bit).

use crate::error::{Error, Result, Setting};
use crate::ggml::{BufferType, Context, GgmlType, Tensor};

/// Where temporal reuse starts and how much change it ignores. Valid by construction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TemporalReuse {
    layer: usize,
    threshold: f32,
}

// The threshold is finite (checked in `new`), so equality is an equivalence.
impl Eq for TemporalReuse {}

/// The largest threshold: a relative distance of 1 is a change as large as the state itself.
pub const MAX_THRESHOLD: f32 = 1.0;

impl TemporalReuse {
    /// Reuse from tower block `layer` (0-based: blocks before it always run) for positions whose
    /// relative L2 distance is below `threshold` (in [0, 1]; 0 reuses nothing). The layer is checked
    /// against the tower when a vision context takes the setting.
    pub fn new(layer: usize, threshold: f32) -> Result<TemporalReuse> {
        if !(threshold.is_finite() && (0.0..=MAX_THRESHOLD).contains(&threshold)) {
            return Err(Error::setting(Setting::VisionReuseThreshold, format!("{threshold} is outside [0, {MAX_THRESHOLD}]")));
        }
        Ok(TemporalReuse { layer, threshold })
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Checks the layer against a tower of `n_layer` blocks: reuse needs at least one block from it on.
    pub fn check_tower(&self, n_layer: usize) -> Result<()> {
        if self.layer >= n_layer {
            return Err(Error::setting(Setting::VisionReuseLayer, format!("{} is not below the vision tower's {n_layer} blocks", self.layer)));
        }
        Ok(())
    }
}

/// What reuse holds between frames of one video: per position the tower's output, and the block-M
/// input that produced it; per block from M on, the keys and values (in a device buffer, written by
/// the graphs in place).
pub(super) struct ReuseState {
    pub settings: TemporalReuse,
    /// [n_patches][hidden]; empty before a video's first frame.
    pub reference: Vec<f32>,
    pub output: Vec<f32>,
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    _ctx: Context,
}

impl ReuseState {
    /// K and V for blocks `settings.layer..n_layer`, [hidden, n_patches] F32 each, in `buft`.
    pub fn new(settings: TemporalReuse, n_layer: usize, hidden: usize, n_patches: usize, buft: BufferType) -> Result<ReuseState> {
        settings.check_tower(n_layer)?;
        let blocks = n_layer - settings.layer;
        let mut ctx = Context::new(2 * blocks + 2, 0);
        let mut cache = |name: &str, il: usize| {
            let t = ctx.new_tensor(GgmlType::F32, &[hidden as i64, n_patches as i64]);
            ctx.set_name(&t, &format!("{name}-{il}"));
            t
        };
        let k: Vec<Tensor> = (settings.layer..n_layer).map(|il| cache("v_reuse_k", il)).collect();
        let v: Vec<Tensor> = (settings.layer..n_layer).map(|il| cache("v_reuse_v", il)).collect();
        let buffer = buft.alloc_context_tensors(&ctx).ok_or(Error::Compute(crate::ggml::ComputeError::Alloc("the vision reuse cache")))?;
        // Every position is written by a video's first frame before it is read; keep it finite anyway.
        buffer.clear(0);
        Ok(ReuseState { settings, reference: Vec::new(), output: Vec::new(), k, v, _ctx: ctx })
    }

    /// Forgets the previous frame: the next one recomputes every position.
    pub fn start_video(&mut self) {
        self.reference.clear();
        self.output.clear();
    }

    /// The positions of a frame (its block-M input `x`, [n_patches][hidden]) to recompute,
    /// ascending.
    pub fn changed(&self, x: &[f32], hidden: usize) -> Vec<usize> {
        let n = x.len() / hidden;
        if self.reference.len() != x.len() {
            return (0..n).collect();
        }
        let tau2 = f64::from(self.settings.threshold) * f64::from(self.settings.threshold);
        (0..n)
            .filter(|&j| {
                let (a, r) = (&x[j * hidden..(j + 1) * hidden], &self.reference[j * hidden..(j + 1) * hidden]);
                let (mut d2, mut r2) = (0f64, 0f64);
                for (&a, &r) in a.iter().zip(r) {
                    let d = f64::from(a) - f64::from(r);
                    d2 += d * d;
                    r2 += f64::from(r) * f64::from(r);
                }
                !(d2 < tau2 * r2)
            })
            .collect()
    }

    /// Records the recomputed positions: their block-M inputs (`x`, the whole frame's) and tower
    /// outputs (`out`, [c][hidden] in the order of `positions`).
    pub fn update(&mut self, x: &[f32], positions: &[usize], out: &[f32], hidden: usize) {
        if self.reference.len() != x.len() {
            self.reference = vec![0.0; x.len()];
            self.output = vec![0.0; x.len()];
        }
        for (i, &j) in positions.iter().enumerate() {
            let row = j * hidden..(j + 1) * hidden;
            self.reference[row.clone()].copy_from_slice(&x[row.clone()]);
            self.output[row].copy_from_slice(&out[i * hidden..(i + 1) * hidden]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(TemporalReuse::new(3, 0.0).is_ok());
        assert!(TemporalReuse::new(3, 1.0).is_ok());
        for bad in [-0.1, 1.5, f32::NAN, f32::INFINITY] {
            let e = TemporalReuse::new(3, bad).unwrap_err();
            assert!(matches!(e, Error::Setting { setting: Setting::VisionReuseThreshold, .. }), "{bad}: {e}");
        }
        let r = TemporalReuse::new(26, 0.1).unwrap();
        assert!(matches!(r.check_tower(26), Err(Error::Setting { setting: Setting::VisionReuseLayer, .. })));
        assert!(r.check_tower(27).is_ok());
    }

    #[test]
    fn positions_change_by_relative_distance_and_zero_reuses_nothing() {
        let hidden = 2;
        let mut s = ReuseState {
            settings: TemporalReuse::new(0, 0.1).unwrap(),
            reference: Vec::new(),
            output: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            _ctx: Context::new(1, 0),
        };
        let first = [1.0, 0.0, 0.0, 2.0, 3.0, 4.0];
        assert_eq!(s.changed(&first, hidden), [0, 1, 2], "the first frame recomputes everything");
        s.update(&first, &[0, 1, 2], &[10.0, 10.0, 20.0, 20.0, 30.0, 30.0], hidden);
        // Position 0 moves by 0.05 (relative 0.05), 1 by 0.3 (0.15), 2 not at all.
        let next = [1.05, 0.0, 0.0, 2.3, 3.0, 4.0];
        assert_eq!(s.changed(&next, hidden), [1]);
        s.update(&next, &[1], &[21.0, 21.0], hidden);
        assert_eq!(s.output, [10.0, 10.0, 21.0, 21.0, 30.0, 30.0]);
        // Position 0 is compared with its reference, not the previous frame: 0.06 + 0.05 crosses.
        let drift = [1.11, 0.0, 0.0, 2.3, 3.0, 4.0];
        assert_eq!(s.changed(&drift, hidden), [0]);
        s.settings = TemporalReuse::new(0, 0.0).unwrap();
        assert_eq!(s.changed(&next, hidden), [0, 1, 2], "a threshold of 0 reuses nothing, not even identical states");
        s.start_video();
        assert_eq!(s.changed(&next, hidden), [0, 1, 2]);
    }
}
