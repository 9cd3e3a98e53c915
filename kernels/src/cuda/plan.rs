//! The CUDA backend's device memory, planned before anything is allocated.
//!
//! Two parts, both fixed at start-up:
//!
//! * **Weights**: every tensor the served blocks need (only up to the deepest served layer), in the
//!   form the kernels read: GEMM weights bf16 row-major (the experts of an MoE block stacked
//!   `[experts, out, in]` for the grouped GEMM), the embedding table in its dtype, the small
//!   parameters f32.
//! * **Workspace**: one arena for a batch of up to `max_tokens` tokens: the batch's ids and
//!   offsets, the residual stream, and the largest set of activations one block holds at once. A
//!   block's tensors are stacked in the order its forward makes them and all released when it ends,
//!   so the arena needs the persistent part plus the largest block's, not their sum over layers.
//!
//! Every region is aligned to [`ALIGN`] bytes. The plan is pure arithmetic, tested on any machine;
//! the backend allocates exactly its totals (`cuda::backend`), and its arena refuses, rather than
//! grows, if a batch ever needed more than planned.

use crate::ops::{AttentionShape, SsdShape};

/// Alignment of every region, in bytes: what `cuMemAlloc` guarantees, and enough for any vector load.
pub const ALIGN: usize = 256;

/// Rows the grouped expert GEMM's tiles hold: each expert's tokens are padded to a multiple.
pub const EXPERT_TILE: usize = 64;

const F32: usize = 4;
const BF16: usize = 2;
const I32: usize = 4;

/// One block of the model, as far as memory is concerned.
#[derive(Clone, Debug, PartialEq)]
pub enum BlockShape {
    /// Mamba-2.
    Mamba {
        /// The scan's sizes (heads, head dim, groups, state).
        ssd: SsdShape,
        /// Taps of the causal convolution.
        conv_kernel: usize,
        /// Whether in/out projections carry biases.
        proj_bias: bool,
        /// Whether the convolution carries a bias.
        conv_bias: bool,
    },
    /// Causal GQA attention (no biases).
    Attention(AttentionShape),
    /// ReLU² MLP.
    Mlp {
        /// Width of the up projection.
        intermediate: usize,
        /// Whether the projections carry biases.
        bias: bool,
    },
    /// Mixture of experts, optionally latent.
    Moe {
        /// Routed experts.
        experts: usize,
        /// Experts per token.
        top_k: usize,
        /// Width of a routed expert's up projection.
        expert_intermediate: usize,
        /// Width of the shared expert's up projection.
        shared_intermediate: usize,
        /// The latent width the routed experts work in, if any.
        latent: Option<usize>,
        /// Whether expert, shared and latent projections carry biases.
        bias: bool,
    },
}

/// What the plan needs to know about a model: its sizes, up to the deepest served layer.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    /// Hidden size.
    pub hidden: usize,
    /// Rows of the embedding table.
    pub vocab: usize,
    /// Bytes per value of the embedding table (2 for bf16, 4 for f32).
    pub embedding_value_bytes: usize,
    /// How the Linear weights (experts included) are stored on the device.
    pub linear_storage: LinearStorage,
    /// The served blocks, in order.
    pub blocks: Vec<BlockShape>,
    /// Whether `norm_f` is served (every block loaded).
    pub norm_f: bool,
}

/// How a model's Linear weights are stored on the device: as the checkpoint stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearStorage {
    /// f32: 4 bytes per value.
    F32,
    /// bf16 or f16: 2 bytes per value.
    Bf16,
    /// FP8 E4M3: 1 byte per value.
    Fp8,
    /// NVFP4: half a byte per value and one E4M3 block scale per 16 values.
    Nvfp4,
}

impl LinearStorage {
    /// Bytes of `values` weights.
    pub const fn bytes(self, values: usize) -> usize {
        match self {
            Self::F32 => values * 4,
            Self::Bf16 => values * BF16,
            Self::Fp8 => values,
            Self::Nvfp4 => values / 2 + values / 16,
        }
    }
}

/// A named byte range of a device allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// What lives there (`layers.3.mixer.in_proj.z`, `moe.sorted`).
    pub name: String,
    /// Byte offset from the allocation's start.
    pub offset: usize,
    /// Length in bytes.
    pub bytes: usize,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> usize {
        self.offset + self.bytes
    }
}

/// Regions laid one after another, each aligned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// The regions, in order.
    pub regions: Vec<Region>,
}

impl Layout {
    fn push(&mut self, name: impl Into<String>, bytes: usize) {
        let offset = self.total();
        self.regions.push(Region {
            name: name.into(),
            offset,
            bytes,
        });
    }

