//! The four mixers a NemotronH block can hold. Each reads the block's normalised input
//! `[tokens, hidden]` of a packed batch and returns its output of the same shape; the residual
//! add and the pre-norm live in [`crate::model`].

pub(crate) mod attention;
pub(crate) mod mamba;
pub(crate) mod mlp;
pub(crate) mod moe;

use marc_kernels::KernelError;
use marc_kernels::backend::Backend;

use crate::config::{BlockKind, NemotronHConfig};
use crate::error::LoadError;
use crate::weights::WeightLoader;

/// One block's mixer.
pub(crate) enum Mixer<B: Backend> {
    Mamba(mamba::Mamba<B>),
    Attention(attention::Attention<B>),
    Mlp(mlp::Mlp<B>),
    Moe(moe::Moe<B>),
}

impl<B: Backend> Mixer<B> {
    /// Loads the mixer of block `layer` (tensors under `layers.{layer}.mixer`).
    pub(crate) fn load(w: &mut WeightLoader<'_, B>, config: &NemotronHConfig, layer: usize) -> Result<Self, LoadError> {
        let prefix = format!("layers.{layer}.mixer");
        let hidden = config.hidden_size;
        Ok(match config.blocks[layer] {
            BlockKind::Mamba => Self::Mamba(mamba::Mamba::load(w, &prefix, &config.mamba, hidden, config.norm_eps)?),
            BlockKind::Attention => Self::Attention(attention::Attention::load(w, &prefix, &config.attention, hidden)?),
            BlockKind::Mlp => Self::Mlp(mlp::Mlp::load(
                w,
                &prefix,
                hidden,
                config.mlp.intermediate_size,
                config.mlp.bias,
            )?),
            BlockKind::Moe => Self::Moe(moe::Moe::load(w, &prefix, &config.moe, hidden)?),
        })
    }

    /// Bytes of weights held.
    pub(crate) fn size_in_bytes(&self) -> usize {
        match self {
            Self::Mamba(m) => m.size_in_bytes(),
            Self::Attention(a) => a.size_in_bytes(),
            Self::Mlp(m) => m.size_in_bytes(),
            Self::Moe(m) => m.size_in_bytes(),
        }
    }

    /// Runs the mixer on `x` `[tokens, hidden]` of `batch`.
    pub(crate) fn forward(&self, backend: &B, x: &B::Tensor, batch: &B::Batch) -> Result<B::Tensor, KernelError> {
        match self {
            Self::Mamba(m) => m.forward(backend, x, batch),
            Self::Attention(a) => a.forward(backend, x, batch),
            Self::Mlp(m) => m.forward(backend, x),
            Self::Moe(m) => m.forward(backend, x),
        }
    }
}
