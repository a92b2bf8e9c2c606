//! DyCoke stage 2, dynamic KV pruning (DP): at every decode step, the current token's attention at
//! layer L-1 scores the visual cache entries; layers L.. then attend over the text and the top
//! `keep` visual entries only. The selection is reused while the scores barely move (cosine with
//! the previous step's at least 0.9). Nothing leaves the cache: an entry left out at one step can
//! come back at a later one.
//!
//! `Selector` is the rule as a plain state machine. [`DynamicPruning`] puts it in the decode graph
//! through the LLM's decode-attention hook: layers below L-1 attend as usual; layer L-1 also
//! computes the current token's attention probabilities explicitly; a host operation (`SelectOp`)
//! turns them into the row numbers of the sparse view; layers L.. gather those rows of their cache
//! (a compact copy, so their attention work shrinks) and attend over them.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use half::f16;

use super::cosine;
use crate::ggml::custom::{HostOp, OpInput, OpOutput};
use crate::ggml::{Context, Tensor};
use crate::ggml::GgmlType;
use crate::llm::qwen2::Attention;
use crate::llm::{DecodeAttention, FullAttention};
use crate::nn;

/// What a decode run has done so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DpCounters {
    /// Decode steps that ran with a sparse view.
    pub steps: u64,
    /// Steps whose scores moved enough (cosine below the threshold) for a fresh selection.
    pub fresh_selections: u64,
    /// Entries that re-entered the selection: selected at some earlier step, left out by the
    /// previous selection, selected again.
    pub recalls: u64,
    /// Sum over steps of kept visual entries / visual entries.
    pub kept_fraction_sum: f64,
    /// Time spent scoring (averaging over heads, comparing with the last step) and selecting.
    pub scoring: Duration,
    /// Rows the sparse layers attended over at the last step (text and kept visual entries).
    pub last_rows: usize,
    /// Rows of the full cache at the last step.
    pub last_positions: usize,
}

impl DpCounters {
    pub fn mean_kept_fraction(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.kept_fraction_sum / self.steps as f64
        }
    }

    pub fn add(&mut self, other: &DpCounters) {
        self.steps += other.steps;
        self.fresh_selections += other.fresh_selections;
        self.recalls += other.recalls;
        self.kept_fraction_sum += other.kept_fraction_sum;
        self.scoring += other.scoring;
        self.last_rows = other.last_rows;
        self.last_positions = other.last_positions;
    }
}

/// The selection rule across the decode steps of one answer.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    previous: Option<Vec<f32>>,
    /// Selected visual indices (0..nv), ascending.
    selection: Vec<usize>,
    ever_selected: Vec<bool>,
}