    /// Bytes the layout spans, the last region's end rounded up to [`ALIGN`].
    pub fn total(&self) -> usize {
        self.regions.last().map_or(0, |r| r.end().next_multiple_of(ALIGN))
    }
}

/// The device memory of a model served for batches of up to `max_tokens` tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The batch size in tokens the workspace is sized for.
    pub max_tokens: usize,
    /// Every weight tensor.
    pub weights: Layout,
    /// The batch's ids and offsets and the residual stream, alive through the whole forward.
    pub persistent: Layout,
    /// The activations of the block that holds the most at once, stacked as its forward makes
    /// them (they follow the persistent part in the arena).
    pub largest_block: Layout,
}

impl MemoryPlan {
    /// Plans `model` for batches of up to `max_tokens` tokens.
    pub fn new(model: &ModelShape, max_tokens: usize) -> Self {
        let t = max_tokens;
        let h = model.hidden;
        let mut weights = Layout::default();
        weights.push("embeddings", model.vocab * h * model.embedding_value_bytes);
        for (i, block) in model.blocks.iter().enumerate() {
            weights.push(format!("layers.{i}.norm"), h * F32);
            block_weights(
                &mut weights,
                &format!("layers.{i}.mixer"),
                block,
                h,
                model.linear_storage,
            );
        }
        if model.norm_f {
            weights.push("norm_f", h * F32);
        }

        let mut persistent = Layout::default();
        persistent.push("batch.tokens", t * I32);
        // At most one sequence per token, plus the leading 0.
        persistent.push("batch.cu_seqlens", (t + 1) * I32);
        persistent.push("hidden", t * h * F32);

        let largest_block = model
            .blocks
            .iter()
            .map(|block| block_activations(block, h, t))
            .max_by_key(Layout::total)
            .unwrap_or_default();
        // After the last block, `norm_f` writes one more [T, hidden]: no more than any block's
        // pre-norm, so it always fits; with no block at all it needs its own room.
        let largest_block = if largest_block.regions.is_empty() {
            let mut only_norm = Layout::default();
            only_norm.push("norm_f.out", t * h * F32);
            only_norm
        } else {
            largest_block
        };
        Self {
            max_tokens,
            weights,
            persistent,
            largest_block,
        }
    }

    /// Bytes of weights.
    pub fn weight_bytes(&self) -> usize {
        self.weights.total()
    }

    /// Bytes of the workspace arena.
    pub fn workspace_bytes(&self) -> usize {
        self.persistent.total() + self.largest_block.total()
    }
}

/// A GEMM weight (as `storage` keeps it) and its optional bias (f32).
fn linear(w: &mut Layout, name: &str, (rows, cols): (usize, usize), bias: bool, storage: LinearStorage) {
    w.push(name, storage.bytes(rows * cols));
    if bias {
        w.push(format!("{name}.bias"), rows * F32);
    }
}

fn block_weights(w: &mut Layout, p: &str, block: &BlockShape, h: usize, storage: LinearStorage) {
    let linear = |w: &mut Layout, name: &str, rows: usize, cols: usize, bias: bool| {
        linear(w, name, (rows, cols), bias, storage);
    };
    match block {
        BlockShape::Mamba {
            ssd,
            conv_kernel,
            proj_bias,
            conv_bias,
        } => {
            let (inner, conv) = mamba_widths(ssd);
            linear(w, &format!("{p}.in_proj.z"), inner, h, *proj_bias);
            linear(w, &format!("{p}.in_proj.xbc"), conv, h, *proj_bias);
            linear(w, &format!("{p}.in_proj.dt"), ssd.num_heads, h, *proj_bias);
            w.push(format!("{p}.conv1d.weight"), conv * conv_kernel * F32);
            if *conv_bias {
                w.push(format!("{p}.conv1d.bias"), conv * F32);
            }
            for name in ["A", "D", "dt_bias"] {
                w.push(format!("{p}.{name}"), ssd.num_heads * F32);
            }
            w.push(format!("{p}.norm"), inner * F32);
            linear(w, &format!("{p}.out_proj"), h, inner, *proj_bias);
        }
        BlockShape::Attention(a) => {
            let (q, kv) = (a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim);
            linear(w, &format!("{p}.q_proj"), q, h, false);
            linear(w, &format!("{p}.k_proj"), kv, h, false);
            linear(w, &format!("{p}.v_proj"), kv, h, false);
            linear(w, &format!("{p}.o_proj"), h, q, false);
        }
        BlockShape::Mlp { intermediate, bias } => {
            linear(w, &format!("{p}.up_proj"), *intermediate, h, *bias);
            linear(w, &format!("{p}.down_proj"), h, *intermediate, *bias);
        }
        BlockShape::Moe {
            experts,
            expert_intermediate,
            shared_intermediate,
            latent,
            bias,
            ..
        } => {
            let width = latent.unwrap_or(h);
            linear(w, &format!("{p}.gate"), *experts, h, false);
            w.push(format!("{p}.gate.e_score_correction_bias"), experts * F32);
            w.push(
                format!("{p}.experts.up_proj"),
                storage.bytes(experts * expert_intermediate * width),
            );
            w.push(
                format!("{p}.experts.down_proj"),
                storage.bytes(experts * width * expert_intermediate),
            );
            linear(
                w,
                &format!("{p}.shared_experts.up_proj"),
                *shared_intermediate,
                h,
                *bias,
            );
            linear(
                w,
                &format!("{p}.shared_experts.down_proj"),
                h,
                *shared_intermediate,
                *bias,
            );
            if let Some(latent) = latent {
                linear(w, &format!("{p}.fc1_latent_proj"), *latent, h, *bias);
                linear(w, &format!("{p}.fc2_latent_proj"), h, *latent, *bias);
            }
        }
    }
}

