//! The vision side of LLaVA-OneVision: preprocessing, the SigLIP tower, the projector and pooling,
//! loaded from an mmproj-style GGUF.

pub mod layout;
pub mod preprocess;
pub mod projector;
pub mod reuse;
pub mod siglip;

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::compress::ttm::{self, Kept};
use crate::compress::TtmSettings;
use crate::ggml::{Context, Device, Graph, Scheduler, Tensor};
use crate::gguf::names::vision::Tensor as Name;
use crate::gguf::names::{clip as keys, general};
use crate::ggml::GgmlType;
use crate::gguf::{GgufError, GgufFile};
use crate::media::Frame;
use crate::weights::{Placement, WeightLoader, WeightStore};
use layout::VisionType;
use projector::ProjectorWeights;
use reuse::ReuseState;
pub use reuse::TemporalReuse;
use siglip::{ImageKv, SiglipParams, SiglipWeights};

/// The vision model's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionParams {
    pub tower: SiglipParams,
    /// The width of the projected features (the language model's embedding width).
    pub out_dim: usize,
    /// Video pooling: each frame's grid side is divided by this, rounding up (27 -> 14).
    pub pool_stride: usize,
    /// Grid resolutions (height, width) of the anyres image path.
    pub pinpoints: Vec<(u32, u32)>,
    /// anyres_max_N: image features beyond about N crops' worth are downscaled.
    pub max_crops: usize,
}

impl VisionParams {
    /// Tokens per pooled video frame (196 for LLaVA-OneVision).
    pub fn tokens_per_frame(&self) -> usize {
        self.pooled_side() * self.pooled_side()
    }

    pub fn pooled_side(&self) -> usize {
        self.tower.grid.div_ceil(self.pool_stride)
    }
}

/// A loaded vision model (mmproj): shared read-only by every session.
pub struct VisionModel {
    params: VisionParams,
    tower: SiglipWeights,
    projector: ProjectorWeights,
    newline: Vec<f32>,
    store: WeightStore,
    /// The matrices' layout in words (`layout::describe`).
    layout: String,
    file: Arc<GgufFile>,
    /// A hash of the whole file, computed on first use (the embedding cache keys on it).
    content_hash: std::sync::OnceLock<[u8; 32]>,
}

/// The settings beyond the tower's: projector type, pooling, anyres.
struct Extras {
    pool_stride: usize,
    pinpoints: Vec<(u32, u32)>,
    max_crops: usize,
}

fn read_extras(f: &GgufFile, tower: &SiglipParams) -> Result<Extras> {
    let bad = |k: &str, v: String, problem: &str| f.error(GgufError::KeyValue { key: k.into(), value: v, problem: problem.into() });
    if let Some(t) = f.get_str(keys::PROJECTOR_TYPE)? {
        if t != "mlp" {
            return Err(bad(keys::PROJECTOR_TYPE, t.into(), "only LLaVA's \"mlp\" projector is supported"));
        }
    }
    if f.get_bool(keys::HAS_VISION_ENCODER)? == Some(false) {
        return Err(bad(keys::HAS_VISION_ENCODER, "false".into(), "this file has no vision encoder"));
    }
    if let Some(m) = f.get_str(keys::VIDEO_POOL_MODE)? {
        if m != "bilinear" {
            return Err(bad(keys::VIDEO_POOL_MODE, m.into(), "only \"bilinear\" is supported"));
        }
    }
    if let Some(m) = f.get_str(keys::VIDEO_NEWLINE)? {
        if m != "one_token" {
            return Err(bad(keys::VIDEO_NEWLINE, m.into(), "only \"one_token\" is supported"));
        }
    }
    let stride: usize = f.get_int(keys::VIDEO_POOL_STRIDE)?.unwrap_or(2);
    if stride == 0 || stride > tower.grid {
        return Err(bad(keys::VIDEO_POOL_STRIDE, stride.to_string(), &format!("it must be between 1 and the grid side {}", tower.grid)));
    }
    let pinpoints = match f.get_array(keys::GRID_PINPOINTS)? {
        None => preprocess::default_pinpoints(tower.image_size as u32),
        Some(a) => {
            let size = tower.image_size as i128;
            let v: Option<Vec<i128>> = (0..a.len()).map(|i| a.integer_at(i)).collect();
            let v = v.filter(|v| !v.is_empty() && v.len() % 2 == 0 && v.len() <= 2048 && v.iter().all(|&x| x > 0 && x % size == 0 && x <= size * 16));
            let v = v.ok_or_else(|| bad(keys::GRID_PINPOINTS, format!("{a}"), &format!("it must hold pairs of positive multiples of {size}, at most 16 tiles a side")))?;
            v.chunks(2).map(|p| (p[0] as u32, p[1] as u32)).collect()
        }
    };
    let max_crops = match f.get_str(keys::ASPECT_RATIO)? {
        None => 9,
        Some(s) => s
            .strip_prefix("anyres_max_")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| (1..=64).contains(&n))
            .ok_or_else(|| bad(keys::ASPECT_RATIO, s.into(), "only \"anyres_max_N\" is supported"))?,
    };
    Ok(Extras { pool_stride: stride, pinpoints, max_crops })
}

