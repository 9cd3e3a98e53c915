//! MoE routing: which experts each token goes to, and with what weight.
//!
//! The CPU twin of `kernels/cuda/moe_routing.cu`'s `moe_route_f32`, and the reference it is tested
//! against (through `marc_models::route`).

/// How a NemotronH MoE block routes (transformers' `NemotronHTopkRouter`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouterConfig {
    /// Experts per token.
    pub top_k: usize,
    /// Groups the experts are split into.
    pub n_group: usize,
    /// Groups kept per token.
    pub topk_group: usize,
    /// Whether the chosen weights are normalised to sum to one.
    pub norm_topk_prob: bool,
    /// Factor applied to every routing weight.
    pub routed_scaling_factor: f32,
}

/// The experts chosen for one token and their weights, best first.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Expert indices, best first.
    pub experts: Vec<usize>,
    /// Their routing weights, in the same order.
    pub weights: Vec<f32>,
}

/// Picks a token's experts from its sigmoid `scores` as transformers' `NemotronHTopkRouter` does:
/// choice scores `scores + bias`; each of `n_group` groups is scored by the sum of its two best
/// choice scores; the best `topk_group` groups stay; the best `top_k` experts among them are
/// picked; their weights are the *uncorrected* scores, optionally normalised (`+ 1e-20`), times
/// the routed scaling factor. Ties go to the lower index.
pub fn route(scores: &[f32], bias: &[f32], cfg: &RouterConfig) -> Route {
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

    fn cfg(n_group: usize, topk_group: usize, top_k: usize, norm: bool, scale: f32) -> RouterConfig {
        RouterConfig {
            top_k,
            n_group,
            topk_group,
            norm_topk_prob: norm,
            routed_scaling_factor: scale,
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
