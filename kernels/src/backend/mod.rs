//! The op interface the model's forward pass is written against, once, for every backend.
//!
//! A [`Backend`] owns its memory: weights are handed over once at load ([`Backend::upload_linear`]
//! and friends, from the checkpoint's bytes as stored) and come back as the backend's own types;
//! activations are the backend's [`Backend::Tensor`]s, made by the ops themselves. The model only
//! strings ops together, so it cannot tell whether they run on the CPU ([`cpu::Cpu`], the
//! reference) or elsewhere.
//!
//! The ops are exactly those NemotronH's blocks need, at the granularity where backends differ:
//! the routed experts of an MoE block are one op ([`Backend::routed_experts`]), because a CPU runs
//! one GEMM per expert while a GPU permutes tokens and runs one grouped GEMM.

pub mod cpu;
mod source;

pub use source::{LinearSource, WeightData, WeightSource};

use crate::error::KernelError;
use crate::ops::moe_route::RouterConfig;
use crate::ops::{AttentionShape, SsdShape};

/// Receives every input a Linear layer is applied to (calibration: the largest |input| per layer
/// decides the static activation scale of W4A4). Only the CPU backend reports inputs.
pub trait InputObserver: Send + Sync + std::fmt::Debug {
    /// Called with the `[m, in]` input before each product.
    fn observe(&self, x: &[f32]);
}

/// Something a backend holds for the model's lifetime; reports what it occupies.
pub trait Resident {
    /// Bytes of weights held.
    fn size_in_bytes(&self) -> usize;
}

/// A place the forward pass runs: its memory types and its ops.
///
/// Activations are f32 row-major `[rows, width]`; a new tensor's contents are unspecified until an
/// op writes it. Ops check shapes and report a [`KernelError`]; results follow the numerics of the
/// CPU ops they are named after (see each op's CPU twin in [`crate::ops`]).
pub trait Backend: Send + Sync {
    /// Activations.
    type Tensor: Send;
    /// A small f32 parameter (norm weights, conv taps, SSM `A`, `D`, biases).
    type Vector: Resident + Send + Sync;
    /// A Linear layer: weight, optional bias and how its GEMM treats activations.
    type Linear: Resident + Send + Sync;
    /// The token embedding table.
    type Embedding: Resident + Send + Sync;
    /// The routed experts of one MoE block.
    type Experts: Resident + Send + Sync;
    /// One packed batch's layout (token ids and `cu_seqlens`) as the ops read it.
    type Batch;

    /// Uploads an f32 parameter.
    fn upload_vector(&self, values: Vec<f32>) -> Result<Self::Vector, KernelError>;
    /// Uploads a Linear layer's weight as stored, its bias and precision.
    fn upload_linear(&self, linear: LinearSource<'_>) -> Result<Self::Linear, KernelError>;
    /// Uploads the embedding table `[vocab, hidden]` (an unquantised float type).
    fn upload_embedding(&self, table: WeightSource<'_>) -> Result<Self::Embedding, KernelError>;
    /// Groups an MoE block's routed experts, `(up, down)` per expert, in expert order.
    fn group_experts(&self, experts: Vec<(Self::Linear, Self::Linear)>) -> Result<Self::Experts, KernelError>;

    /// Hands a packed batch to the backend: `tokens` ids, sequences delimited by `cu_seqlens`.
    fn batch(&self, tokens: &[u32], cu_seqlens: &[usize]) -> Result<Self::Batch, KernelError>;
    /// Copies a tensor back to the host.
    fn download(&self, x: &Self::Tensor) -> Result<Vec<f32>, KernelError>;
    /// Waits until every op issued so far has finished (for timing).
    fn synchronize(&self) -> Result<(), KernelError>;

    /// Runs `forward`, one whole forward pass, where this backend's ops are best issued from. The
    /// default runs it in place.
    fn run_forward<R: Send>(&self, forward: impl FnOnce() -> R + Send) -> R
    where
        Self: Sized,
    {
        forward()
    }

    /// The batch's token embeddings `[tokens, hidden]`, widened to f32.
    fn embed(&self, table: &Self::Embedding, batch: &Self::Batch) -> Result<Self::Tensor, KernelError>;
    /// `x · wᵀ + bias` ([`crate::matmul_with_precision`] with the Linear's precision).
    fn linear(&self, x: &Self::Tensor, linear: &Self::Linear) -> Result<Self::Tensor, KernelError>;
    /// RMSNorm of each row ([`crate::ops::norm::rms_norm`]).
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Vector, eps: f32) -> Result<Self::Tensor, KernelError>;
    /// `acc += x`, element-wise.
    fn add_assign(&self, acc: &mut Self::Tensor, x: &Self::Tensor) -> Result<(), KernelError>;
    /// `relu(x)²`, in place.
    fn relu2(&self, x: &mut Self::Tensor) -> Result<(), KernelError>;
    /// Mamba's step sizes, in place on `dt` `[tokens, heads]`:
    /// `dt = max(softplus(dt + bias), min)` with `bias` `[heads]`.
    fn softplus_dt(&self, dt: &mut Self::Tensor, bias: &Self::Vector, min: f32) -> Result<(), KernelError>;
    /// Depthwise causal conv1d + SiLU over the batch's sequences ([`crate::ops::causal_conv1d_silu`]).
    fn causal_conv1d_silu(
        &self,
        x: &Self::Tensor,
        batch: &Self::Batch,
        weight: &Self::Vector,
        bias: Option<&Self::Vector>,
        kernel_size: usize,
    ) -> Result<Self::Tensor, KernelError>;
    /// The Mamba-2 scan reading x, B and C from the conv output ([`crate::ops::ssd_scan_xbc`]).
    fn ssd_scan_xbc(
        &self,
        shape: &SsdShape,
        batch: &Self::Batch,
        xbc: &Self::Tensor,
        dt: &Self::Tensor,
        a: &Self::Vector,
        d: &Self::Vector,
    ) -> Result<Self::Tensor, KernelError>;
    /// Mamba-2's gated group RMSNorm, in place on `y` ([`crate::ops::norm::gated_group_rms_norm`]).
    fn gated_group_rms_norm(
        &self,
        y: &mut Self::Tensor,
        z: &Self::Tensor,
        weight: &Self::Vector,
        group_size: usize,
        eps: f32,
    ) -> Result<(), KernelError>;
    /// Causal GQA attention over the batch's sequences ([`crate::ops::causal_attention`]).
    fn causal_attention(
        &self,
        shape: &AttentionShape,
        batch: &Self::Batch,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
    ) -> Result<Self::Tensor, KernelError>;
    /// An MoE block's routed experts: routes each token from its router `logits` `[tokens,
    /// experts]` ([`crate::ops::moe_route::route`] on their sigmoid, with the score-correction
    /// `bias`), runs `relu(x · upᵀ)² · downᵀ` of each chosen expert on its row of `x` `[tokens,
    /// width]` and returns each token's outputs weighted and summed in routing order.
    fn routed_experts(
        &self,
        x: &Self::Tensor,
        logits: Self::Tensor,
        bias: &Self::Vector,
        router: &RouterConfig,
        experts: &Self::Experts,
    ) -> Result<Self::Tensor, KernelError>;
}