impl VisionModel {
    /// Loads an mmproj GGUF with the matrices in `auto`'s layout (see `layout`).
    pub fn load(path: &Path, placement: Placement) -> Result<Arc<VisionModel>> {
        VisionModel::load_with(path, placement, VisionType::Auto)
    }

    /// Loads an mmproj GGUF, its matrices multiplied in the type `vision_type` gives. Every key and
    /// tensor is checked; errors name the file.
    pub fn load_with(path: &Path, placement: Placement, vision_type: VisionType) -> Result<Arc<VisionModel>> {
        crate::ggml::init();
        let file = Arc::new(GgufFile::open(path)?);
        let arch = file.require_str(general::ARCHITECTURE)?;
        if arch != keys::ARCH {
            return Err(file.error(GgufError::Architecture { found: arch.to_string(), expected: "\"clip\" (an mmproj file)".into() }));
        }
        let tower_params = SiglipParams::from_gguf(&file)?;
        let Extras { pool_stride, pinpoints, max_crops } = read_extras(&file, &tower_params)?;
        let mut w = WeightLoader::new(file.clone(), placement);
        w.convert_matrices(vision_type.rule());
        let tower = SiglipWeights::load(&mut w, &tower_params)?;
        let projector = ProjectorWeights::load(&mut w, tower_params.hidden)?;
        let d = projector.out_dim as u64;
        let newline_name = Name::Newline
            .names()
            .into_iter()
            .find(|n| file.tensor(n).is_some())
            .ok_or_else(|| file.error::<crate::gguf::Error>(GgufError::MissingTensor { tensor: Name::Newline.describe() }))?;
        let info = file.require_tensor(&newline_name, &[d])?;
        if info.ty != GgmlType::F32 {
            return Err(file.error(GgufError::TensorType { tensor: newline_name, found: info.ty.to_string(), expected: "F32".into() }));
        }
        let mut newline = vec![0f32; d as usize];
        crate::ggml::dequantize(info.ty, file.tensor_data(info), &mut newline);
        let store = w.finish()?;
        let params = VisionParams { tower: tower_params, out_dim: projector.out_dim, pool_stride, pinpoints, max_crops };
        let layout = layout::describe(vision_type, &store.matrices);
        Ok(Arc::new(VisionModel { params, tower, projector, newline, store, layout, file, content_hash: Default::default() }))
    }

    /// Where the weights went: each matrix's stored and computed type and buffer, bytes copied.
    pub fn weights(&self) -> &WeightStore {
        &self.store
    }

    /// The matrices' layout in one line: "F16 file -> BF16 (CPU BF16 dot products): ...".
    pub fn layout(&self) -> &str {
        &self.layout
    }

