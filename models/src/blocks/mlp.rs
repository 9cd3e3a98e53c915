//! The non-gated ReLU² MLP: `down(relu(up(x))²)`. Also the shape of every routed and shared expert.

use marc_kernels::KernelError;
use marc_kernels::ops::activation::relu2_in_place;

use crate::error::LoadError;
use crate::scratch::Buffer;
use crate::weights::{Linear, WeightLoader};

pub(crate) struct Mlp {
    up: Linear,
    down: Linear,
}

impl Mlp {
    /// Loads `{prefix}.up_proj` `[intermediate, width]` and `{prefix}.down_proj` `[width, intermediate]`.
    pub(crate) fn load(
        w: &mut WeightLoader<'_>,
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

    /// Builds an expert from already packed projections.
    pub(crate) fn from_parts(up: Linear, down: Linear) -> Self {
        Self { up, down }
    }

    /// Whether its Linears report their inputs (a model loaded for calibration).
    pub(crate) fn is_observed(&self) -> bool {
        self.up.is_observed()
    }

    pub(crate) fn size_in_bytes(&self) -> usize {
        self.up.size_in_bytes() + self.down.size_in_bytes()
    }

    /// `x`: `[m, width]` -> `[m, width]`.
    pub(crate) fn forward(&self, x: &[f32]) -> Result<Buffer, KernelError> {
        let m = x.len() / self.up.weight.cols();
        let mut h = self.up.apply(x, m)?;
        relu2_in_place(&mut h);
        self.down.apply(&h, m)
    }
}
