//! The projector (linear, exact GELU, linear) into the language model's width, video pooling
//! (bilinear, half-pixel, each frame's patch grid to half its side rounded up), and the anyres
//! packing of image features (unpad, downscale, a newline after each row, the base image first).

use crate::error::Result;
use crate::ggml::{Context, ScaleMode, Tensor};
use crate::gguf::names::clip as keys;
use crate::gguf::names::vision::{Param::Bias, Param::Weight, ProjLayer, Tensor as Name};
use crate::gguf::{GgufError, GgufFile};
use crate::nn;
use crate::weights::{WeightLoader, WeightUse};

pub struct ProjectorWeights {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    /// The width of the language model the projector feeds.
    pub out_dim: usize,
}

impl ProjectorWeights {
    pub fn load(w: &mut WeightLoader, hidden: usize) -> Result<ProjectorWeights> {
        let file: &GgufFile = w.file();
        let first = Name::Projector(ProjLayer::First, Weight);
        // Which of the first layer's names the file uses; its bias goes by the same one.
        let alias = first
            .names()
            .iter()
            .position(|n| file.tensor(n).is_some())
            .ok_or_else(|| file.error::<crate::gguf::Error>(GgufError::MissingTensor { tensor: first.describe() }))?;
        let (w1_name, b1_name) = (first.names().swap_remove(alias), Name::Projector(ProjLayer::First, Bias).names().swap_remove(alias));
        let (w2_name, b2_name) = (Name::Projector(ProjLayer::Second, Weight).name(), Name::Projector(ProjLayer::Second, Bias).name());
        let out = file.tensor(&w2_name).ok_or_else(|| file.error::<crate::gguf::Error>(GgufError::MissingTensor { tensor: w2_name.clone() }))?;
        let d = out.shape.get(1).copied().unwrap_or(0);
        if d == 0 || d > 1 << 16 {
            return Err(file.error(GgufError::TensorShape { tensor: w2_name, found: out.shape.clone(), expected: vec![d, d] }));
        }
        if let Some(pd) = file.get_int::<u64>(keys::PROJECTION_DIM)? {
            // 0 in legacy files; otherwise it states the language model's width.
            if pd != 0 && pd != d {
                return Err(file.error(GgufError::KeyValue {
                    key: keys::PROJECTION_DIM.into(),
                    value: pd.to_string(),
                    problem: format!("the projector's output is {d} wide"),
                }));
            }
        }
        if let Some(act) = file.get_str(keys::PROJECTOR_ACT)? {
            if act != "gelu_erf" {
                return Err(file.error(GgufError::KeyValue { key: keys::PROJECTOR_ACT.into(), value: act.into(), problem: "only \"gelu_erf\" is supported".into() }));
            }
        }
        let h = hidden as u64;
        Ok(ProjectorWeights {
            w1: w.tensor(&w1_name, &[h, d], WeightUse::Matmul, None)?,
            b1: w.tensor(&b1_name, &[d], WeightUse::Vector, None)?,
            w2: w.tensor(&w2_name, &[d, d], WeightUse::Matmul, None)?,
            b2: w.tensor(&b2_name, &[d], WeightUse::Vector, None)?,
            out_dim: d as usize,
        })
    }

    /// [hidden, ...] -> [out_dim, ...]
    pub fn build(&self, g: &mut Context, features: &Tensor) -> Tensor {
        let x = nn::linear(g, features, &self.w1, Some(&self.b1));
        g.set_name(&x, "v_mm_1");
        let x = g.gelu_erf(&x);
        g.set_name(&x, "v_mm_act");
        let x = nn::linear(g, &x, &self.w2, Some(&self.b2));
        g.set_name(&x, "v_projected");
        x
    }
}

/// Bilinear pooling of each frame's grid: [dim, grid*grid, batch] -> [dim, pooled*pooled, batch],
/// as torch's `interpolate(mode="bilinear", align_corners=False)` (ggml's half-pixel bilinear).
pub fn build_pool(g: &mut Context, x: &Tensor, grid: usize, pooled: usize) -> Tensor {
    let [d, _, b, _] = x.ne();
    let x = g.reshape(x, &[d, grid as i64, grid as i64, b]); // [dim, column, row, frame]
    let x = g.permute(&x, [2, 0, 1, 3]); // [column, row, dim, frame]
    let x = g.cont(&x);
    let x = g.interpolate(&x, [pooled as i64, pooled as i64, d, b], ScaleMode::Bilinear);
    let x = g.permute(&x, [1, 2, 0, 3]); // [dim, column, row, frame]
    let x = g.cont(&x);
    let x = g.reshape(&x, &[d, (pooled * pooled) as i64, b]);
    g.set_name(&x, "v_pooled");
    x
}