    pub fn params(&self) -> &VisionParams {
        &self.params
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// A BLAKE3 hash of the weights as computed (about a second per GB, once per model): the whole
    /// mmproj file, and the types of the matrices converted at load, whose embeddings differ from
    /// the file's own (the embedding cache keys on this).
    pub fn content_hash(&self) -> [u8; 32] {
        *self.content_hash.get_or_init(|| {
            let mut h = blake3::Hasher::new();
            h.update(self.file.file_bytes());
            for m in self.store.matrices.iter().filter(|m| m.ty != m.file_type) {
                h.update(&m.ty.id().to_le_bytes());
            }
            *h.finalize().as_bytes()
        })
    }

    /// The embedding that follows a video (and each image row).
    pub fn newline(&self) -> &[f32] {
        &self.newline
    }

    /// Checks that the projector feeds a language model of this width.
    pub fn check_llm_width(&self, n_embd: usize) -> Result<()> {
        if self.params.out_dim != n_embd {
            return Err(Error::VisionMismatch { path: self.path().to_path_buf(), projector: self.params.out_dim, llm: n_embd });
        }
        Ok(())
    }
}

/// Where a vision computation starts and ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Normalized pixels, CHW per image.
    Pixels,
    /// The tower's output [n_patches][hidden] per image.
    Features,
    /// The projector's output [n_patches][out_dim] per image.
    Projected,
    /// Pooled projected features [pooled^2][out_dim] per image (the video path).
    Pooled,
}

/// Nodes of the deepest vision graph (pixels to pooled rows through TTM) for a tower of `n_layer`
/// blocks, with room to spare: a block builds about 30 nodes; patch embedding, projector, pooling
/// and TTM fewer than 64 together.
fn graph_nodes(n_layer: usize) -> usize {
    n_layer * 48 + 64
}

/// What a graph computes: from which stage to which, for how many images, the part of the tower
/// it runs, and TTM's prune ratio (its bits) when TTM follows pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GraphShape {
    from: Stage,
    to: Stage,
    n: usize,
    tower: TowerPart,
    ttm_k: Option<u64>,
}

/// The blocks a graph from pixels runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TowerPart {
    All,
    /// Blocks before this one: the output is its input, shaped as features.
    Until(usize),
    /// Blocks from `first` on for `tokens` positions of one image, with temporal reuse's keys and
    /// values (the input is those positions' hidden states, the output their features).
    Changed { first: usize, tokens: usize },
}

/// A built graph with its input and outputs.
struct VisionGraph {
    shape: GraphShape,
    ctx: Context,
    graph: Graph,
    input: Tensor,
    output: Tensor,
    /// TTM's kept row indices (I32), when the graph runs TTM.
    kept_rows: Option<Tensor>,
    /// The recomputed positions (I32 input) of a `TowerPart::Changed` graph.
    positions: Option<Tensor>,
    /// Whether the scheduler holds this graph's tensors. Only the graph allocated last may run
    /// again without a new allocation: ggml keeps the addresses a tensor got in its first one.
    allocated: bool,
}

/// A video's frames through the vision model: pooled tokens, compressed by TTM when it ran.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedFrames {
    /// [tokens][out_dim], frame by frame (no newline).
    pub rows: Vec<f32>,
    /// What each frame kept, when TTM ran.
    pub kept: Option<Vec<Kept>>,
    /// What the tower computed and what it reused.
    pub work: VideoWork,
}

/// The vision tower's work on a video.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VideoWork {
    /// Frames run through the tower.
    pub frames_encoded: usize,
    /// Frames whose preprocessed pixels equal an earlier frame's: its rows were copied.
    pub frames_reused: usize,
    /// Position-blocks of the encoded frames (positions times blocks).
    pub token_layers: usize,
    /// Of those, the ones temporal reuse skipped.
    pub token_layers_reused: usize,
}

/// Which frames of a video are the same picture.
struct DistinctFrames {
    /// The first frame of each distinct picture, in order.
    first: Vec<usize>,
    /// For each frame, its picture's index in `first`.
    slot: Vec<usize>,
}

