//! The KV cache: per layer, one K and one V row of `n_head_kv * head_dim` values per position,
//! preallocated for the whole context in F16 (or Q8_0).
//!
//! Graphs read it through views whose length is the used part rounded up to [`KV_PAD`], so that a
//! decode graph stays identical (and reusable) for many steps; the mask hides the padding.

use crate::error::{Error, Result, Setting};
use crate::ggml::{BufferType, Context, Tensor};
use crate::ggml::GgmlType;

/// Granularity of the attended cache length (as llama.cpp's n_kv padding).
pub const KV_PAD: usize = 256;

/// The element type of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F16,
    Q8_0,
}

impl KvType {
    pub fn ggml(self) -> GgmlType {
        match self {
            KvType::F16 => GgmlType::F16,
            KvType::Q8_0 => GgmlType::Q8_0,
        }
    }

    pub fn parse(s: &str) -> Option<KvType> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Some(KvType::F16),
            "q8_0" | "q8" => Some(KvType::Q8_0),
            _ => None,
        }
    }
}

/// Shape of one layer's cache rows.
#[derive(Clone, Copy, Debug)]
pub struct KvShape {
    pub n_layer: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

impl KvShape {
    pub fn row(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// One layer's cache after this batch's rows were stored (graph nodes to read through).
pub struct StoredLayer {
    pub k: Tensor,
    pub v: Tensor,
}

pub struct KvCache {
    _ctx: Context,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    shape: KvShape,
    ty: KvType,
    n_ctx: usize,
    /// Positions 0..n_used hold valid entries.
    n_used: usize,
    bytes: usize,
    /// Whether the cache is in host memory (see `gather`).
    on_host: bool,
}

impl KvCache {
    /// Allocates the cache for `n_ctx` positions in memory of `buft`.
    pub fn new(shape: KvShape, n_ctx: usize, ty: KvType, buft: BufferType) -> Result<KvCache> {
        if n_ctx == 0 {
            return Err(Error::setting(Setting::ContextSize, "must be at least 1"));
        }
        if ty.ggml().row_bytes(shape.row() as u64).is_none() {
            return Err(Error::invalid(
                "KV cache type",
                format!("{} needs rows of a multiple of {} values; this model's rows have {}", ty.ggml(), ty.ggml().block_size(), shape.row()),
            ));
        }
        let mut ctx = Context::new(2 * shape.n_layer + 2, 0);
        let mut k = Vec::with_capacity(shape.n_layer);
        let mut v = Vec::with_capacity(shape.n_layer);
        for il in 0..shape.n_layer {
            let kt = ctx.new_tensor(ty.ggml(), &[shape.row() as i64, n_ctx as i64]);
            ctx.set_name(&kt, &format!("cache_k_l{il}"));
            let vt = ctx.new_tensor(ty.ggml(), &[shape.row() as i64, n_ctx as i64]);
            ctx.set_name(&vt, &format!("cache_v_l{il}"));
            k.push(kt);
            v.push(vt);
        }
        let buffer = buft.alloc_context_tensors(&ctx).ok_or(Error::Compute(crate::ggml::ComputeError::Alloc("the KV cache")))?;
        // Unused positions are always masked, but keep them finite: 0 is a valid F16 and Q8_0 value.
        buffer.clear(0);
        let bytes = buffer.size();
        let on_host = k.first().is_none_or(|t| t.in_host_memory());
        Ok(KvCache { _ctx: ctx, k, v, shape, ty, n_ctx, n_used: 0, bytes, on_host })
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn n_used(&self) -> usize {
        self.n_used
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }

    pub fn kv_type(&self) -> KvType {
        self.ty
    }

    /// Bytes of memory held by the cache (all positions).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes the cache needs per position (all layers, K and V).
    pub fn bytes_per_position(&self) -> usize {
        2 * self.shape.n_layer * self.ty.ggml().row_bytes(self.shape.row() as u64).unwrap_or(0) as usize
    }

    /// Marks positions `[0, n)` valid after a graph wrote them.
    pub(crate) fn set_used(&mut self, n: usize) {
        debug_assert!(n <= self.n_ctx);
        self.n_used = n;
    }

    /// Forgets everything from position `n` on (entries stay in memory but are masked).
    pub fn truncate(&mut self, n: usize) {
        self.n_used = self.n_used.min(n);
    }

    /// The attended length for a batch ending at position `end`: rounded up to the padding.
    pub fn padded_len(&self, end: usize) -> usize {
        end.div_ceil(KV_PAD).max(1).saturating_mul(KV_PAD).min(self.n_ctx)
    }

    /// Graph nodes that store this batch's K and V rows ([row, n_tokens] F32) at the positions in
    /// `idx` (I64, n_tokens). Reads of the layer must go through the returned nodes, which orders
    /// them after the writes.
    pub fn store(&self, g: &mut Context, il: usize, k_cur: &Tensor, v_cur: &Tensor, idx: &Tensor) -> StoredLayer {
        let k = g.set_rows(&self.k[il], k_cur, idx);
        let v = g.set_rows(&self.v[il], v_cur, idx);
        StoredLayer { k, v }
    }

    /// The first `n_kv` positions of a layer, as flash attention wants them:
    /// K and V as [head_dim, n_kv, n_head_kv].
    pub fn view(&self, g: &mut Context, layer: &StoredLayer, n_kv: usize) -> (Tensor, Tensor) {
        (self.view_one(g, &layer.k, n_kv), self.view_one(g, &layer.v, n_kv))
    }

    fn view_one(&self, g: &mut Context, t: &Tensor, n_kv: usize) -> Tensor {
        let ty = self.ty.ggml();
        let head = ty.row_bytes(self.shape.head_dim as u64).expect("head row") as usize;
        let row = ty.row_bytes(self.shape.row() as u64).expect("cache row") as usize;
        let v = g.view(t, &[self.shape.head_dim as i64, self.shape.n_head_kv as i64, n_kv as i64], &[head, row], 0);
        g.permute(&v, [0, 2, 1, 3])
    }

    /// Selected rows (positions in `rows`, I32, each below the cache length) of layer `il`,
    /// gathered into a compact copy: K and V as [head_dim, n_rows, n_head_kv]. Attention over it
    /// costs only the selected rows.
    pub fn gather(&self, g: &mut Context, layer: &StoredLayer, rows: &Tensor) -> (Tensor, Tensor) {
        (self.gather_one(g, &layer.k, rows), self.gather_one(g, &layer.v, rows))
    }

    fn gather_one(&self, g: &mut Context, t: &Tensor, rows: &Tensor) -> Tensor {
        let n = rows.ne()[0];
        let picked = if self.on_host {
            // The rows as stored (F16 or Q8_0), so attention reads the same values as over the view.
            g.gather_rows(t, rows)
        } else {
            // That gather is a host operation, and ggml's scheduler would copy the whole layer to
            // the CPU for it at every step. ggml's get_rows runs where the cache is, and only the
            // row numbers cross. It widens to F32; back to F16 for attention, which is exact for
            // an F16 cache (a Q8_0 cache's values are rounded to F16 here).
            let wide = g.get_rows(t, rows);
            g.cast(&wide, GgmlType::F16)
        };
        let r = g.reshape(&picked, &[self.shape.head_dim as i64, self.shape.n_head_kv as i64, n]);
        g.permute(&r, [0, 2, 1, 3])
    }
}