/// torch's bilinear `interpolate` (align_corners=False, no antialias) of a CHW map, on the host.
pub fn bilinear_resize(map: &[f32], channels: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let axis = |out: usize, input: usize| -> Vec<(usize, usize, f32)> {
        let scale = input as f32 / out as f32;
        (0..out)
            .map(|o| {
                let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(input - 1);
                let i1 = (i0 + 1).min(input - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(oh, h), axis(ow, w));
    let mut out = vec![0f32; channels * oh * ow];
    for c in 0..channels {
        let m = &map[c * h * w..(c + 1) * h * w];
        for (oy, &(y0, y1, ly)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, lx)) in xs.iter().enumerate() {
                let top = (1.0 - lx) * m[y0 * w + x0] + lx * m[y0 * w + x1];
                let bottom = (1.0 - lx) * m[y1 * w + x0] + lx * m[y1 * w + x1];
                out[(c * oh + oy) * ow + ox] = (1.0 - ly) * top + ly * bottom;
            }
        }
    }
    out
}

/// Python's `int(round(x, 7))` for the sizes unpadding computes (the rounding hides float noise
/// such as 26.9999999).
fn round7_to_int(x: f64) -> usize {
    ((x * 1e7).round() / 1e7) as usize
}

/// Packs anyres features like transformers' `pack_image_features`: `features` holds each crop's
/// [grid*grid, dim] features, the base image first; the tiles form `tiles` (rows, columns) of the
/// image, whose original size is `image` (height, width). Returns [tokens, dim].
pub fn pack_anyres(features: &[f32], dim: usize, grid: usize, tiles: (usize, usize), image: (usize, usize), newline: &[f32], max_patches: usize) -> Vec<f32> {
    let per_crop = grid * grid * dim;
    let base = &features[..per_crop];
    let (gh, gw) = tiles;
    let (full_h, full_w) = (gh * grid, gw * grid);
    // The tiles' features as one CHW map.
    let mut map = vec![0f32; dim * full_h * full_w];
    for ty in 0..gh {
        for tx in 0..gw {
            let tile = &features[(1 + ty * gw + tx) * per_crop..(2 + ty * gw + tx) * per_crop];
            for r in 0..grid {
                for c in 0..grid {
                    let token = &tile[(r * grid + c) * dim..(r * grid + c + 1) * dim];
                    let (y, x) = (ty * grid + r, tx * grid + c);
                    for (ch, &v) in token.iter().enumerate() {
                        map[(ch * full_h + y) * full_w + x] = v;
                    }
                }
            }
        }
    }
    // Drop the rows or columns that came from padding.
    let (oh, ow) = (image.0 as f64, image.1 as f64);
    let (mut y0, mut y1, mut x0, mut x1) = (0, full_h, 0, full_w);
    if ow / oh > full_w as f64 / full_h as f64 {
        let new_h = round7_to_int(oh * (full_w as f64 / ow));
        let pad = (full_h - new_h.min(full_h)) / 2;
        (y0, y1) = (pad, full_h - pad);
    } else {
        let new_w = round7_to_int(ow * (full_h as f64 / oh));
        let pad = (full_w - new_w.min(full_w)) / 2;
        (x0, x1) = (pad, full_w - pad);
    }
    let (mut h, mut w) = (y1 - y0, x1 - x0);
    let mut cropped = vec![0f32; dim * h * w];
    for ch in 0..dim {
        for y in 0..h {
            let src = (ch * full_h + y0 + y) * full_w + x0;
            cropped[(ch * h + y) * w..(ch * h + y + 1) * w].copy_from_slice(&map[src..src + w]);
        }
    }
    // Too many tokens: shrink the map to about max_patches crops' worth.
    let ratio = ((h * w) as f64 / (max_patches * grid * grid) as f64).sqrt();
    if ratio > 1.1 {
        let (nh, nw) = ((h as f64 / ratio).floor() as usize, (w as f64 / ratio).floor() as usize);
        cropped = bilinear_resize(&cropped, dim, h, w, nh, nw);
        (h, w) = (nh, nw);
    }
    // Row-major tokens, a newline after each row, after the base image's tokens.
    let mut out = Vec::with_capacity(per_crop + h * (w + 1) * dim);
    out.extend_from_slice(base);
    for y in 0..h {
        for x in 0..w {
            out.extend((0..dim).map(|ch| cropped[(ch * h + y) * w + x]));
        }
        out.extend_from_slice(newline);
    }
    out
}