impl DistinctFrames {
    /// Groups frames by their exact pixel values (bit patterns: -0.0 and 0.0 differ, which only
    /// costs a second encode). The hash finds candidates; a full comparison decides, so a
    /// collision can never merge two pictures.
    fn of(pixels: &[Vec<f32>]) -> DistinctFrames {
        let mut by_hash: std::collections::HashMap<[u8; 32], Vec<usize>> = std::collections::HashMap::new();
        let mut first: Vec<usize> = Vec::new();
        let mut slot = Vec::with_capacity(pixels.len());
        for (f, p) in pixels.iter().enumerate() {
            let bytes: Vec<u8> = p.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
            let hash = *blake3::hash(&bytes).as_bytes();
            let same = |&u: &usize| pixels[first[u]].iter().zip(p).all(|(a, b)| a.to_bits() == b.to_bits());
            let candidates = by_hash.entry(hash).or_default();
            match candidates.iter().copied().find(|u| same(u)) {
                Some(u) => slot.push(u),
                None => {
                    candidates.push(first.len());
                    slot.push(first.len());
                    first.push(f);
                }
            }
        }
        DistinctFrames { first, slot }
    }
}

/// A session's vision runner: its own backend and scheduler, reserved once for the largest graph,
/// and the last graph built, reused while the chunks keep its shape.
pub struct VisionContext {
    model: Arc<VisionModel>,
    device: Device,
    sched: Scheduler,
    batch: usize,
    graph: Option<VisionGraph>,
    /// Temporal reuse, when it is on: its settings and what it holds between frames.
    reuse: Option<ReuseState>,
}

impl VisionContext {
    /// `batch`: images per graph (more uses more memory, fewer graph launches), rounded up to a
    /// multiple of 4 so that each of TTM's windows of four frames lies in one graph.
    pub fn new(model: Arc<VisionModel>, device: Device, n_threads: usize, batch: usize) -> Result<VisionContext> {
        let nodes = graph_nodes(model.params.tower.n_layer);
        let sched = Scheduler::for_device(device, n_threads, nodes)?;
        let mut ctx = VisionContext { model, device, sched, batch: batch.max(1).next_multiple_of(4), graph: None, reuse: None };
        // The worst case: a full batch from pixels through TTM keeping every row. Sizing the
        // compute buffers now means no later chunk allocates more (and running out of memory shows
        // up here, not mid-video).
        let worst = ctx.build(GraphShape { from: Stage::Pixels, to: Stage::Pooled, n: ctx.batch, tower: TowerPart::All, ttm_k: Some(0f64.to_bits()) });
        ctx.sched.reserve(&worst.graph)?;
        ctx.graph = Some(worst);
        Ok(ctx)
    }

    pub fn model(&self) -> &Arc<VisionModel> {
        &self.model
    }

    /// Turns temporal reuse on (with its settings) or off for the videos encoded from now on.
    /// Its keys and values take 2 x (blocks from the reuse layer) x patches x hidden floats.
    pub fn set_temporal_reuse(&mut self, reuse: Option<TemporalReuse>) -> Result<()> {
        let t = &self.model.params.tower;
        self.reuse = match reuse {
            None => None,
            Some(r) if self.reuse.as_ref().is_some_and(|s| s.settings.layer() == r.layer()) => {
                let mut s = self.reuse.take().expect("checked");
                s.settings = r;
                Some(s)
            }
            Some(r) => {
                // A kept graph of the reuse path points at the old state's keys and values.
                self.graph = None;
                Some(ReuseState::new(r, t.n_layer, t.hidden, t.n_patches(), self.device.buffer_type())?)
            }
        };
        Ok(())
    }

    pub fn temporal_reuse(&self) -> Option<TemporalReuse> {
        self.reuse.as_ref().map(|s| s.settings)
    }

    /// Values per image at a stage.
    fn size_at(&self, stage: Stage) -> usize {
        let p = &self.model.params;
        let t = &p.tower;
        match stage {
            Stage::Pixels => 3 * t.image_size * t.image_size,
            Stage::Features => t.n_patches() * t.hidden,
            Stage::Projected => t.n_patches() * p.out_dim,
            Stage::Pooled => p.tokens_per_frame() * p.out_dim,
        }
    }

