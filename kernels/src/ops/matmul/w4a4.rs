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
/// Rows per tile of the portable kernel.
const MR: usize = 3;
/// Panels per task.
const GROUP_PANELS: usize = 4;

/// Each row of x quantised to NVFP4 (`quantize_blocks` with the layer's input scale): per row,
/// the E2M1 codes (`k / 2` bytes) and the E4M3 block scales as f32 (`k / 16`).
struct QuantisedRows {
    codes: Vec<u8>,
    scales: Vec<f32>,
}

fn quantise_rows(x: &[f32], m: usize, k: usize, input_scale: f32) -> QuantisedRows {
    let blocks = k / NVFP4_BLOCK;
    let mut q = QuantisedRows {
        codes: vec![0; m * k / 2],
        scales: vec![0.0; m * blocks],
    };
    let quantise = |(i, (codes, scales)): (usize, (&mut [u8], &mut [f32]))| {
        let mut scale_codes = vec![0u8; blocks];
        for (r, (row_codes, row_scales)) in codes
            .chunks_exact_mut(k / 2)
            .zip(scales.chunks_exact_mut(blocks))
            .enumerate()
        {
            let row = &x[(i * QUANTISE_ROWS_PER_TASK + r) * k..][..k];
            quantize_blocks(row, input_scale, row_codes, &mut scale_codes);
            for (s, &c) in row_scales.iter_mut().zip(&scale_codes) {
                *s = e4m3_to_f32(c);
            }
        }
    };
    q.codes
        .par_chunks_mut(QUANTISE_ROWS_PER_TASK * k / 2)
        .zip(q.scales.par_chunks_mut(QUANTISE_ROWS_PER_TASK * blocks))
        .enumerate()
        .for_each(quantise);
    q
}

/// The quantised rows in the order a kernel reads them, and the kernel.
enum Operands {
    /// Tiles of [`MR`] rows: the E2M1 values as f32, k-major (`[k][rows]`), and the block scales
    /// (`[k / 16][rows]`).
    Portable { values: Vec<f32>, scales: Vec<f32> },
    /// Tiles of `w4a4_vnni::MR` rows: one record per block and row (`[k / 16][rows]`).
    #[cfg(target_arch = "x86_64")]
    Vnni(Vec<super::w4a4_vnni::RowBlock>),
}

impl Operands {
    fn new(isa: CpuIsa, q: &QuantisedRows, m: usize, k: usize) -> Operands {
        let blocks = k / NVFP4_BLOCK;
        #[cfg(target_arch = "x86_64")]
        if matches!(isa, CpuIsa::Avx512 | CpuIsa::Amx) && super::w4a4_vnni::available() {
            let mr = super::w4a4_vnni::MR;
            let mut records = vec![super::w4a4_vnni::RowBlock::default(); m * blocks];
            for (t, tile) in records.chunks_mut(mr * blocks).enumerate() {
                let rows = tile.len() / blocks;
                for (b, at) in tile.chunks_exact_mut(rows).enumerate() {
                    for (r, record) in at.iter_mut().enumerate() {
                        let i = t * mr + r;
                        let codes = &q.codes[i * k / 2 + b * NVFP4_BLOCK / 2..][..NVFP4_BLOCK / 2];
                        *record = super::w4a4_vnni::RowBlock::new(codes, q.scales[i * blocks + b]);
                    }
                }
            }
            return Operands::Vnni(records);
        }
        let _ = isa;
        let values: Vec<f32> = q
            .codes
            .iter()
            .flat_map(|&byte| {
                [
                    E2M1_VALUES[usize::from(byte & 0xF)],
                    E2M1_VALUES[usize::from(byte >> 4)],
                ]
            })
            .collect();
        let (mut xv, mut xs) = (vec![0.0; m * k], vec![0.0; m * blocks]);
        pack_x(&values, k, 0..m, MR, &mut xv);
        pack_x(&q.scales, blocks, 0..m, MR, &mut xs);
        Operands::Portable { values: xv, scales: xs }
    }

    /// Rows per tile.
    fn rows_per_tile(&self) -> usize {
        match self {
            Operands::Portable { .. } => MR,
            #[cfg(target_arch = "x86_64")]
            Operands::Vnni(_) => super::w4a4_vnni::MR,
        }
    }

    /// Runs the tile of rows `i0..i0 + rows` against `panels` panels (`t.x` is set here).
    ///
    /// # Safety
    /// `t` is valid for those rows and panels as on [`Tile`] (but for `t.x`).
    unsafe fn run_tile(&self, i0: usize, rows: usize, panels: usize, t: &mut Tile<u8>) {
        let blocks = t.kc / NVFP4_BLOCK;
        // SAFETY: the operands hold k values (or k / 16 records) per row, tiles in row order.
        unsafe {
            match self {
                Operands::Portable { values, scales } => {
                    t.x = values[i0 * t.kc..].as_ptr();
                    t.x_stride = rows;
                    tile_portable(rows, panels, t, scales[i0 * blocks..].as_ptr())
                }
                #[cfg(target_arch = "x86_64")]
                Operands::Vnni(records) => super::w4a4_vnni::tile(rows, panels, t, records[i0 * blocks..].as_ptr()),
            }
        }
    }
}

/// `y = W4A4(x, w) (+ bias)`; `w` is NVFP4 with an input scale, arguments validated, `m > 0`.
/// On AVX-512 VNNI the block products run in 8-bit integers (`w4a4_vnni.rs`), elsewhere in the
/// portable kernel; the two give the same bits.
pub(super) fn run(isa: CpuIsa, x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    let input_scale = w
        .input_scale()
        .expect("W4A4 needs an input scale (checked by the caller)");
    let operands = Operands::new(isa, &quantise_rows(x, m, k, input_scale), m, k);
    let mr = operands.rows_per_tile();
    let tiles = m.div_ceil(mr);
    let pb = w.panel_bytes();
    let yp = SharedMut(y.as_mut_ptr());
    let groups = w.panels().div_ceil(GROUP_PANELS);
    (0..groups).into_par_iter().for_each(|g| {
        let p0 = g * GROUP_PANELS;
        let panels = GROUP_PANELS.min(w.panels() - p0);
        for t in 0..tiles {
            let (i0, rows) = (t * mr, mr.min(m - t * mr));
            let mut tile = Tile {
                x: std::ptr::null(),
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
            // SAFETY: the ISA of the operands is available (chosen by `Operands::new`); the
            // group's panels exist (pb bytes apart), and y rows i0.. and columns p0 * NR..
            // (clipped by `cols`) are this task's alone.
            unsafe { operands.run_tile(i0, rows, panels, &mut tile) };
        }
    });
}

/// The portable W4A4 tile, with the same operations per output as the VNNI one: `rows` rows of
/// E2M1 activation values (`t.x`, `[kc][rows]`) and their block scales (`xs`, `[kc / 16][rows]`)
/// against `panels` NVFP4 panels.
///
/// # Safety
/// The pointers are valid as described (and on `Tile`).
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
