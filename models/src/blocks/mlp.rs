//! The non-gated ReLU² MLP: `down(relu(up(x))²)`. Also the shape of the shared expert.

use marc_kernels::KernelError;
use marc_kernels::backend::{Backend, Resident};

use crate::error::LoadError;
use crate::weights::WeightLoader;

pub(crate) struct Mlp<B: Backend> {
    up: B::Linear,
    down: B::Linear,
}

impl<B: Backend> Mlp<B> {
    /// Loads `{prefix}.up_proj` `[intermediate, width]` and `{prefix}.down_proj` `[width, intermediate]`.
    pub(crate) fn load(
        w: &mut WeightLoader<'_, B>,
        prefix: &str,
        width: usize,
        intermediate: usize,
        bias: bool,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            up: w.linear(&format!("{prefix}.up_proj"), intermediate, width, bias)?,
            down: w.linear(&format!("{prefix}.down_proj"), width, intermediate, bias)?,
        })
    }

    pub(crate) fn size_in_bytes(&self) -> usize {
        self.up.size_in_bytes() + self.down.size_in_bytes()
    }

    /// `x`: `[m, width]` -> `[m, width]`.
    pub(crate) fn forward(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor, KernelError> {
        let mut h = backend.linear(x, &self.up)?;
        backend.relu2(&mut h)?;
        backend.linear(&h, &self.down)
    }
}