    fn build(&self, shape: GraphShape) -> VisionGraph {
        let model = self.model.clone();
        let p = &model.params;
        let t = &p.tower;
        let GraphShape { from, to, n, tower, ttm_k } = shape;
        let nodes = graph_nodes(t.n_layer);
        let mut g = Context::new(nodes * 2, nodes);
        let (np, b) = (t.n_patches() as i64, n as i64);
        let mut positions = None;
        let input = match (from, tower) {
            (Stage::Pixels, TowerPart::Changed { tokens, .. }) => g.input("inp_changed", GgmlType::F32, &[t.hidden as i64, tokens as i64]),
            (Stage::Pixels, _) => g.input("inp_patches", GgmlType::F32, &[t.patch_values() as i64, np * b]),
            (Stage::Features, _) => g.input("inp_features", GgmlType::F32, &[t.hidden as i64, np, b]),
            _ => g.input("inp_projected", GgmlType::F32, &[p.out_dim as i64, np, b]),
        };
        let mut x = input.clone();
        if from < Stage::Features {
            x = match tower {
                TowerPart::All => model.tower.build(&mut g, t, &x, n),
                TowerPart::Until(layer) => {
                    let x = model.tower.embed(&mut g, t, &x, n);
                    model.tower.build_blocks(&mut g, t, &x, 0..layer)
                }
                TowerPart::Changed { first, tokens } => {
                    let state = self.reuse.as_ref().expect("a Changed graph is built with reuse on");
                    let idx = g.input("inp_positions", GgmlType::I32, &[tokens as i64]);
                    let kv = ImageKv { k: state.k.clone(), v: state.v.clone(), positions: idx.clone() };
                    positions = Some(idx);
                    model.tower.build_changed(&mut g, t, &x, first, &kv)
                }
            };
        }
        if from < Stage::Projected && to >= Stage::Projected {
            x = model.projector.build(&mut g, &x);
        }
        let mut kept_rows = None;
        if to == Stage::Pooled {
            x = projector::build_pool(&mut g, &x, t.grid, p.pooled_side());
            if let Some(k) = ttm_k {
                let tokens = p.tokens_per_frame();
                let flat = g.reshape(&x, &[p.out_dim as i64, (tokens * n) as i64]);
                let (rows, idx) = ttm::build(&mut g, &flat, n, tokens, f64::from_bits(k));
                g.set_output(&idx);
                kept_rows = Some(idx);
                x = rows;
            }
        }
        g.set_output(&x);
        let mut graph = g.new_graph(nodes);
        graph.expand(&x);
        VisionGraph { shape, ctx: g, graph, input, output: x, kept_rows, positions, allocated: false }
    }

    /// Runs `n` images from stage `from` to stage `to` (from < to) in one graph.
    pub fn run(&mut self, from: Stage, to: Stage, input: &[f32], n: usize) -> Result<Vec<f32>> {
        Ok(self.run_graph(from, to, input, n, TowerPart::All, None)?.0)
    }

    /// As `run`, with TTM of prune ratio `ttm_k` after pooling (the images are consecutive frames,
    /// the first one starting a window): the surviving rows and their indices.
    fn run_graph(&mut self, from: Stage, to: Stage, input: &[f32], n: usize, tower: TowerPart, ttm_k: Option<f64>) -> Result<(Vec<f32>, Option<Vec<i32>>)> {
        if from >= to || from == Stage::Pooled {
            return Err(Error::invalid("vision stages", format!("cannot go from {from:?} to {to:?}")));
        }
        if input.len() != self.size_at(from) * n || n == 0 {
            return Err(Error::invalid("vision input", format!("{} values for {n} images at {from:?}", input.len())));
        }
        let shape = GraphShape { from, to, n, tower, ttm_k: ttm_k.filter(|_| to == Stage::Pooled).map(f64::to_bits) };
        let host: Vec<f32> = match from {
            Stage::Pixels => {
                let t = &self.model.params.tower;
                input.chunks(self.size_at(Stage::Pixels)).flat_map(|chw| preprocess::patchify(chw, t.image_size, t.patch_size)).collect()
            }
            _ => input.to_vec(),
        };
        let vg = self.prepare(shape)?;
        vg.input.write_f32(&host);
        self.compute()?;
        let vg = self.graph.as_ref().expect("prepared");
        let rows = vg.output.read_f32();
        let kept = vg.kept_rows.as_ref().map(|t| t.read_i32());
        Ok((rows, kept))
    }

