//! W4A4: NVFP4 weights times activations quantised to NVFP4, as Blackwell's block-scaled FP4
//! tensor cores compute it, emulated exactly.
//!
//! For each row of x, each block `b` of 16 activations is quantised with the layer's static
//! `input_scale` (ModelOpt's rule, [`nvfp4_quantize`]) to E2M1 values
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
//! [`nvfp4_quantize`]: crate::quant::nvfp4_quantize

use rayon::prelude::*;

use super::cpu::{CpuIsa, SharedMut, Tile};
use super::nvfp4::{SCALES_AT, nibble_byte};
use super::packed::{NR, NVFP4_RECORD, PackedMatrix};
use super::xpack::pack_x;
use crate::quant::e2m1::E2M1_VALUES;
use crate::quant::e4m3::e4m3_to_f32;
use crate::quant::nvfp4::{NVFP4_BLOCK, quantize_blocks};

/// Rows of x whose quantisation runs as one task.
const QUANTISE_ROWS_PER_TASK: usize = 16;
/// Rows per tile of the W4A4 kernels (two dot-product chains and one accumulator per row and
/// vector must fit the register file).
const MR: usize = 3;
/// Panels per task.
const GROUP_PANELS: usize = 2;

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
            quantize_blocks(row, input_scale, &mut packed, &mut codes);
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
    let (n, k) = (w.rows(), w.cols());
    let blocks = k / NVFP4_BLOCK;
    let input_scale = w
        .input_scale()
        .expect("W4A4 needs an input scale (checked by the caller)");
    let q = quantise_rows(x, m, k, input_scale);
    // Tiles of MR rows, k-major, as the kernels broadcast from them.
    let (mut xv, mut xs) = (vec![0.0; m * k], vec![0.0; m * blocks]);
    pack_x(&q.values, k, 0..m, MR, &mut xv);
    pack_x(&q.scales, blocks, 0..m, MR, &mut xs);
    let tiles = m.div_ceil(MR);
    let pb = w.panel_bytes();
    let yp = SharedMut(y.as_mut_ptr());
    let groups = w.panels().div_ceil(GROUP_PANELS);
    (0..groups).into_par_iter().for_each(|g| {
        let p0 = g * GROUP_PANELS;
        let panels = GROUP_PANELS.min(w.panels() - p0);
        for t in 0..tiles {
            let (i0, rows) = (t * MR, MR.min(m - t * MR));
            let tile = Tile {
                x: xv[i0 * k..].as_ptr(),
                x_stride: rows,
                w: w.data_ptr::<u8>().wrapping_add(p0 * pb),
                panel_stride: pb,
                kc: k,
                y: yp.get().wrapping_add(i0 * n + p0 * NR),
                ldy: n,
                cols: n - p0 * NR,
                bias: bias.map_or(std::ptr::null(), |b| b[p0 * NR..].as_ptr()),
                scale: input_scale * w.scale(),
            };
            let scales = xs[i0 * blocks..].as_ptr();
            // SAFETY: the ISA is available (checked by `matmul`); the x tile holds k * rows
            // values and its scales blocks * rows, the group's panels exist (pb bytes apart),
            // and y rows i0.. and columns p0 * NR.. (clipped by `cols`) are this task's alone.
            unsafe {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    CpuIsa::Avx512 | CpuIsa::Amx => super::avx512::w4a4_tile(rows, panels, &tile, scales),
                    _ => tile_portable(rows, panels, &tile, scales),
                }
            }
        }
    });
}

/// The portable W4A4 tile, with the same operations per output as the SIMD one.
///
/// # Safety
/// As for `avx512::w4a4_tile`.
unsafe fn tile_portable(rows: usize, panels: usize, t: &Tile<u8>, xs: *const f32) {
    let blocks = t.kc / NVFP4_BLOCK;
    for q in 0..panels {
        let c0 = q * NR;
        // SAFETY: per the caller, panel q holds `blocks` records; x, xs, y and bias are valid
        // for the rows and the first `cols` columns accessed here.
        unsafe {
            let panel = std::slice::from_raw_parts(t.w.add(q * t.panel_stride), blocks * NVFP4_RECORD);
            for r in 0..rows {
                for c in 0..t.cols.saturating_sub(c0).min(NR) {
                    let mut acc = 0.0f32;
                    for (b, record) in panel.chunks_exact(NVFP4_RECORD).enumerate() {
                        let mut dot = 0.0f32;
                        for pair in 0..NVFP4_BLOCK / 2 {
                            let byte = record[nibble_byte(c, pair)];
                            let kk = b * NVFP4_BLOCK + 2 * pair;
                            dot += *t.x.add(kk * rows + r) * E2M1_VALUES[usize::from(byte & 0xF)];
                            dot += *t.x.add((kk + 1) * rows + r) * E2M1_VALUES[usize::from(byte >> 4)];
                        }
                        let scale = *xs.add(b * rows + r) * e4m3_to_f32(record[SCALES_AT + c]);
                        acc = dot.mul_add(scale, acc);
                    }
                    let v = acc * t.scale;
                    *t.y.add(r * t.ldy + c0 + c) = if t.bias.is_null() { v } else { v + *t.bias.add(c0 + c) };
                }
            }
        }
    }
}
