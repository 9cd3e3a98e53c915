//! The four mixers a NemotronH block can hold. Each reads the block's normalised input
//! `[tokens, hidden]` of a packed batch and returns its output of the same shape; the residual
//! add and the pre-norm live in [`crate::model`].

pub(crate) mod attention;
pub(crate) mod mamba;
pub(crate) mod mlp;
pub(crate) mod moe;

use marc_kernels::KernelError;

use crate::config::{BlockKind, NemotronHConfig};
use crate::error::LoadError;
use crate::scratch::Buffer;
use crate::weights::WeightLoader;

/// One block's mixer.
pub(crate) enum Mixer {
    Mamba(mamba::Mamba),
    Attention(attention::Attention),
    Mlp(mlp::Mlp),
    Moe(moe::Moe),
}

impl Mixer {
    /// Loads the mixer of block `layer` (tensors under `layers.{layer}.mixer`).
    pub(crate) fn load(w: &mut WeightLoader<'_>, config: &NemotronHConfig, layer: usize) -> Result<Self, LoadError> {
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

    /// Runs the mixer on `x` `[tokens, hidden]` whose sequences are delimited by `cu_seqlens`.
    pub(crate) fn forward(&self, x: &[f32], cu_seqlens: &[usize]) -> Result<Buffer, KernelError> {
        match self {
            Self::Mamba(m) => m.forward(x, cu_seqlens),
            Self::Attention(a) => a.forward(x, cu_seqlens),
            Self::Mlp(m) => m.forward(x),
            Self::Moe(m) => m.forward(x),
        }
    }
}