    /// The graph of `shape`, built (unless the last one has it) and allocated.
    fn prepare(&mut self, shape: GraphShape) -> Result<&mut VisionGraph> {
        if self.graph.as_ref().map(|g| g.shape) != Some(shape) {
            self.graph = Some(self.build(shape));
        }
        let VisionContext { sched, graph, .. } = self;
        let vg = graph.as_mut().expect("built above");
        if !vg.allocated {
            sched.alloc(&vg.graph, &vg.ctx)?;
            vg.allocated = true;
        }
        Ok(vg)
    }

    fn compute(&mut self) -> Result<()> {
        let VisionContext { sched, graph, .. } = self;
        sched.compute(&graph.as_ref().expect("prepared").graph)?;
        Ok(())
    }

    /// Temporal reuse on `n` consecutive frames (normalized pixels): blocks before the reuse
    /// layer on all of them, then frame by frame the changed positions through the rest; the
    /// pooled rows. `work` counts the position-blocks skipped.
    fn encode_reusing(&mut self, pixels: &[f32], n: usize, work: &mut VideoWork) -> Result<Vec<f32>> {
        let t = self.model.params.tower.clone();
        let layer = self.reuse.as_ref().expect("reuse is on").settings.layer();
        let (h, np) = (t.hidden, t.n_patches());
        let (states, _) = self.run_graph(Stage::Pixels, Stage::Features, pixels, n, TowerPart::Until(layer), None)?;
        let mut features = Vec::with_capacity(states.len());
        for x in states.chunks(np * h) {
            let changed = self.reuse.as_ref().expect("on").changed(x, h);
            if !changed.is_empty() {
                let input: Vec<f32> = changed.iter().flat_map(|&j| x[j * h..(j + 1) * h].iter().copied()).collect();
                let shape = GraphShape { from: Stage::Pixels, to: Stage::Features, n: 1, tower: TowerPart::Changed { first: layer, tokens: changed.len() }, ttm_k: None };
                let vg = self.prepare(shape)?;
                vg.input.write_f32(&input);
                let at: Vec<i32> = changed.iter().map(|&j| j as i32).collect();
                vg.positions.as_ref().expect("a Changed graph has positions").write_i32(&at);
                self.compute()?;
                let out = self.graph.as_ref().expect("prepared").output.read_f32();
                self.reuse.as_mut().expect("on").update(x, &changed, &out, h);
            }
            features.extend_from_slice(&self.reuse.as_ref().expect("on").output);
            work.token_layers_reused += (np - changed.len()) * (t.n_layer - layer);
        }
        self.run(Stage::Features, Stage::Pooled, &features, n)
    }

    /// Normalized CHW pixels of frames squashed to the tower's input size.
    pub fn frame_pixels(&self, frames: &[Frame]) -> Vec<f32> {
        let t = &self.model.params.tower;
        let size = t.image_size as u32;
        frames.iter().flat_map(|f| preprocess::normalize(&preprocess::resize_bicubic(f, size, size), t.mean, t.std)).collect()
    }

