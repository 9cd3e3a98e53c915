//! The MoE mixer: a sigmoid router with score-correction bias and group-limited top-k, routed
//! ReLU² experts (in a latent width when LatentMoE projects down first), and a shared expert.
//!
//! Tokens are grouped per expert so each expert runs one GEMM over all its tokens. Each token's
//! expert outputs land in their own slot and are summed per token in routing order, so a
//! token's result does not depend on which other tokens share the batch.

use marc_kernels::ops::activation::sigmoid;
use marc_kernels::{KernelError, MatmulPrecision, PackedMatrix};
use rayon::prelude::*;

use super::mlp::Mlp;
use crate::config::MoeConfig;
use crate::error::LoadError;
use crate::scratch::{self, Buffer};
use crate::weights::{Linear, WeightLoader};

pub(crate) struct Moe {
    cfg: MoeConfig,
    /// Router weight `[experts, hidden]`, applied in f32 as the reference does.
    router: PackedMatrix,
    correction_bias: Vec<f32>,
    experts: Vec<Mlp>,
    shared: Mlp,
    latent: Option<(Linear, Linear)>,
}

/// The experts chosen for one token and their weights, best first.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Expert indices, best first.
    pub experts: Vec<usize>,
    /// Their routing weights, in the same order.
    pub weights: Vec<f32>,
}

impl Moe {
    pub(crate) fn load(
        w: &mut WeightLoader<'_>,
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
                Ok(Mlp::from_parts(up, down))
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            router: w.exact_matrix(&format!("{prefix}.gate"), cfg.num_experts, hidden)?,
            correction_bias: w.vector(&format!("{prefix}.gate.e_score_correction_bias"), &[cfg.num_experts])?,
            experts,
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
        self.router.size_in_bytes()
            + self.experts.iter().map(Mlp::size_in_bytes).sum::<usize>()
            + self.shared.size_in_bytes()
            + latent
    }

    pub(crate) fn forward(&self, x: &[f32]) -> Result<Buffer, KernelError> {
        let hidden = self.router.cols();
        let tokens = x.len() / hidden;
        let top_k = self.cfg.top_k;

        let mut scores = scratch::take(tokens * self.cfg.num_experts);
        // Routing is always exact: a flipped expert choice is the largest error a cheaper mode
        // could cause.
        marc_kernels::matmul_with_precision(x, tokens, &self.router, None, &mut scores, MatmulPrecision::Exact)?;
        let routes: Vec<Route> = scores
            .chunks_exact_mut(self.cfg.num_experts)
            .map(|logits| {
                logits.iter_mut().for_each(|v| *v = sigmoid(*v));
                route(logits, &self.correction_bias, &self.cfg)
            })
            .collect();

        let projected;
        let expert_input = match &self.latent {
            Some((fc1, _)) => {
                projected = fc1.apply(x, tokens)?;
                &projected[..]
            }
            None => x,
        };
        let width = expert_input.len() / tokens.max(1);

        if self.experts.first().is_some_and(Mlp::is_observed) {
            // Calibration (as ModelOpt calibrates MoE layers): every expert sees every token, so
            // that each one's input amax covers what any routing could send it; the outputs are
            // discarded and the layer's result below is unchanged.
            self.experts
                .par_iter()
                .try_for_each(|expert| expert.forward(expert_input).map(drop))?;
        }
        // (token, slot) pairs per expert, in token order.
        let mut assignments: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.experts.len()];
        for (t, r) in routes.iter().enumerate() {
            for (slot, &e) in r.experts.iter().enumerate() {
                assignments[e].push((t, slot));
            }
        }
        // Experts run concurrently: at small batches each has a handful of rows, and one parallel
        // region over experts costs far less than a synchronised GEMM per expert. Each expert's
        // rows are computed the same way whichever thread runs it.
        let outputs = assignments
            .par_iter()
            .enumerate()
            .filter(|(_, assigned)| !assigned.is_empty())
            .map(|(e, assigned)| {
                let mut gathered = scratch::take(assigned.len() * width);
                for (row, &(t, _)) in gathered.chunks_exact_mut(width).zip(assigned) {
                    row.copy_from_slice(&expert_input[t * width..(t + 1) * width]);
                }
                Ok((e, self.experts[e].forward(&gathered)?))
            })
            .collect::<Result<Vec<_>, KernelError>>()?;
        let mut slots = scratch::take(tokens * top_k * width);
        for (e, out) in &outputs {
            for (row, &(t, slot)) in out.chunks_exact(width).zip(&assignments[*e]) {
                let weight = routes[t].weights[slot];
                let dst = &mut slots[(t * top_k + slot) * width..][..width];
                for (d, v) in dst.iter_mut().zip(row) {
                    *d = v * weight;
                }
            }
        }
        let mut routed = scratch::take_zeroed(tokens * width);
        for (acc, token_slots) in routed.chunks_exact_mut(width).zip(slots.chunks_exact(top_k * width)) {
            for slot in token_slots.chunks_exact(width) {
                marc_kernels::ops::activation::add_in_place(acc, slot);
            }
        }
        let mut out = match &self.latent {
            Some((_, fc2)) => fc2.apply(&routed, tokens)?,
            None => routed,
        };
        let shared = self.shared.forward(x)?;
        marc_kernels::ops::activation::add_in_place(&mut out, &shared);
        Ok(out)
    }
}

