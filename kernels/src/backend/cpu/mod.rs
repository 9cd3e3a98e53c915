//! The CPU backend: the reference every other backend is compared with.
//!
//! Tensors are pooled host buffers ([`scratch`]); each op is the CPU op of [`crate::ops`] it is
//! named after, called on them in place, without copies.

mod linear;
mod moe;
pub mod scratch;

pub use linear::{EmbeddingTable, Linear};
pub use moe::Experts;
pub use scratch::Buffer;

use super::{Backend, LinearSource, Resident, WeightData, WeightSource};
use crate::error::{KernelError, check_len};
use crate::ops::activation::{add_in_place, relu2_in_place, softplus};
use crate::ops::moe_route::RouterConfig;
use crate::ops::norm::{gated_group_rms_norm, rms_norm};
use crate::ops::{AttentionShape, SsdShape, causal_attention, causal_conv1d_silu, ssd_scan_xbc};

/// The CPU backend. Ops run on the current rayon pool (call them inside `pool.install` to choose
/// the threads).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// A packed batch on the CPU: its token ids and sequence offsets.
#[derive(Clone, Debug)]
pub struct CpuBatch {
    tokens: Vec<u32>,
    cu_seqlens: Vec<usize>,
}

impl Resident for Vec<f32> {
    fn size_in_bytes(&self) -> usize {
        self.len() * 4
    }
}

impl Backend for Cpu {
    type Tensor = Buffer;
    type Vector = Vec<f32>;
    type Linear = Linear;
    type Embedding = EmbeddingTable;
    type Experts = Experts;
    type Batch = CpuBatch;

    fn upload_vector(&self, values: Vec<f32>) -> Result<Vec<f32>, KernelError> {
        Ok(values)
    }

    fn upload_linear(&self, linear: LinearSource<'_>) -> Result<Linear, KernelError> {
        Ok(Linear {
            weight: linear.weight.pack()?,
            bias: linear.bias,
            precision: linear.precision,
            observer: linear.observer,
        })
    }

    fn upload_embedding(&self, table: WeightSource<'_>) -> Result<EmbeddingTable, KernelError> {
        match table.data {
            WeightData::Float { dtype, bytes } => {
                check_len(
                    "embedding",
                    "table bytes",
                    bytes.len(),
                    table.rows * table.cols * dtype.size_in_bytes(),
                )?;
                EmbeddingTable::new(dtype, table.cols, bytes.to_vec())
            }
            other => Err(KernelError::Unsupported {
                op: "embedding",
                reason: format!("tables are F32, BF16 or F16, not {}", other.dtype()),
            }),
        }
    }

    fn group_experts(&self, experts: Vec<(Linear, Linear)>) -> Result<Experts, KernelError> {
        Ok(Experts(experts))
    }

    fn batch(&self, tokens: &[u32], cu_seqlens: &[usize]) -> Result<CpuBatch, KernelError> {
        Ok(CpuBatch {
            tokens: tokens.to_vec(),
            cu_seqlens: cu_seqlens.to_vec(),
        })
    }

    fn download(&self, x: &Buffer) -> Result<Vec<f32>, KernelError> {
        Ok(x.to_vec())
    }

    fn synchronize(&self) -> Result<(), KernelError> {
        Ok(())
    }

    /// On a worker thread of the current rayon pool (`rayon::scope` runs its closure on one,
    /// handing it over when called from outside the pool). Every op of the pass is a parallel
    /// region; issued from a worker, a region starts without waking the issuing thread's own
    /// worker, and the sequential steps between regions keep one worker busy rather than leaving
    /// all of them to fall asleep. Waking a sleeping thread costs tens of µs on the VMs marc is
    /// measured on, and a 1 x 32 forward pass runs ~100 regions: this is 8-10% of its time.
    fn run_forward<R: Send>(&self, forward: impl FnOnce() -> R + Send) -> R {
        rayon::scope(|_| forward())
    }

