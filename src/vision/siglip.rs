//! The SigLIP vision tower: patch embedding, position embedding, pre-LN transformer blocks (tanh
//! GELU), and no post-LN: LLaVA-OneVision uses the last block's raw output.

use crate::error::{Error, Result};
use crate::ggml::{Context, Tensor};
use crate::gguf::names::clip as keys;
use crate::ggml::GgmlType;
use crate::gguf::names::vision::{BlockPart, Param, Param::Bias, Param::Weight, Tensor as Name};
use crate::gguf::{GgufError, GgufFile};
use crate::nn;
use crate::weights::{WeightLoader, WeightUse};

/// The tower's shape, read once from the mmproj metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct SiglipParams {
    pub image_size: usize,
    pub patch_size: usize,
    /// Patches per side (the remainder pixels are discarded, as the convolution does).
    pub grid: usize,
    pub hidden: usize,
    pub ffn: usize,
    /// Blocks run (the feature layer).
    pub n_layer: usize,
    pub n_head: usize,
    pub eps: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl SiglipParams {
    pub fn n_patches(&self) -> usize {
        self.grid * self.grid
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.n_head
    }

    pub fn patch_values(&self) -> usize {
        3 * self.patch_size * self.patch_size
    }

    pub fn from_gguf(f: &GgufFile) -> Result<SiglipParams> {
        let bad = |k: &str, v: String, problem: &str| f.error(GgufError::KeyValue { key: k.into(), value: v, problem: problem.into() });
        let dim = |k: &str, max: usize| -> Result<usize> {
            let v: usize = f.require_int(k)?;
            if v == 0 || v > max {
                return Err(bad(k, v.to_string(), &format!("it must be between 1 and {max}")));
            }
            Ok(v)
        };
        let image_size = dim(keys::IMAGE_SIZE, 4096)?;
        let patch_size = dim(keys::PATCH_SIZE, image_size)?;
        let hidden = dim(keys::EMBEDDING_LENGTH, 1 << 16)?;
        let ffn = dim(keys::FEED_FORWARD_LENGTH, 1 << 18)?;
        let blocks = dim(keys::BLOCK_COUNT, 512)?;
        let n_head = dim(keys::HEAD_COUNT, 1024)?;
        if hidden % n_head != 0 {
            return Err(bad(keys::HEAD_COUNT, n_head.to_string(), &format!("it must divide the hidden size {hidden}")));
        }
        let eps = f.get_float(keys::LAYER_NORM_EPS)?.unwrap_or(1e-6) as f32;
        if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
            return Err(bad(keys::LAYER_NORM_EPS, eps.to_string(), "it must be between 0 and 1"));
        }
        // The feature layer: after n blocks. Several layers (concatenated features) are another model.
        let n_layer = match f.get_array(keys::FEATURE_LAYER)? {
            None => blocks,
            Some(a) if a.len() == 1 => {
                let n = a.integer_at(0).ok_or_else(|| bad(keys::FEATURE_LAYER, format!("{a}"), "it must hold integers"))?;
                if n < 1 || n > blocks as i128 {
                    return Err(bad(keys::FEATURE_LAYER, n.to_string(), &format!("it must be between 1 and the block count {blocks}")));
                }
                n as usize
            }
            Some(a) => return Err(bad(keys::FEATURE_LAYER, format!("{a}"), "features of several layers are not supported")),
        };
        let triple = |k: &str, default: f32| -> Result<[f32; 3]> {
            match f.get_array(k)? {
                None => Ok([default; 3]),
                Some(a) if a.len() == 3 => {
                    let v: Option<Vec<f32>> = (0..3).map(|i| a.float_at(i).map(|x| x as f32)).collect();
                    let v = v.ok_or_else(|| bad(k, format!("{a}"), "it must hold 3 floats"))?;
                    if v.iter().any(|x| !x.is_finite()) {
                        return Err(bad(k, format!("{a}"), "it must hold finite numbers"));
                    }
                    Ok([v[0], v[1], v[2]])
                }
                Some(a) => Err(bad(k, format!("{a}"), "it must hold 3 floats")),
            }
        };
        let mean = triple(keys::IMAGE_MEAN, 0.5)?;
        let std = triple(keys::IMAGE_STD, 0.5)?;
        if std.iter().any(|&s| s <= 0.0) {
            return Err(bad(keys::IMAGE_STD, format!("{std:?}"), "every value must be positive"));
        }
        if let Some(act) = f.get_str(keys::VISION_ACT)? {
            if act != "gelu_tanh" {
                return Err(bad(keys::VISION_ACT, act.into(), "only \"gelu_tanh\" (SigLIP's) is supported"));
            }
        }
        Ok(SiglipParams { image_size, patch_size, grid: image_size / patch_size, hidden, ffn, n_layer, n_head, eps, mean, std })
    }
}