    /// A video's frames, projected and pooled: [tokens][out_dim] (the newline is not included),
    /// compressed by TTM when `ttm` is given. Frames whose
    /// preprocessed pixels are identical are encoded once. `progress(done, total)` counts the
    /// frames encoded (all of them when none repeats); when it returns false the work stops after
    /// that chunk with `Error::Cancelled`.
    pub fn encode_video(&mut self, frames: &[Frame], ttm: Option<TtmSettings>, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<EncodedFrames> {
        let ttm_k = ttm.map(|t| t.k());
        let n = self.model.params.tokens_per_frame();
        let per_frame = self.size_at(Stage::Pooled);
        let pixels: Vec<Vec<f32>> = frames.iter().map(|f| self.frame_pixels(std::slice::from_ref(f))).collect();
        let distinct = DistinctFrames::of(&pixels);
        let all_distinct = distinct.first.len() == frames.len();
        // TTM runs in the graph when the graph makes every frame's pooled rows. With repeats they
        // exist only once expanded, and temporal reuse pools after the tower's frame-by-frame part:
        // then TTM runs on the host, where `ttm::apply` makes the same selection as the graph's node.
        let graph_ttm = ttm_k.filter(|_| all_distinct && self.reuse.is_none());
        let t = &self.model.params.tower;
        let mut work = VideoWork {
            frames_encoded: distinct.first.len(),
            frames_reused: frames.len() - distinct.first.len(),
            token_layers: distinct.first.len() * t.n_patches() * t.n_layer,
            token_layers_reused: 0,
        };
        if let Some(r) = &mut self.reuse {
            r.start_video();
        }
        let mut pooled = Vec::with_capacity(distinct.first.len() * per_frame);
        let mut kept = graph_ttm.map(|_| Vec::new());
        let mut done = 0;
        // Chunks start at multiples of 4 (the batch is one): TTM's windows never straddle two.
        for chunk in distinct.first.chunks(self.batch) {
            let input: Vec<f32> = chunk.iter().flat_map(|&f| pixels[f].iter().copied()).collect();
            let (rows, idx) = match self.reuse {
                Some(_) => (self.encode_reusing(&input, chunk.len(), &mut work)?, None),
                None => self.run_graph(Stage::Pixels, Stage::Pooled, &input, chunk.len(), TowerPart::All, graph_ttm)?,
            };
            pooled.extend(rows);
            if let (Some(kept), Some(idx)) = (&mut kept, idx) {
                let chunk_kept = ttm::kept_from_rows(&idx, chunk.len(), n).ok_or_else(|| Error::invalid("TTM output", "the row indices are not a selection"))?;
                kept.extend(chunk_kept);
            }
            done += chunk.len();
            if !progress(done, distinct.first.len()) && done < distinct.first.len() {
                return Err(Error::Cancelled);
            }
        }
        if graph_ttm.is_some() || (ttm_k.is_none() && all_distinct) {
            return Ok(EncodedFrames { rows: pooled, kept, work });
        }
        let rows: Vec<f32> = if all_distinct { pooled } else { distinct.slot.iter().flat_map(|&u| pooled[u * per_frame..(u + 1) * per_frame].iter().copied()).collect() };
        Ok(match ttm_k {
            None => EncodedFrames { rows, kept: None, work },
            Some(k) => {
                let out = ttm::apply(&rows, frames.len(), n, self.model.params.out_dim, k)?;
                EncodedFrames { rows: out.rows, kept: Some(out.kept), work }
            }
        })
    }

    /// An image through the anyres path: [tokens][out_dim], newlines included, and the number of
    /// crops encoded. `progress(done, total)` counts crops and can stop the work as in
    /// `encode_video`.
    pub fn encode_image(&mut self, image: &Frame, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<(Vec<f32>, usize)> {
        let p = self.model.params.clone();
        let t = &p.tower;
        let (crops, tiles) = preprocess::anyres_crops(image, &p.pinpoints, t.image_size as u32);
        let mut projected = Vec::with_capacity(crops.len() * self.size_at(Stage::Projected));
        let mut done = 0;
        for chunk in crops.chunks(self.batch) {
            let pixels: Vec<f32> = chunk.iter().flat_map(|c| preprocess::normalize(c, t.mean, t.std)).collect();
            projected.extend(self.run(Stage::Pixels, Stage::Projected, &pixels, chunk.len())?);
            done += chunk.len();
            if !progress(done, crops.len()) && done < crops.len() {
                return Err(Error::Cancelled);
            }
        }
        let rows = projector::pack_anyres(
            &projected,
            p.out_dim,
            t.grid,
            (tiles.0 as usize, tiles.1 as usize),
            (image.height as usize, image.width as usize),
            self.model.newline(),
            p.max_crops,
        );
        Ok((rows, crops.len()))
    }
}
