//! DyCoke options shared by `run` and `chat`.

use clap::Args;
use dycoke::compress::{Compression, DpSettings, Preset, TtmSettings};
use dycoke::Error;

#[derive(Args, Clone, Default)]
pub struct CompressArgs {
    /// Token compression of videos: `dycoke` (TTM and dynamic pruning) or `none`
    /// [default: dycoke with --video, none without].
    #[arg(long, value_name = "PRESET", value_parser = parse_preset)]
    pub compress: Option<Preset>,
    /// TTM: share of each pruned frame's tokens dropped before prefill, in [0, 1) [default: 0.7].
    #[arg(long, value_name = "K", allow_negative_numbers = true, conflicts_with = "no_ttm")]
    pub ttm_k: Option<f64>,
    /// Turn temporal token merging off (every frame token reaches the language model).
    #[arg(long)]
    pub no_ttm: bool,
    /// Dynamic pruning: layers below L attend over the whole cache, layer L-1 scores the video
    /// tokens, layers from L on see the selected ones [default: 3].
    #[arg(long, value_name = "L", allow_negative_numbers = true, conflicts_with = "no_dp")]
    pub dp_layer: Option<usize>,
    /// Dynamic pruning: share of the video tokens left out at each decode step, in [0, 1) [default: 0.7].
    #[arg(long, value_name = "P", allow_negative_numbers = true, conflicts_with = "no_dp")]
    pub dp_ratio: Option<f64>,
    /// Turn dynamic pruning off (every layer attends over the whole cache).
    #[arg(long)]
    pub no_dp: bool,
    /// At the end, print what DyCoke did as one JSON object on stderr.
    #[arg(long)]
    pub stats: bool,
}

fn parse_preset(s: &str) -> Result<Preset, String> {
    Preset::parse(s).ok_or_else(|| format!("unknown compression {s:?}; use dycoke or none"))
}

impl CompressArgs {
    /// The flags that ask for compression, by name, for error messages.
    fn asked(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.compress == Some(Preset::DyCoke) {
            v.push("--compress dycoke");
        }
        if self.ttm_k.is_some() {
            v.push("--ttm-k");
        }
        if self.dp_layer.is_some() {
            v.push("--dp-layer");
        }
        if self.dp_ratio.is_some() {
            v.push("--dp-ratio");
        }
        v
    }

    /// The settings these flags give, for a prompt with or without video. Ranges are checked here;
    /// the layer is checked against the model when the session opens.
    pub fn compression(&self, has_video: bool) -> Result<Compression, Error> {
        let asked = self.asked();
        if !has_video && !asked.is_empty() {
            return Err(Error::invalid("compression", format!("{} compresses videos, and no --video was given", asked.join(", "))));
        }
        let preset = self.compress.unwrap_or(if has_video { Preset::DyCoke } else { Preset::None });
        if preset == Preset::None {
            if let Some(flag) = asked.iter().find(|f| !f.starts_with("--compress")) {
                return Err(Error::invalid("compression", format!("{flag} has no effect with --compress none")));
            }
            return Ok(Compression::none());
        }
        // Ranges are checked here, before anything loads; the layer against the model later.
        let ttm = if self.no_ttm { None } else { Some(self.ttm_k.map_or(Ok(TtmSettings::default()), TtmSettings::new)?) };
        let dp = if self.no_dp {
            None
        } else {
            let d = self.dp_ratio.map_or(Ok(DpSettings::default()), DpSettings::new)?;
            Some(match self.dp_layer {
                Some(l) => d.with_layer(l),
                None => d,
            })
        };
        Ok(Compression { ttm, dp })
    }
}
