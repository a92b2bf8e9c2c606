//! DyCoke token compression for video (Tao et al., CVPR 2025), in two training-free stages:
//! - [`ttm`]: temporal token merging drops frame tokens that barely changed, before prefill;
//! - [`dynamic_prune`]: at each decode step, the layers from L on attend over the text and the
//!   visual cache entries the current token attends to most; the others stay in the cache.
//!
//! The exact behaviour, and where it deliberately differs from the reference code, is in
//! models.md ("DyCoke").

pub mod dynamic_prune;
pub mod ttm;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result, Setting};

pub use dynamic_prune::{DpCounters, DynamicPruning};

/// Temporal token merging settings, valid by construction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TtmSettings {
    k: f64,
}

/// Dynamic pruning settings, valid by construction (the layer is checked against the model when
/// a [`DyCoke`] is made for it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpSettings {
    layer: Option<usize>,
    ratio: f64,
    threshold: f64,
}

pub const DEFAULT_TTM_K: f64 = 0.7;
pub const DEFAULT_DP_LAYER: usize = 3;
pub const DEFAULT_DP_RATIO: f64 = 0.7;
pub const DEFAULT_DP_THRESHOLD: f64 = 0.9;

impl TtmSettings {
    /// `k`: the share of a pruned frame's tokens that is dropped, in [0, 1) (0.7 keeps 58 of 196).
    pub fn new(k: f64) -> Result<TtmSettings> {
        check_ratio(Setting::TtmK, k)?;
        Ok(TtmSettings { k })
    }

    pub fn k(&self) -> f64 {
        self.k
    }
}

impl DpSettings {
    /// `ratio`: the share of the visual entries left out of the view, in [0, 1); the default
    /// layer and reuse threshold.
    pub fn new(ratio: f64) -> Result<DpSettings> {
        check_ratio(Setting::DpRatio, ratio)?;
        Ok(DpSettings { ratio, ..DpSettings::default() })
    }

    /// The first layer that attends over the pruned view. Its range depends on the model: it is
    /// checked when a [`DyCoke`] is made for one.
    pub fn with_layer(self, layer: usize) -> DpSettings {
        DpSettings { layer: Some(layer), ..self }
    }

    /// Cosine similarity of consecutive steps' attention above which the selection is reused.
    pub fn with_threshold(self, threshold: f64) -> Result<DpSettings> {
        if !(threshold.is_finite() && (-1.0..=1.0).contains(&threshold)) {
            return Err(Error::setting(Setting::DpThreshold, format!("{threshold} is outside [-1, 1]")));
        }
        Ok(DpSettings { threshold, ..self })
    }

    /// The layer asked for; None takes [`DEFAULT_DP_LAYER`], or the last layer but one on
    /// shallower models.
    pub fn layer(&self) -> Option<usize> {
        self.layer
    }

    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }
}

impl Default for TtmSettings {
    fn default() -> TtmSettings {
        TtmSettings { k: DEFAULT_TTM_K }
    }
}

impl Default for DpSettings {
    fn default() -> DpSettings {
        DpSettings { layer: None, ratio: DEFAULT_DP_RATIO, threshold: DEFAULT_DP_THRESHOLD }
    }
}

/// Which stages run on videos. Images and text are never compressed.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Compression {
    pub ttm: Option<TtmSettings>,
    pub dp: Option<DpSettings>,
}

/// The named presets of `--compress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    None,
    DyCoke,
}

impl Preset {
    pub fn parse(s: &str) -> Option<Preset> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "off" => Some(Preset::None),
            "dycoke" => Some(Preset::DyCoke),
            _ => None,
        }
    }
}

impl Compression {
    /// No compression: the model sees every frame token, every layer attends over every entry.
    pub fn none() -> Compression {
        Compression { ttm: None, dp: None }
    }

    /// Both stages with the paper's settings (K, L, P = 0.7, 3, 0.7).
    pub fn dycoke() -> Compression {
        Compression { ttm: Some(TtmSettings::default()), dp: Some(DpSettings::default()) }
    }

