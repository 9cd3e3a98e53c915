//! Causal grouped-query self-attention with no positional embedding (the Mamba blocks carry
//! position), over a packed batch: tokens never attend across sequences.

use marc_kernels::KernelError;
use marc_kernels::ops::attention::{AttentionShape, causal_attention};

use crate::config::AttentionConfig;
use crate::error::LoadError;
use crate::scratch::{self, Buffer};
use crate::weights::{Linear, WeightLoader};

pub(crate) struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    shape: AttentionShape,
}

impl Attention {
    pub(crate) fn load(
        w: &mut WeightLoader<'_>,
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

    pub(crate) fn forward(&self, x: &[f32], cu_seqlens: &[usize]) -> Result<Buffer, KernelError> {
        let tokens = x.len() / self.q.weight.cols();
        let q = self.q.apply(x, tokens)?;
        let k = self.k.apply(x, tokens)?;
        let v = self.v.apply(x, tokens)?;
        let mut context = scratch::take(q.len());
        causal_attention(&self.shape, cu_seqlens, &q, &k, &v, &mut context)?;
        self.o.apply(&context, tokens)
    }
}