/// Picks a token's experts from its sigmoid `scores` as transformers' `NemotronHTopkRouter` does:
/// choice scores `scores + bias`; each of `n_group` groups is scored by the sum of its two best
/// choice scores; the best `topk_group` groups stay; the best `top_k` experts among them are
/// picked; their weights are the *uncorrected* scores, optionally normalised (`+ 1e-20`), times
/// the routed scaling factor. Ties go to the lower index.
///
/// Public as the reference the CUDA routing kernel (kernels/cuda/moe_routing.cu) is tested against.
pub fn route(scores: &[f32], bias: &[f32], cfg: &MoeConfig) -> Route {
    let choice: Vec<f32> = scores.iter().zip(bias).map(|(s, b)| s + b).collect();
    let per_group = choice.len() / cfg.n_group;
    let group_scores: Vec<f32> = choice
        .chunks_exact(per_group)
        .map(|group| {
            let best = top_indices(group, 2);
            best.iter().map(|&i| group[i]).sum()
        })
        .collect();
    let mut allowed = vec![false; choice.len()];
    for g in top_indices(&group_scores, cfg.topk_group) {
        allowed[g * per_group..(g + 1) * per_group].fill(true);
    }
    let masked: Vec<f32> = choice
        .iter()
        .zip(&allowed)
        .map(|(&c, &ok)| if ok { c } else { f32::NEG_INFINITY })
        .collect();
    let experts = top_indices(&masked, cfg.top_k);
    let mut weights: Vec<f32> = experts.iter().map(|&e| scores[e]).collect();
    if cfg.norm_topk_prob {
        let denominator = weights.iter().sum::<f32>() + 1e-20;
        weights.iter_mut().for_each(|w| *w /= denominator);
    }
    weights.iter_mut().for_each(|w| *w *= cfg.routed_scaling_factor);
    Route { experts, weights }
}

/// Indices of the `k` largest values, largest first; ties to the lower index.
fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n_group: usize, topk_group: usize, top_k: usize, norm: bool, scale: f32) -> MoeConfig {
        MoeConfig {
            num_experts: 8,
            top_k,
            expert_intermediate_size: 4,
            shared_intermediate_size: 4,
            latent_size: None,
            n_group,
            topk_group,
            norm_topk_prob: norm,
            routed_scaling_factor: scale,
            bias: false,
        }
    }

    #[test]
    fn groups_limit_the_choice_and_bias_only_steers() {
        // Groups of two: {0,1} {2,3} {4,5} {6,7}.
        let scores = [0.9, 0.1, 0.5, 0.5, 0.95, 0.0, 0.2, 0.2];
        let bias = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        // Group sums: 1.0, 1.0, 0.95, 1.4 -> best two groups {6,7} and {0,1} (tie to lower).
        let r = route(&scores, &bias, &cfg(4, 2, 2, false, 1.0));
        assert_eq!(r.experts, vec![7, 0]);
        assert_eq!(r.weights, vec![0.2, 0.9]);
        // One group of all: expert 7 wins on its corrected score but keeps its raw weight.
        let r = route(&scores, &bias, &cfg(1, 1, 2, true, 2.0));
        assert_eq!(r.experts, vec![7, 4]);
        let sum = 0.2f32 + 0.95 + 1e-20;
        assert_eq!(r.weights, vec![0.2 / sum * 2.0, 0.95 / sum * 2.0]);
    }
}
