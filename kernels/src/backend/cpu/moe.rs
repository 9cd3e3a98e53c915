//! The routed experts of an MoE block on the CPU: one GEMM per expert over the tokens routed to
//! it, experts in parallel.
//!
//! Each token's expert outputs land in their own slot and are summed per token in routing order,
//! so a token's result does not depend on which other tokens share the batch.

use rayon::prelude::*;

use super::linear::Linear;
use super::scratch::{self, Buffer};
use crate::backend::Resident;
use crate::error::KernelError;
use crate::ops::activation::{add_in_place, relu2_in_place, sigmoid};
use crate::ops::moe_route::{Route, RouterConfig, route};

/// The routed experts of one MoE block: `(up, down)` per expert.
pub struct Experts(pub(super) Vec<(Linear, Linear)>);

impl Resident for Experts {
    fn size_in_bytes(&self) -> usize {
        self.0
            .iter()
            .map(|(up, down)| up.size_in_bytes() + down.size_in_bytes())
            .sum()
    }
}

/// `relu(x · upᵀ)² · downᵀ` for `m` rows.
fn expert_forward((up, down): &(Linear, Linear), x: &[f32], m: usize) -> Result<Buffer, KernelError> {
    let mut h = up.apply(x, m)?;
    relu2_in_place(&mut h);
    down.apply(&h, m)
}

/// See [`crate::backend::Backend::routed_experts`].
pub(super) fn routed_experts(
    x: &[f32],
    mut logits: Buffer,
    bias: &[f32],
    router: &RouterConfig,
    experts: &Experts,
) -> Result<Buffer, KernelError> {
    const OP: &str = "routed_experts";
    let num_experts = experts.0.len();
    if num_experts == 0 || !logits.len().is_multiple_of(num_experts) {
        return Err(KernelError::InvalidShape {
            op: OP,
            reason: format!(
                "{} router logits are not whole rows of {num_experts} experts",
                logits.len()
            ),
        });
    }
    crate::error::check_len(OP, "bias", bias.len(), num_experts)?;
    let tokens = logits.len() / num_experts;
    let top_k = router.top_k;
    let width = x.len() / tokens.max(1);
    crate::error::check_len(OP, "x", x.len(), tokens * width)?;

    let routes: Vec<Route> = logits
        .chunks_exact_mut(num_experts)
        .map(|logits| {
            logits.iter_mut().for_each(|v| *v = sigmoid(*v));
            route(logits, bias, router)
        })
        .collect();
    drop(logits);

    if experts.0.first().is_some_and(|(up, _)| up.observer.is_some()) {
        // Calibration (as ModelOpt calibrates MoE layers): every expert sees every token, so
        // that each one's input amax covers what any routing could send it; the outputs are
        // discarded and the layer's result below is unchanged.
        experts
            .0
            .par_iter()
            .try_for_each(|expert| expert_forward(expert, x, tokens).map(drop))?;
    }
    // (token, slot) pairs per expert, in token order.
    let mut assignments: Vec<Vec<(usize, usize)>> = vec![Vec::new(); num_experts];
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
                row.copy_from_slice(&x[t * width..(t + 1) * width]);
            }
            Ok((e, expert_forward(&experts.0[e], &gathered, assigned.len())?))
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
            add_in_place(acc, slot);
        }
    }
    Ok(routed)
}
