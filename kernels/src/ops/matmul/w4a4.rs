//! W4A4: NVFP4 weights times activations quantised to NVFP4, as Blackwell's block-scaled FP4
//! tensor cores compute it, emulated exactly.
//!
//! For each row of x, each block `b` of 16 activations is quantised with the layer's static
//! `input_scale` (ModelOpt's activation rule: [`Nvfp4ScaleRule::Activation`]) to E2M1 values
//! `xe` and an E4M3 scale `xs[b]`. Then every output is, in this order:
//! 1. per block, `dot = sum_t xe[t] * we[t]` over the 16 E2M1 pairs: exact in f32 whatever the
//!    order (every partial sum is a multiple of 1/4 below 2^12);
//! 2. `acc = fma(dot, xs[b] * ws[b], acc)` from `acc = +0.0`, blocks in increasing order: the
//!    scale product is exact (two 4-bit significands), and so is `dot` times it (at most 20
//!    significant bits), so each step rounds once, in the f32 accumulation;
//! 3. `y = acc * (input_scale * tensor_scale)`, the scale product rounded once, then `+ bias`.
//!
//! Row `i` of y depends only on row `i` of x, through this fixed sequence, so rows are bitwise
//! batch- and thread-invariant.
//!
//! [`Nvfp4ScaleRule::Activation`]: crate::quant::Nvfp4ScaleRule::Activation

use rayon::prelude::*;

use super::cpu::{CpuIsa, SharedMut};
use super::nvfp4::SCALES_AT;
use super::packed::{NR, NVFP4_RECORD, PackedMatrix};
use crate::quant::e2m1::E2M1_VALUES;
use crate::quant::e4m3::e4m3_to_f32;
use crate::quant::nvfp4::{NVFP4_BLOCK, Nvfp4ScaleRule, quantize_blocks};

/// Rows of x whose quantisation runs as one task.
const QUANTISE_ROWS_PER_TASK: usize = 16;

/// Activations of `m` rows quantised to NVFP4 and decoded: the E2M1 values as f32 (`[m, k]`)
/// and the block scales as f32 (`[m, k / 16]`).
struct QuantisedRows {
    values: Vec<f32>,
    scales: Vec<f32>,
}

fn quantise_rows(x: &[f32], m: usize, k: usize, input_scale: f32) -> QuantisedRows {
    let blocks = k / NVFP4_BLOCK;
    let mut q = QuantisedRows {
        values: vec![0.0; m * k],
        scales: vec![0.0; m * blocks],
    };
    let quantise = |(i, (values, scales)): (usize, (&mut [f32], &mut [f32]))| {
        let rows = values.len() / k;
        let mut packed = vec![0u8; k / 2];
        let mut codes = vec![0u8; blocks];
        for r in 0..rows {
            let row = &x[(i * QUANTISE_ROWS_PER_TASK + r) * k..][..k];
            quantize_blocks(row, input_scale, Nvfp4ScaleRule::Activation, &mut packed, &mut codes);
            for (pair, &byte) in values[r * k..(r + 1) * k].chunks_exact_mut(2).zip(&packed) {
                pair[0] = E2M1_VALUES[usize::from(byte & 0xF)];
                pair[1] = E2M1_VALUES[usize::from(byte >> 4)];
            }
            for (s, &c) in scales[r * blocks..(r + 1) * blocks].iter_mut().zip(&codes) {
                *s = e4m3_to_f32(c);
            }
        }
    };
    q.values
        .par_chunks_mut(QUANTISE_ROWS_PER_TASK * k)
        .zip(q.scales.par_chunks_mut(QUANTISE_ROWS_PER_TASK * blocks))
        .enumerate()
        .for_each(quantise);
    q
}

/// `y = W4A4(x, w) (+ bias)`; `w` is NVFP4 with an input scale, arguments validated, `m > 0`.
pub(super) fn run(isa: CpuIsa, x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    let _ = isa;
    let (n, k) = (w.rows(), w.cols());
    let input_scale = w
        .input_scale()
        .expect("W4A4 needs an input scale (checked by the caller)");
    let out_scale = input_scale * w.scale();
    let q = quantise_rows(x, m, k, input_scale);
    let yp = SharedMut(y.as_mut_ptr());
    (0..w.panels()).into_par_iter().for_each(|p| {
        let panel = w.panel(p);
        let cols = NR.min(n - p * NR);
        for i in 0..m {
            let xv = &q.values[i * k..(i + 1) * k];
            let xs = &q.scales[i * (k / NVFP4_BLOCK)..(i + 1) * (k / NVFP4_BLOCK)];
            for c in 0..cols {
                let mut acc = 0.0f32;
                for ((record, xb), &xsb) in panel
                    .chunks_exact(NVFP4_RECORD)
                    .zip(xv.chunks_exact(NVFP4_BLOCK))
                    .zip(xs)
                {
                    let mut dot = 0.0f32;
                    for t in 0..NVFP4_BLOCK / 2 {
                        let byte = record[t * NR + c];
                        dot += xb[2 * t] * E2M1_VALUES[usize::from(byte & 0xF)];
                        dot += xb[2 * t + 1] * E2M1_VALUES[usize::from(byte >> 4)];
                    }
                    acc = dot.mul_add(xsb * e4m3_to_f32(record[SCALES_AT + c]), acc);
                }
                let j = p * NR + c;
                let v = acc * out_scale;
                let v = bias.map_or(v, |b| v + b[j]);
                // SAFETY: y holds m * n values; element (i, j) is written by this task only
                // (tasks own disjoint panels).
                unsafe { *yp.get().add(i * n + j) = v };
            }
        }
    });
}