struct Block {
    ln1_w: Tensor,
    ln1_b: Tensor,
    q_w: Tensor,
    q_b: Tensor,
    k_w: Tensor,
    k_b: Tensor,
    v_w: Tensor,
    v_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    ln2_w: Tensor,
    ln2_b: Tensor,
    up_w: Tensor,
    up_b: Tensor,
    down_w: Tensor,
    down_b: Tensor,
}

pub struct SiglipWeights {
    patch_w: Tensor,
    patch_b: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
}

impl SiglipWeights {
    pub fn load(w: &mut WeightLoader, p: &SiglipParams) -> Result<SiglipWeights> {
        let (h, ff, ps) = (p.hidden as u64, p.ffn as u64, p.patch_size as u64);
        let patch_name = Name::PatchEmbd(Weight).name();
        let patch_w = w.tensor(&patch_name, &[ps, ps, 3, h], WeightUse::Matmul, None)?;
        if !matches!(patch_w.ty(), GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16) {
            return Err(w.file().error(GgufError::TensorType { tensor: patch_name, found: patch_w.ty().to_string(), expected: "F32, F16 or BF16".into() }));
        }
        let patch_b = w.tensor(&Name::PatchEmbd(Bias).name(), &[h], WeightUse::Vector, None)?;
        let pos = w.tensor(&Name::PosEmbd.name(), &[h, p.n_patches() as u64], WeightUse::Exact(GgmlType::F32), None)?;
        let mut blocks = Vec::with_capacity(p.n_layer);
        for i in 0..p.n_layer {
            let name = |part: BlockPart, param: Param| Name::Block(i, part, param).name();
            // The legacy converter names fc1 ffn_down and fc2 ffn_up; clip.cpp swaps them back when
            // ffn_down's first dimension is the hidden size. So do we.
            let swapped = w.file().tensor(&name(BlockPart::FfnDown, Weight)).is_some_and(|t| t.shape.first() == Some(&h) && h != ff);
            let (fc1, fc2) = if swapped { (BlockPart::FfnDown, BlockPart::FfnUp) } else { (BlockPart::FfnUp, BlockPart::FfnDown) };
            let l = Some(i);
            let mut t = |part: BlockPart, param: Param, shape: &[u64]| {
                // Matrices feed matrix products (any stored type); norms and biases must be F32.
                let usage = if param == Weight && shape.len() == 2 { WeightUse::Matmul } else { WeightUse::Vector };
                w.tensor(&name(part, param), shape, usage, l)
            };
            blocks.push(Block {
                ln1_w: t(BlockPart::Ln1, Weight, &[h])?,
                ln1_b: t(BlockPart::Ln1, Bias, &[h])?,
                q_w: t(BlockPart::AttnQ, Weight, &[h, h])?,
                q_b: t(BlockPart::AttnQ, Bias, &[h])?,
                k_w: t(BlockPart::AttnK, Weight, &[h, h])?,
                k_b: t(BlockPart::AttnK, Bias, &[h])?,
                v_w: t(BlockPart::AttnV, Weight, &[h, h])?,
                v_b: t(BlockPart::AttnV, Bias, &[h])?,
                out_w: t(BlockPart::AttnOut, Weight, &[h, h])?,
                out_b: t(BlockPart::AttnOut, Bias, &[h])?,
                ln2_w: t(BlockPart::Ln2, Weight, &[h])?,
                ln2_b: t(BlockPart::Ln2, Bias, &[h])?,
                up_w: t(fc1, Weight, &[h, ff])?,
                up_b: t(fc1, Bias, &[ff])?,
                down_w: t(fc2, Weight, &[ff, h])?,
                down_b: t(fc2, Bias, &[h])?,
            });
        }
        if blocks.is_empty() {
            return Err(Error::invalid("vision model", "the vision tower has no blocks"));
        }
        Ok(SiglipWeights { patch_w, patch_b, pos, blocks })
    }

    /// The tower over a batch of images given as patches ([3 p^2, n_patches * batch], see
    /// `preprocess::patchify`): returns the features [hidden, n_patches, batch].
    pub fn build(&self, g: &mut Context, p: &SiglipParams, patches: &Tensor, batch: usize) -> Tensor {
        let x = self.embed(g, p, patches, batch);
        self.build_blocks(g, p, &x, 0..self.blocks.len())
    }

    /// Patch and position embedding: patches [3 p^2, n_patches * batch] -> [hidden, n_patches, batch].
    pub fn embed(&self, g: &mut Context, p: &SiglipParams, patches: &Tensor, batch: usize) -> Tensor {
        let (h, n, b) = (p.hidden as i64, p.n_patches() as i64, batch as i64);
        // The convolution with stride = kernel is a matrix product over flattened patches.
        let kernel = g.reshape(&self.patch_w, &[p.patch_values() as i64, h]);
        let x = nn::linear(g, patches, &kernel, Some(&self.patch_b));
        let x = g.reshape(&x, &[h, n, b]);
        let x = g.add(&x, &self.pos);
        g.set_name(&x, "v_inp");
        x
    }

