//! Causal grouped-query self-attention with no positional embedding (the Mamba blocks carry
//! position), over a packed batch: tokens never attend across sequences.

use marc_kernels::KernelError;
use marc_kernels::backend::{Backend, Resident};
use marc_kernels::ops::attention::AttentionShape;

use crate::config::AttentionConfig;
use crate::error::LoadError;
use crate::weights::WeightLoader;

pub(crate) struct Attention<B: Backend> {
    q: B::Linear,
    k: B::Linear,
    v: B::Linear,
    o: B::Linear,
    shape: AttentionShape,
}

impl<B: Backend> Attention<B> {
    pub(crate) fn load(
        w: &mut WeightLoader<'_, B>,
        prefix: &str,
        cfg: &AttentionConfig,
        hidden: usize,
    ) -> Result<Self, LoadError> {
        let q_width = cfg.num_heads * cfg.head_dim;
        let kv_width = cfg.num_kv_heads * cfg.head_dim;
        // transformers builds q/k/v/o without bias whatever `attention_bias` says; we follow it.
        Ok(Self {
            q: w.linear(&format!("{prefix}.q_proj"), q_width, hidden, false)?,
            k: w.linear(&format!("{prefix}.k_proj"), kv_width, hidden, false)?,
            v: w.linear(&format!("{prefix}.v_proj"), kv_width, hidden, false)?,
            o: w.linear(&format!("{prefix}.o_proj"), hidden, q_width, false)?,
            shape: AttentionShape {
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
            },
        })
    }

    pub(crate) fn size_in_bytes(&self) -> usize {
        [&self.q, &self.k, &self.v, &self.o]
            .iter()
            .map(|l| l.size_in_bytes())
            .sum()
    }

    pub(crate) fn forward(&self, backend: &B, x: &B::Tensor, batch: &B::Batch) -> Result<B::Tensor, KernelError> {
        let q = backend.linear(x, &self.q)?;
        let k = backend.linear(x, &self.k)?;
        let v = backend.linear(x, &self.v)?;
        let context = backend.causal_attention(&self.shape, batch, &q, &k, &v)?;
        backend.linear(&context, &self.o)
    }
}