/// The `keep` highest scores' indices, ascending (equal scores by index).
pub fn top_k(scores: &[f32], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let keep = keep.min(scores.len());
    if keep < order.len() {
        order.select_nth_unstable_by(keep, |&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        order.truncate(keep);
    }
    order.sort_unstable();
    order
}

impl Selector {
    /// One step: `scores` over the visual entries. Returns (fresh selection made, recalls).
    pub fn step(&mut self, scores: &[f32], keep: usize, threshold: f64) -> (bool, usize) {
        let fresh = match &self.previous {
            None => true,
            Some(prev) => prev.len() != scores.len() || cosine(scores, prev) < threshold,
        };
        let mut recalls = 0;
        if fresh {
            let new = top_k(scores, keep);
            if self.ever_selected.len() != scores.len() {
                self.ever_selected = vec![false; scores.len()];
            }
            for &i in &new {
                if self.ever_selected[i] && self.selection.binary_search(&i).is_err() {
                    recalls += 1;
                }
                self.ever_selected[i] = true;
            }
            self.selection = new;
        }
        self.previous = Some(scores.to_vec());
        (fresh, recalls)
    }

    pub fn selection(&self) -> &[usize] {
        &self.selection
    }
}

/// A decode run with dynamic pruning: the plan, and the state shared with the graph's operations.
#[derive(Debug)]
pub struct DpRun {
    /// Cache positions of the visual entries (per video, newline excluded).
    pub spans: Vec<Range<usize>>,
    pub keep: usize,
    pub threshold: f64,
    /// Positions valid at this step, the current token's included (set before each compute).
    pub n_positions: usize,
    pub selector: Selector,
    pub counters: DpCounters,
}

impl DpRun {
    pub fn visual(&self) -> usize {
        self.spans.iter().map(|s| s.len()).sum()
    }

    /// Rows the sparse view holds at a step with `n_positions` positions.
    pub fn rows(&self, n_positions: usize) -> usize {
        n_positions - self.visual() + self.keep
    }
}

/// Granularity of the sparse view's length: the cache view's. The decode graph is rebuilt once per
/// this many steps, and with nothing pruned the view has exactly the full path's length, so the
/// attention kernel (whose work split, and F16 accumulation order, depend on that length) gives
/// bit-identical results. Padding rows are masked, which the kernel skips before any arithmetic.
pub const SLOT_PAD: usize = crate::llm::kv_cache::KV_PAD;

impl DpRun {
    /// The sparse view's length at a step with `n_positions` positions (rows plus padding).
    pub fn slots(&self, n_positions: usize) -> usize {
        self.rows(n_positions).div_ceil(SLOT_PAD).max(1) * SLOT_PAD
    }
}

/// The head-averaged probability of each visual entry. `probs` is [n_head][n_kv].
fn visual_scores(probs: &[f32], n_kv: usize, n_head: usize, spans: &[Range<usize>]) -> Vec<f32> {
    let mut scores = Vec::with_capacity(spans.iter().map(|s| s.len()).sum());
    for span in spans {
        for p in span.clone() {
            let s: f32 = (0..n_head).map(|h| probs[h * n_kv + p]).sum();
            scores.push(s / n_head as f32);
        }
    }
    scores
}

/// The sparse view's rows: every non-visual position below `n_positions`, and the visual
/// positions whose indices (over the concatenated spans) are `selection`, in position order.
/// `out` is filled to the end by repeating the last row (masked later as padding).
fn view_rows(spans: &[Range<usize>], selection: &[usize], n_positions: usize, out: &mut [i32]) -> usize {
    let mut n = 0;
    let mut push = |p: usize, out: &mut [i32]| {
        if n < out.len() {
            out[n] = p as i32;
            n += 1;
        }
    };
    let mut pos = 0;
    let mut first_index = 0; // index of the current span's first entry in the concatenation
    let mut sel = selection.iter().peekable();
    for span in spans {
        (pos..span.start.min(n_positions)).for_each(|p| push(p, out));
        while let Some(&&i) = sel.peek() {
            if i >= first_index + span.len() {
                break;
            }
            push(span.start + (i - first_index), out);
            sel.next();
        }
        first_index += span.len();
        pos = span.end;
    }
    (pos..n_positions).for_each(|p| push(p, out));
    let last = if n > 0 { out[n - 1] } else { 0 };
    out[n..].fill(last);
    n
}

/// Layer L-1's attention probabilities [n_kv, 1, n_head] -> the sparse view's rows (I32
/// [slots], ascending, padded by repeating the last one).
struct SelectOp(Arc<Mutex<DpRun>>);

impl HostOp for SelectOp {
    fn run(&self, inputs: &[OpInput], output: &mut OpOutput) {
        let start = Instant::now();
        let mut run = lock(&self.0);
        let (n_kv, n_head) = (inputs[0].ne[0] as usize, inputs[0].ne[2] as usize);
        let scores = visual_scores(inputs[0].f32(), n_kv, n_head, &run.spans);
        let (keep, threshold) = (run.keep, run.threshold);
        let (fresh, recalls) = run.selector.step(&scores, keep, threshold);
        let n_positions = run.n_positions;
        let n = view_rows(&run.spans, run.selector.selection(), n_positions, output.i32_mut());
        let visual = run.visual().max(1);
        let c = &mut run.counters;
        c.steps += 1;
        c.fresh_selections += u64::from(fresh);
        c.recalls += recalls as u64;
        c.kept_fraction_sum += keep.min(visual) as f64 / visual as f64;
        c.last_rows = n;
        c.last_positions = n_positions;
        c.scoring += start.elapsed();
    }
}

/// The sparse view's rows -> its attention mask (F16 [slots, 1]): the padding (a row that does
/// not increase on the one before) is hidden.
struct MaskOp;

impl HostOp for MaskOp {
    fn run(&self, inputs: &[OpInput], output: &mut OpOutput) {
        let rows = inputs[0].i32();
        for (i, m) in output.f16_mut().iter_mut().enumerate() {
            let real = i == 0 || rows[i] > rows[i - 1];
            *m = if real { f16::ZERO } else { f16::NEG_INFINITY };
        }
    }
}

fn lock(run: &Mutex<DpRun>) -> MutexGuard<'_, DpRun> {
    run.lock().unwrap_or_else(|e| e.into_inner())
}