    /// Blocks `blocks` over whole images: x [hidden, n_patches, batch] is the first block's input;
    /// returns the last block's output.
    pub fn build_blocks(&self, g: &mut Context, p: &SiglipParams, x: &Tensor, blocks: std::ops::Range<usize>) -> Tensor {
        let mut x = x.clone();
        for il in blocks {
            x = self.block(g, p, il, &x, None);
        }
        x
    }

    /// Blocks `first..` for some positions of one image, the others reused: x [hidden, c] holds
    /// block `first`'s input at `kv.positions`, and each block's keys and values at those
    /// positions overwrite that block's rows of the image's K and V (`kv.k[i]`, `kv.v[i]` for block
    /// `first + i`, [hidden, n_patches] F32); the positions attend over all rows. Returns the last
    /// block's output at the positions, [hidden, c].
    pub fn build_changed(&self, g: &mut Context, p: &SiglipParams, x: &Tensor, first: usize, kv: &ImageKv) -> Tensor {
        let mut x = x.clone();
        for il in first..self.blocks.len() {
            let rows = KvRows { k: &kv.k[il - first], v: &kv.v[il - first], positions: &kv.positions };
            x = self.block(g, p, il, &x, Some(rows));
        }
        x
    }

    /// One pre-LN block over x [hidden, tokens, batch]. With `kv`, the tokens are some positions of
    /// one image: their keys and values are written into the image's K and V, and they attend over
    /// all of it.
    fn block(&self, g: &mut Context, p: &SiglipParams, il: usize, x: &Tensor, kv: Option<KvRows>) -> Tensor {
        let blk = &self.blocks[il];
        let ne = x.ne();
        let (h, tokens, b) = (ne[0], ne[1], ne[2]);
        let (hd, nh) = (p.head_dim() as i64, p.n_head as i64);
        let scale = 1.0 / (p.head_dim() as f32).sqrt();
        let cur = nn::layer_norm(g, x, &blk.ln1_w, &blk.ln1_b, p.eps);
        nn::name_layer(g, &cur, "v_attn_norm", il);
        // [h, tokens, b] -> [hd, tokens, nh, b]
        let heads = |g: &mut Context, t: &Tensor, tokens: i64, b: i64| {
            let t = g.reshape(t, &[hd, nh, tokens, b]);
            g.permute(&t, [0, 2, 1, 3])
        };
        let q = nn::linear(g, &cur, &blk.q_w, Some(&blk.q_b));
        let q = heads(g, &q, tokens, b);
        let k = nn::linear(g, &cur, &blk.k_w, Some(&blk.k_b));
        let v = nn::linear(g, &cur, &blk.v_w, Some(&blk.v_b));
        let (k, v) = match kv {
            None => (heads(g, &k, tokens, b), heads(g, &v, tokens, b)),
            Some(rows) => {
                let n = p.n_patches() as i64;
                let k = g.set_rows(rows.k, &k, rows.positions);
                let v = g.set_rows(rows.v, &v, rows.positions);
                (heads(g, &k, n, 1), heads(g, &v, n, 1))
            }
        };
        // Every token attends to every patch of its image; K/V stay F32 (exact for F32 weights).
        let a = g.flash_attn_ext(&q, &k, &v, None, scale); // [hd, nh, tokens, b]
        let a = g.reshape(&a, &[h, tokens, b]);
        let a = nn::linear(g, &a, &blk.out_w, Some(&blk.out_b));
        nn::name_layer(g, &a, "v_attn_out", il);
        let x = g.add(x, &a);
        nn::name_layer(g, &x, "v_ffn_inp", il);
        let cur = nn::layer_norm(g, &x, &blk.ln2_w, &blk.ln2_b, p.eps);
        nn::name_layer(g, &cur, "v_ffn_norm", il);
        let up = nn::linear(g, &cur, &blk.up_w, Some(&blk.up_b));
        let act = nn::gelu_tanh_precise(g, &up);
        let down = nn::linear(g, &act, &blk.down_w, Some(&blk.down_b));
        nn::name_layer(g, &down, "v_ffn_out", il);
        let x = g.add(&x, &down);
        nn::name_layer(g, &x, "v_l_out", il);
        x
    }
}

/// One image's keys and values in the blocks from a reuse layer on, and the positions a graph
/// recomputes.
pub struct ImageKv {
    /// Per block, [hidden, n_patches] F32, kept between graphs.
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// The recomputed positions, I32 [c].
    pub positions: Tensor,
}

/// One block's part of `ImageKv`.
struct KvRows<'a> {
    k: &'a Tensor,
    v: &'a Tensor,
    positions: &'a Tensor,
}