    pub fn preset(p: Preset) -> Compression {
        match p {
            Preset::None => Compression::none(),
            Preset::DyCoke => Compression::dycoke(),
        }
    }

    pub fn is_none(&self) -> bool {
        self.ttm.is_none() && self.dp.is_none()
    }

    /// The layer from which attention is pruned on a model of `n_layer` layers, or None when the
    /// model is too shallow for the default (a one-layer model has no layer to score with).
    pub fn dp_layer(&self, n_layer: usize) -> Option<usize> {
        let d = self.dp.as_ref()?;
        match d.layer {
            Some(l) => Some(l),
            None if n_layer >= 2 => Some(DEFAULT_DP_LAYER.min(n_layer - 1)),
            None => None,
        }
    }
}

/// DyCoke on one model: its settings, checked against the model once, and what it did.
///
/// It enters an answer at exactly two points:
/// 1. before prefill, on the encoded video: [`DyCoke::ttm`] is what the media encoder applies to
///    the pooled frame tokens (a node of the vision graph, or the same selection on rows already
///    on the host);
/// 2. during decode, through the language model's decode-attention hook:
///    [`DyCoke::decode_attention`] gives the pruning for a prompt's video tokens, and
///    [`DyCoke::finish_answer`] takes its counters back.
#[derive(Clone, Debug)]
pub struct DyCoke {
    compression: Compression,
    n_layer: usize,
    stats: DyCokeStats,
}

impl DyCoke {
    /// Checks `compression` against a language model of `n_layer` layers (the pruning layer must
    /// leave at least one layer below it and one above).
    pub fn new(compression: Compression, n_layer: usize) -> Result<DyCoke> {
        if let Some(l) = compression.dp.and_then(|d| d.layer) {
            if l == 0 || l >= n_layer {
                return Err(Error::setting(
                    Setting::DpLayer,
                    format!("{l} is outside 1..={}: this model has {n_layer} layers and at least one must see the whole cache", n_layer.saturating_sub(1)),
                ));
            }
        }
        Ok(DyCoke { compression, n_layer, stats: DyCokeStats::default() })
    }

    pub fn compression(&self) -> &Compression {
        &self.compression
    }

    /// Stage 1: the temporal token merging the media encoder applies to videos, if any.
    pub fn ttm(&self) -> Option<TtmSettings> {
        self.compression.ttm
    }

    /// Stage 2: the decode-attention hook for a prompt whose video frame tokens sit at `spans`
    /// (cache positions), or None when pruning is off, the model too shallow or the prompt has no
    /// video. Its state lives for one answer: attention history does not cross requests.
    pub fn decode_attention(&self, spans: &[Range<usize>]) -> Option<Arc<DynamicPruning>> {
        let dp = self.compression.dp?;
        let layer = self.compression.dp_layer(self.n_layer)?;
        let spans: Vec<Range<usize>> = spans.iter().filter(|s| !s.is_empty()).cloned().collect();
        if spans.is_empty() {
            return None;
        }
        Some(Arc::new(DynamicPruning::new(layer, spans, dp.ratio, dp.threshold)))
    }

    /// Takes an answer's pruning counters into the statistics and returns them.
    pub fn finish_answer(&mut self, pruning: &DynamicPruning) -> DpCounters {
        let c = pruning.counters();
        self.stats.dp.add(&c);
        c
    }

    /// Records the video tokens of the prompt just evaluated, before and after TTM.
    pub fn record_prompt(&mut self, before_ttm: usize, after_ttm: usize) {
        self.stats.visual_tokens_before_ttm = before_ttm;
        self.stats.visual_tokens_after_ttm = after_ttm;
    }

    /// What DyCoke did since it was made or `reset_stats`.
    pub fn stats(&self) -> &DyCokeStats {
        &self.stats
    }

    pub fn reset_stats(&mut self) {
        self.stats = DyCokeStats::default();
    }

    /// Carries statistics over from an earlier `DyCoke` (when the settings change mid-conversation).
    pub fn restore_stats(&mut self, stats: DyCokeStats) {
        self.stats = stats;
    }
}

