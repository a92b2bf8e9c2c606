//! DyCoke token compression for video (Tao et al., CVPR 2025), in two training-free stages:
//! - [`ttm`]: temporal token merging drops frame tokens that barely changed, before prefill;
//! - [`dynamic_prune`]: at each decode step, the layers from L on attend over the text and the
//!   visual cache entries the current token attends to most; the others stay in the cache.
//!
//! The exact behaviour, and where it deliberately differs from the reference code, is in
//! models.md ("DyCoke").

pub mod dynamic_prune;
pub mod ttm;

use std::time::Duration;

use crate::error::{Error, Result};

pub use dynamic_prune::DpCounters;

/// Temporal token merging settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TtmSettings {
    /// Share of a pruned frame's tokens that is dropped (0.7 keeps 58 of 196).
    pub k: f64,
}

/// Dynamic pruning settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpSettings {
    /// The first layer that attends over the pruned view (1-based count of full layers below it);
    /// `None` takes [`DEFAULT_DP_LAYER`], or the last layer but one on shallower models.
    pub layer: Option<usize>,
    /// Share of the visual entries left out of the view.
    pub ratio: f64,
    /// Cosine similarity of consecutive steps' attention above which the selection is reused.
    pub threshold: f64,
}

pub const DEFAULT_TTM_K: f64 = 0.7;
pub const DEFAULT_DP_LAYER: usize = 3;
pub const DEFAULT_DP_RATIO: f64 = 0.7;
pub const DEFAULT_DP_THRESHOLD: f64 = 0.9;

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

    /// Checks the settings against a model of `n_layer` layers; errors name the setting.
    pub fn validate(&self, n_layer: usize) -> Result<()> {
        if let Some(t) = &self.ttm {
            check_ratio("TTM prune ratio (--ttm-k)", t.k)?;
        }
        if let Some(d) = &self.dp {
            check_ratio("pruning ratio (--dp-ratio)", d.ratio)?;
            if !(d.threshold.is_finite() && (-1.0..=1.0).contains(&d.threshold)) {
                return Err(Error::invalid("pruning reuse threshold", format!("{} is outside [-1, 1]", d.threshold)));
            }
            if let Some(l) = d.layer {
                if l == 0 || l >= n_layer {
                    return Err(Error::invalid(
                        "pruning layer (--dp-layer)",
                        format!("{l} is outside 1..={}: this model has {n_layer} layers and at least one must see the whole cache", n_layer.saturating_sub(1)),
                    ));
                }
            }
        }
        Ok(())
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

fn check_ratio(what: &str, x: f64) -> Result<()> {
    if !(x.is_finite() && (0.0..1.0).contains(&x)) {
        return Err(Error::invalid(what, format!("{x} is outside [0, 1)")));
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

    #[test]
    fn validation_names_the_setting() {
        assert!(Compression::dycoke().validate(24).is_ok());
        let mut c = Compression::dycoke();
        c.ttm = Some(TtmSettings { k: 1.0 });
        assert!(c.validate(24).unwrap_err().to_string().contains("--ttm-k"));
        c.ttm = Some(TtmSettings { k: -0.1 });
        assert!(c.validate(24).is_err());
        c.ttm = Some(TtmSettings { k: f64::NAN });
        assert!(c.validate(24).is_err());
        let mut c = Compression::dycoke();
        c.dp = Some(DpSettings { ratio: 1.0, ..DpSettings::default() });
        assert!(c.validate(24).unwrap_err().to_string().contains("--dp-ratio"));
        for l in [0, 24, 100] {
            c.dp = Some(DpSettings { layer: Some(l), ..DpSettings::default() });
            assert!(c.validate(24).unwrap_err().to_string().contains("--dp-layer"), "layer {l}");
        }
        c.dp = Some(DpSettings { layer: Some(23), ..DpSettings::default() });
        assert!(c.validate(24).is_ok());
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