static NEXT_RUN: AtomicU64 = AtomicU64::new(1);

/// DyCoke's dynamic pruning for one answer: give it to `LlmContext::set_decode_attention` before
/// decoding and read its counters after.
pub struct DynamicPruning {
    /// Layers 0..layer attend over the whole cache; layer-1 scores; layers layer.. are pruned.
    layer: usize,
    run: Arc<Mutex<DpRun>>,
    id: u64,
}

impl DynamicPruning {
    /// Pruning of the visual entries at cache positions `spans` (ascending, disjoint; newlines
    /// excluded) from layer `layer` on, keeping `floor(nv * (1 - ratio))` of them.
    pub fn new(layer: usize, spans: Vec<Range<usize>>, ratio: f64, threshold: f64) -> DynamicPruning {
        assert!(layer >= 1, "pruning starts above at least one full layer");
        let nv: usize = spans.iter().map(|s| s.len()).sum();
        let keep = ((nv as f64) * (1.0 - ratio)).floor().clamp(0.0, nv as f64) as usize;
        let run = DpRun { spans, keep, threshold, n_positions: 0, selector: Selector::default(), counters: DpCounters::default() };
        DynamicPruning { layer, run: Arc::new(Mutex::new(run)), id: NEXT_RUN.fetch_add(1, Ordering::Relaxed) }
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Visual entries kept at each step.
    pub fn keep(&self) -> usize {
        lock(&self.run).keep
    }

    pub fn counters(&self) -> DpCounters {
        lock(&self.run).counters.clone()
    }
}

impl DecodeAttention for DynamicPruning {
    fn prepare(&self, n_positions: usize) -> u64 {
        let mut run = lock(&self.run);
        // Spans lie in the prompt, below every decode position.
        debug_assert!(run.spans.iter().all(|s| s.end < n_positions));
        run.n_positions = n_positions;
        // One graph per (run, view length).
        (self.id << 32) | run.slots(n_positions) as u64
    }

    fn attention<'a>(&'a self, full: FullAttention<'a>) -> Box<dyn Attention + 'a> {
        let slots = {
            let run = lock(&self.run);
            run.slots(run.n_positions)
        };
        Box::new(PrunedAttention { full, pruning: self, slots, view: None })
    }
}

/// The decode graph's attention under dynamic pruning.
struct PrunedAttention<'a> {
    full: FullAttention<'a>,
    pruning: &'a DynamicPruning,
    slots: usize,
    /// The sparse view's rows (I32 [slots]) and mask (F16 [slots, 1]), once layer L-1 made them.
    view: Option<(Tensor, Tensor)>,
}

impl PrunedAttention<'_> {
    /// The current token's attention probabilities over the cache at this layer, [n_kv, 1, n_head],
    /// computed explicitly (flash attention never forms them).
    fn probabilities(&self, g: &mut Context, q: &Tensor, kc: &Tensor, scale: f32) -> Tensor {
        let qp = g.permute(q, [0, 2, 1, 3]); // [head_dim, 1, n_head]
        let scores = g.mul_mat(kc, &qp); // [n_kv, 1, n_head]; query heads share their group's K
        g.soft_max_ext(&scores, Some(self.full.mask), scale)
    }
}