    fn embed(&self, table: &EmbeddingTable, batch: &CpuBatch) -> Result<Buffer, KernelError> {
        if let Some(&id) = batch.tokens.iter().find(|&&id| id as usize >= table.rows()) {
            return Err(KernelError::InvalidValue {
                op: "embed",
                what: "tokens",
                reason: format!("id {id} is beyond the table's {} rows", table.rows()),
            });
        }
        let width = table.width();
        let mut h = scratch::take(batch.tokens.len() * width);
        for (row, &id) in h.chunks_exact_mut(width).zip(&batch.tokens) {
            table.row_into(id as usize, row);
        }
        Ok(h)
    }

    fn linear(&self, x: &Buffer, linear: &Linear) -> Result<Buffer, KernelError> {
        linear.apply(x, x.len() / linear.weight.cols())
    }

    fn rms_norm(&self, x: &Buffer, weight: &Vec<f32>, eps: f32) -> Result<Buffer, KernelError> {
        let mut out = scratch::take(x.len());
        rms_norm(x, weight, eps, &mut out)?;
        Ok(out)
    }

    fn add_assign(&self, acc: &mut Buffer, x: &Buffer) -> Result<(), KernelError> {
        check_len("add_assign", "x", x.len(), acc.len())?;
        add_in_place(acc, x);
        Ok(())
    }

    fn relu2(&self, x: &mut Buffer) -> Result<(), KernelError> {
        relu2_in_place(x);
        Ok(())
    }

    fn softplus_dt(&self, dt: &mut Buffer, bias: &Vec<f32>, min: f32) -> Result<(), KernelError> {
        if bias.is_empty() || !dt.len().is_multiple_of(bias.len()) {
            return Err(KernelError::InvalidShape {
                op: "softplus_dt",
                reason: format!("{} step sizes are not whole rows of {} heads", dt.len(), bias.len()),
            });
        }
        for row in dt.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = softplus(*v + b).max(min);
            }
        }
        Ok(())
    }

    fn causal_conv1d_silu(
        &self,
        x: &Buffer,
        batch: &CpuBatch,
        weight: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        kernel_size: usize,
    ) -> Result<Buffer, KernelError> {
        let mut out = scratch::take(x.len());
        causal_conv1d_silu(
            x,
            &batch.cu_seqlens,
            weight,
            bias.map(Vec::as_slice),
            kernel_size,
            &mut out,
        )?;
        Ok(out)
    }

    fn ssd_scan_xbc(
        &self,
        shape: &SsdShape,
        batch: &CpuBatch,
        xbc: &Buffer,
        dt: &Buffer,
        a: &Vec<f32>,
        d: &Vec<f32>,
    ) -> Result<Buffer, KernelError> {
        let width = shape.num_heads.checked_mul(shape.head_dim);
        let len = width.and_then(|w| w.checked_mul(batch.tokens.len()));
        let len = len.ok_or_else(|| KernelError::InvalidShape {
            op: "ssd_scan",
            reason: format!("{shape:?} over {} tokens overflows usize", batch.tokens.len()),
        })?;
        let mut y = scratch::take(len);
        ssd_scan_xbc(shape, &batch.cu_seqlens, xbc, dt, a, d, &mut y)?;
        Ok(y)
    }

    fn gated_group_rms_norm(
        &self,
        y: &mut Buffer,
        z: &Buffer,
        weight: &Vec<f32>,
        group_size: usize,
        eps: f32,
    ) -> Result<(), KernelError> {
        gated_group_rms_norm(y, z, weight, group_size, eps)
    }

    fn causal_attention(
        &self,
        shape: &AttentionShape,
        batch: &CpuBatch,
        q: &Buffer,
        k: &Buffer,
        v: &Buffer,
    ) -> Result<Buffer, KernelError> {
        let mut context = scratch::take(q.len());
        causal_attention(shape, &batch.cu_seqlens, q, k, v, &mut context)?;
        Ok(context)
    }

    fn routed_experts(
        &self,
        x: &Buffer,
        logits: Buffer,
        bias: &Vec<f32>,
        router: &RouterConfig,
        experts: &Experts,
    ) -> Result<Buffer, KernelError> {
        moe::routed_experts(x, logits, bias, router, experts)
    }
}