/// `(inner, conv)`: the widths of z / y and of the conv's `[x | B | C]` rows.
fn mamba_widths(ssd: &SsdShape) -> (usize, usize) {
    let inner = ssd.num_heads * ssd.head_dim;
    (inner, inner + 2 * ssd.n_groups * ssd.state_size)
}

/// Rows the grouped GEMM's grid covers for `t` tokens: every routing entry, plus each expert's
/// padding to the tile (at most `EXPERT_TILE - 1` rows per expert), in whole tiles. A bound known
/// on the host, so the grid needs no read-back of the device's actual total.
pub fn padded_expert_rows(t: usize, top_k: usize, experts: usize) -> usize {
    (t * top_k + experts * (EXPERT_TILE - 1)).next_multiple_of(EXPERT_TILE)
}

/// The tensors one block makes on the device for `t` tokens, in the order its forward makes them
/// (`cuda::backend` allocates the same). A GEMM's bf16 parts of its input and its partial sums
/// are made and released around the call, so only the widest count, once, at the end.
fn block_activations(block: &BlockShape, h: usize, t: usize) -> Layout {
    let mut a = Layout::default();
    a.push("normed", t * h * F32);
    // Per token: the widest GEMM input (staged as bf16 parts) and output (partial sums).
    let (widest_input, widest_output) = match block {
        BlockShape::Mamba { ssd, .. } => {
            let (inner, conv) = mamba_widths(ssd);
            a.push("mamba.z", t * inner * F32);
            a.push("mamba.xbc", t * conv * F32);
            a.push("mamba.dt", t * ssd.num_heads * F32);
            a.push("mamba.conv", t * conv * F32);
            a.push("mamba.y", t * inner * F32);
            (inner.max(h), conv.max(h))
        }
        BlockShape::Attention(s) => {
            let (q, kv) = (s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim);
            a.push("attention.q", t * q * F32);
            a.push("attention.k", t * kv * F32);
            a.push("attention.v", t * kv * F32);
            a.push("attention.context", t * q * F32);
            (q.max(h), q.max(h))
        }
        BlockShape::Mlp { intermediate, .. } => {
            a.push("mlp.up", t * intermediate * F32);
            ((*intermediate).max(h), (*intermediate).max(h))
        }
        BlockShape::Moe {
            experts,
            top_k,
            expert_intermediate,
            shared_intermediate,
            latent,
            ..
        } => {
            let width = latent.unwrap_or(h);
            let entries = t * top_k;
            a.push("moe.logits", t * experts * F32);
            if let Some(latent) = latent {
                a.push("moe.latent", t * latent * F32);
            }
            a.push("moe.route.experts", entries * I32);
            a.push("moe.route.weights", entries * F32);
            a.push("moe.counts", experts * I32);
            a.push("moe.offsets", (experts + 1) * I32);
            a.push("moe.sorted", padded_expert_rows(t, *top_k, *experts) * I32);
            a.push("moe.up", entries * expert_intermediate * F32);
            a.push("moe.down", entries * width * F32);
            a.push("moe.routed", t * width * F32);
            if latent.is_some() {
                a.push("moe.fc2", t * h * F32);
            }
            a.push("moe.shared.up", t * shared_intermediate * F32);
            a.push("moe.shared.down", t * h * F32);
            // Routed rows are per (token, slot): top_k of them per token.
            let own = h.max(*shared_intermediate).max(latent.unwrap_or(0));
            let routed_out = top_k * (*expert_intermediate).max(width);
            (own.max(top_k * expert_intermediate), own.max(*experts).max(routed_out))
        }
    };
    a.push("out", t * h * F32);
    // Exact GEMMs split their f32 input into three bf16 parts (hi, mid, lo: exact products, as the
    // CPU's AMX path does), and sum three partial outputs.
    a.push("gemm.input.bf16x3", 3 * t * widest_input * BF16);
    a.push("gemm.partials", 2 * t * widest_output * F32);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> ModelShape {
        ModelShape {
            hidden: 64,
            vocab: 100,
            embedding_value_bytes: 2,
            linear_storage: LinearStorage::Bf16,
            blocks: vec![
                BlockShape::Mamba {
                    ssd: SsdShape::new(8, 16, 2, 16, 32),
                    conv_kernel: 4,
                    proj_bias: true,
                    conv_bias: true,
                },
                BlockShape::Attention(AttentionShape {
                    num_heads: 4,
                    num_kv_heads: 2,
                    head_dim: 16,
                }),
                BlockShape::Mlp {
                    intermediate: 96,
                    bias: false,
                },
                BlockShape::Moe {
                    experts: 8,
                    top_k: 2,
                    expert_intermediate: 32,
                    shared_intermediate: 48,
                    latent: Some(24),
                    bias: false,
                },
            ],
            norm_f: true,
        }
    }

    fn assert_disjoint_and_aligned(layout: &Layout) {
        for pair in layout.regions.windows(2) {
            assert!(pair[0].end() <= pair[1].offset, "{pair:?} overlap");
        }
        for r in &layout.regions {
            assert_eq!(r.offset % ALIGN, 0, "{r:?} is not aligned");
            assert!(r.end() <= layout.total(), "{r:?} past the end");
        }
        assert_eq!(layout.total() % ALIGN, 0);
    }

    #[test]
    fn regions_are_disjoint_aligned_and_inside_their_total() {
        for t in [1, 7, 64, 1000] {
            let plan = MemoryPlan::new(&toy(), t);
            for layout in [&plan.weights, &plan.persistent, &plan.largest_block] {
                assert_disjoint_and_aligned(layout);
            }
            assert_eq!(
                plan.workspace_bytes(),
                plan.persistent.total() + plan.largest_block.total()
            );
        }
    }

    #[test]
    fn weights_count_each_served_parameter_once() {
        let plan = MemoryPlan::new(&toy(), 1);
        let bytes = |name: &str| {
            let r = plan.weights.regions.iter().find(|r| r.name == name).unwrap();
            r.bytes
        };
        assert_eq!(bytes("embeddings"), 100 * 64 * 2);
        // in_proj = z [128, 64] + xBC [128 + 2 * 2 * 16, 64] + dt [8, 64], bf16.
        let in_proj = bytes("layers.0.mixer.in_proj.z")
            + bytes("layers.0.mixer.in_proj.xbc")
            + bytes("layers.0.mixer.in_proj.dt");
        assert_eq!(in_proj, (128 + 192 + 8) * 64 * 2);
        assert_eq!(bytes("layers.3.mixer.experts.up_proj"), 8 * 32 * 24 * 2);
        let names: std::collections::HashSet<_> = plan.weights.regions.iter().map(|r| &r.name).collect();
        assert_eq!(names.len(), plan.weights.regions.len(), "a name twice");

        // Serving fewer blocks plans fewer weights, and no norm_f.
        let mut cut = toy();
        cut.blocks.truncate(2);
        cut.norm_f = false;
        let cut_plan = MemoryPlan::new(&cut, 1);
        assert!(cut_plan.weight_bytes() < plan.weight_bytes());
        assert!(!cut_plan.weights.regions.iter().any(|r| r.name.starts_with("layers.2")));
    }

    #[test]
    fn the_workspace_grows_linearly_with_tokens_and_holds_the_largest_block() {
        let (one, many) = (MemoryPlan::new(&toy(), 128), MemoryPlan::new(&toy(), 256));
        assert!(many.workspace_bytes() > one.workspace_bytes());
        assert!(many.workspace_bytes() <= 2 * one.workspace_bytes() + 16 * ALIGN);
        // Every block fits in the largest one's room.
        for block in &toy().blocks {
            assert!(block_activations(block, 64, 128).total() <= one.largest_block.total());
        }
        // The grouped GEMM's rows: every entry plus a partial tile per expert.
        assert_eq!(padded_expert_rows(10, 2, 8), (20 + 8 * 63_usize).next_multiple_of(64));
        // With no block served, the norm_f output still has room.
        let empty = ModelShape {
            blocks: Vec::new(),
            ..toy()
        };
        assert_eq!(MemoryPlan::new(&empty, 4).largest_block.total(), ALIGN.max(4 * 64 * 4));
    }
}