/// Cosine similarity in f64, as torch's `cosine_similarity` (which both stages of the reference use):
/// eps 1e-8 on the norms' product.
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    dot / (na.sqrt() * nb.sqrt()).max(1e-8)
}

fn check_ratio(setting: Setting, x: f64) -> Result<()> {
    if !(x.is_finite() && (0.0..1.0).contains(&x)) {
        return Err(Error::setting(setting, format!("{x} is outside [0, 1)")));
    }
    Ok(())
}

/// What DyCoke did over a session's requests (since the session started or the last reset).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DyCokeStats {
    /// Video tokens before TTM (frames x tokens per frame), over the prompt's videos.
    pub visual_tokens_before_ttm: usize,
    /// Video tokens the language model received after TTM (newlines excluded).
    pub visual_tokens_after_ttm: usize,
    /// Decode-time pruning counters.
    pub dp: DpCounters,
}

impl DyCokeStats {
    /// One JSON object (the `--stats` line).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "visual_tokens_before_ttm": self.visual_tokens_before_ttm,
            "visual_tokens_after_ttm": self.visual_tokens_after_ttm,
            "decode_steps": self.dp.steps,
            "fresh_selections": self.dp.fresh_selections,
            "recalls": self.dp.recalls,
            "mean_kept_fraction": self.dp.mean_kept_fraction(),
            "scoring_seconds": self.dp.scoring.as_secs_f64(),
            "pruned_rows_last_step": self.dp.last_rows,
            "cache_positions_last_step": self.dp.last_positions,
        })
    }

    pub fn scoring_time(&self) -> Duration {
        self.dp.scoring
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting_of(e: Error) -> Setting {
        match e {
            Error::Setting { setting, .. } => setting,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_setting_is_checked_once_and_named() {
        assert!(TtmSettings::new(0.0).is_ok() && TtmSettings::new(0.99).is_ok());
        for k in [1.0, -0.1, f64::NAN, f64::INFINITY] {
            assert_eq!(setting_of(TtmSettings::new(k).unwrap_err()), Setting::TtmK, "{k}");
        }
        for p in [1.0, -0.1, f64::NAN] {
            assert_eq!(setting_of(DpSettings::new(p).unwrap_err()), Setting::DpRatio, "{p}");
        }
        assert_eq!(setting_of(DpSettings::default().with_threshold(1.5).unwrap_err()), Setting::DpThreshold);
        assert!(DyCoke::new(Compression::dycoke(), 24).is_ok());
        for l in [0, 24, 100] {
            let c = Compression { dp: Some(DpSettings::default().with_layer(l)), ..Compression::dycoke() };
            let e = DyCoke::new(c, 24).unwrap_err();
            assert!(!e.to_string().contains("--"), "a library error names no flag: {e}");
            assert_eq!(setting_of(e), Setting::DpLayer, "layer {l}");
        }
        let c = Compression { dp: Some(DpSettings::default().with_layer(23)), ..Compression::dycoke() };
        assert!(DyCoke::new(c, 24).is_ok());
    }

    #[test]
    fn pruning_needs_video_and_a_deep_enough_model() {
        let d = DyCoke::new(Compression::dycoke(), 24).unwrap();
        assert!(d.decode_attention(&[]).is_none());
        assert!(d.decode_attention(&[5..5]).is_none());
        assert!(d.decode_attention(&[5..50]).is_some());
        assert!(DyCoke::new(Compression::dycoke(), 1).unwrap().decode_attention(&[5..50]).is_none());
        assert!(DyCoke::new(Compression::none(), 24).unwrap().decode_attention(&[5..50]).is_none());
    }

    #[test]
    fn default_layer_fits_the_model() {
        let c = Compression::dycoke();
        assert_eq!(c.dp_layer(24), Some(3));
        assert_eq!(c.dp_layer(2), Some(1));
        assert_eq!(c.dp_layer(1), None);
        assert_eq!(Compression::none().dp_layer(24), None);
    }
}