impl Attention for PrunedAttention<'_> {
    fn attend(&mut self, g: &mut Context, il: usize, q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Tensor {
        let layer = self.pruning.layer;
        if il + 1 < layer {
            return self.full.attend(g, il, q, k, v, scale);
        }
        let cache = self.full.cache;
        let stored = cache.store(g, il, k, v, self.full.kv_idx);
        if il + 1 == layer {
            // The scoring layer attends over everything and decides the view of the layers above.
            let (kc, vc) = cache.view(g, &stored, self.full.n_kv);
            let probs = self.probabilities(g, q, &kc, scale);
            let rows = g.host_op(GgmlType::I32, [self.slots as i64, 1, 1, 1], &[&probs], Arc::new(SelectOp(self.pruning.run.clone())));
            g.set_name(&rows, "dp_rows");
            let mask = g.host_op(GgmlType::F16, [self.slots as i64, 1, 1, 1], &[&rows], Arc::new(MaskOp));
            g.set_name(&mask, "dp_mask");
            self.view = Some((rows, mask));
            return nn::flash_attention(g, q, &kc, &vc, Some(self.full.mask), scale);
        }
        let (rows, mask) = self.view.as_ref().expect("the scoring layer comes first");
        let (kg, vg) = cache.gather(g, &stored, rows);
        g.set_name(&kg, &format!("dp_k_l{il}"));
        g.set_name(&vg, &format!("dp_v_l{il}"));
        nn::flash_attention(g, q, &kg, &vg, Some(mask), scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_takes_the_highest_and_returns_them_in_order() {
        assert_eq!(top_k(&[0.1, 0.5, 0.2, 0.9, 0.5], 3), [1, 3, 4]);
        assert_eq!(top_k(&[0.1, 0.5], 5), [0, 1]);
        assert_eq!(top_k(&[0.3, 0.3, 0.3], 2), [0, 1]);
        assert_eq!(top_k(&[1.0, 2.0], 0), Vec::<usize>::new());
    }

    /// Attention that moves: a constructed sequence of scores.
    #[test]
    fn reselection_reuse_and_recalls() {
        let mut s = Selector::default();
        let focus = |idx: &[usize]| -> Vec<f32> { (0..6).map(|i| if idx.contains(&i) { 0.4 } else { 0.05 }).collect() };
        // Step 1: nothing before, a fresh selection; no recalls yet.
        assert_eq!(s.step(&focus(&[0, 1]), 2, 0.9), (true, 0));
        assert_eq!(s.selection(), [0, 1]);
        // Step 2: nearly the same attention: the selection is reused.
        let mut almost = focus(&[0, 1]);
        almost[2] = 0.07;
        assert_eq!(s.step(&almost, 2, 0.9), (false, 0));
        assert_eq!(s.selection(), [0, 1]);
        // Step 3: attention moved to 4 and 5: fresh, new entries (not recalls).
        assert_eq!(s.step(&focus(&[4, 5]), 2, 0.9), (true, 0));
        assert_eq!(s.selection(), [4, 5]);
        // Step 4: back to 0 and 1: they re-enter the selection from the pruning cache.
        assert_eq!(s.step(&focus(&[0, 1]), 2, 0.9), (true, 2));
        assert_eq!(s.selection(), [0, 1]);
    }

    #[test]
    fn the_threshold_decides() {
        let mut s = Selector::default();
        s.step(&[1.0, 0.0, 0.0], 1, 0.9);
        // cos([1,0,0], [1,1,0]) = 0.707 < 0.9: fresh.
        assert!(s.step(&[1.0, 1.0, 0.0], 1, 0.9).0);
        // With a threshold of 0.5 the same move reuses.
        let mut t = Selector::default();
        t.step(&[1.0, 0.0, 0.0], 1, 0.5);
        assert!(!t.step(&[1.0, 1.0, 0.0], 1, 0.5).0);
    }

    #[test]
    fn the_view_holds_the_text_and_the_selection_in_position_order() {
        // Positions 0..3 text, 3..8 video A, 8..10 text, 10..14 video B, 14..16 text.
        let spans = [3..8, 10..14];
        let mut out = [0i32; 12];
        // Indices over A then B: 1 -> 4, 4 -> 7, 5 -> 10, 8 -> 13.
        let n = view_rows(&spans, &[1, 4, 5, 8], 16, &mut out);
        assert_eq!(n, 11);
        assert_eq!(out, [0, 1, 2, 4, 7, 8, 9, 10, 13, 14, 15, 15]);
        // Nothing selected: the text only.
        let n = view_rows(&spans, &[], 16, &mut out);
        assert_eq!(&out[..n], [0, 1, 2, 8, 9, 14, 15]);
        assert!(out[n..].iter().all(|&r| r == 15));
    }

    #[test]
    fn padding_is_masked() {
        let rows = [0i32, 2, 5, 5, 5];
        let mut mask = [f16::ONE; 5];
        MaskOp.run(&[OpInput::from_i32([5, 1, 1, 1], &rows)], &mut OpOutput::from_f16([5, 1, 1, 1], &mut mask));
        assert_eq!(mask, [f16::ZERO, f16::ZERO, f16::ZERO, f16::NEG_INFINITY, f16::NEG_INFINITY]);
    }
}
