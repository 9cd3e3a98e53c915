//! The MoE mixer: a sigmoid router with score-correction bias and group-limited top-k, routed
//! ReLU² experts (in a latent width when LatentMoE projects down first), and a shared expert.
//!
//! How the routed experts run is the backend's business ([`Backend::routed_experts`]): each
//! token's result does not depend on which other tokens share the batch.

use marc_kernels::KernelError;
use marc_kernels::backend::{Backend, Resident};
use marc_kernels::ops::moe_route;
pub use marc_kernels::ops::moe_route::Route;

use super::mlp::Mlp;
use crate::config::MoeConfig;
use crate::error::LoadError;
use crate::weights::WeightLoader;

pub(crate) struct Moe<B: Backend> {
    cfg: MoeConfig,
    /// Router weight `[experts, hidden]`, always applied in exact f32 as the reference does: a
    /// flipped expert choice is the largest error a cheaper mode could cause.
    router: B::Linear,
    correction_bias: B::Vector,
    experts: B::Experts,
    shared: Mlp<B>,
    latent: Option<(B::Linear, B::Linear)>,
}

impl<B: Backend> Moe<B> {
    pub(crate) fn load(
        w: &mut WeightLoader<'_, B>,
        prefix: &str,
        cfg: &MoeConfig,
        hidden: usize,
    ) -> Result<Self, LoadError> {
        let width = cfg.expert_width(hidden);
        let latent = match cfg.latent_size {
            Some(latent) => Some((
                w.linear(&format!("{prefix}.fc1_latent_proj"), latent, hidden, cfg.bias)?,
                w.linear(&format!("{prefix}.fc2_latent_proj"), hidden, latent, cfg.bias)?,
            )),
            None => None,
        };
        let experts_prefix = format!("{prefix}.experts");
        let experts = (0..cfg.num_experts)
            .map(|e| {
                let (n, inter) = (cfg.num_experts, cfg.expert_intermediate_size);
                let up = w.expert_linear(&experts_prefix, "up_proj", e, n, inter, width)?;
                let down = w.expert_linear(&experts_prefix, "down_proj", e, n, width, inter)?;
                Ok((up, down))
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            router: w.exact_linear(&format!("{prefix}.gate"), cfg.num_experts, hidden)?,
            correction_bias: w.param(&format!("{prefix}.gate.e_score_correction_bias"), &[cfg.num_experts])?,
            experts: w.group_experts(&experts_prefix, experts)?,
            shared: Mlp::load(
                w,
                &format!("{prefix}.shared_experts"),
                hidden,
                cfg.shared_intermediate_size,
                cfg.bias,
            )?,
            latent,
        })
    }

    pub(crate) fn size_in_bytes(&self) -> usize {
        let latent = self
            .latent
            .as_ref()
            .map_or(0, |(a, b)| a.size_in_bytes() + b.size_in_bytes());
        self.router.size_in_bytes() + self.experts.size_in_bytes() + self.shared.size_in_bytes() + latent
    }

    pub(crate) fn forward(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor, KernelError> {
        let logits = backend.linear(x, &self.router)?;
        let projected = match &self.latent {
            Some((fc1, _)) => Some(backend.linear(x, fc1)?),
            None => None,
        };
        let expert_input = projected.as_ref().unwrap_or(x);
        let routed = backend.routed_experts(
            expert_input,
            logits,
            &self.correction_bias,
            &self.cfg.router(),
            &self.experts,
        )?;
        drop(projected);
        let mut out = match &self.latent {
            Some((_, fc2)) => backend.linear(&routed, fc2)?,
            None => routed,
        };
        let shared = self.shared.forward(backend, x)?;
        backend.add_assign(&mut out, &shared)?;
        Ok(out)
    }
}

/// Picks a token's experts from its sigmoid `scores` as transformers' `NemotronHTopkRouter` does
/// (see [`moe_route::route`]).
///
/// Public as the reference the CUDA routing kernel (kernels/cuda/moe_routing.cu) is tested against.
pub fn route(scores: &[f32], bias: &[f32], cfg: &MoeConfig) -> Route {
    moe_route::route(scores, bias, &cfg.router())
}
