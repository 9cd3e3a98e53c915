//! What the emulated kernel tests share: inputs, the comparison, launching.

#![allow(dead_code)] // Each test binary uses its own subset.

pub(crate) use marc_kernels_verify::emulated::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The fixture tolerance for f32 paths: relative L2 error at most 1e-5.
pub(crate) const F32_REL_L2: f64 = 1e-5;

/// A deterministic generator per test.
pub(crate) fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `len` values uniform in `lo..hi`.
pub(crate) fn uniform(rng: &mut StdRng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// `||got - want|| / ||want||`.
pub(crate) fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - f64::from(w)).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&w| f64::from(w).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Asserts `got` matches `want` within `tol` relative L2, naming the case.
pub(crate) fn assert_close(case: &str, got: &[f32], want: &[f32], tol: f64) {
    assert!(got.iter().all(|v| v.is_finite()), "{case}: non-finite output");
    let err = rel_l2(got, want);
    assert!(err <= tol, "{case}: relative L2 error {err:.3e} > {tol:.0e}");
}

/// `cu_seqlens` for sequences of these lengths.
pub(crate) fn cu_of(lens: &[usize]) -> Vec<usize> {
    let mut cu = vec![0];
    for &l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    cu
}

/// `cu_seqlens` as the kernels take them (`int`).
pub(crate) fn cu_i32(cu: &[usize]) -> Vec<i32> {
    cu.iter().map(|&v| i32::try_from(v).unwrap()).collect()
}

/// Launches an emulated kernel, panicking on a launch error.
pub(crate) fn launch(name: &str, grid: [u32; 3], block: [u32; 3], shared_bytes: usize, args: &mut Args) {
    // SAFETY: each test builds `args` to match the kernel's parameter list in its .cu file, from
    // buffers sized for the geometry it passes, which outlive the call.
    unsafe { marc_kernels_verify::emulated::launch(name, grid, block, shared_bytes, args) }
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Appends what every dense GEMM kernel's parameters end with: the bias (or null), m, n, k and
/// the output.
pub(crate) fn gemm_tail<'a>(
    args: &'a mut Args,
    bias: Option<&[f32]>,
    (m, n, k): (usize, usize, usize),
    y: &mut [f32],
) -> &'a mut Args {
    match bias {
        Some(b) => args.input(b),
        None => args.null(),
    };
    args.int(m as i32).int(n as i32).int(k as i32).output(y)
}

/// Launches a dense GEMM kernel (kernels/cuda/include/gemm_tile.cuh's 64 x 64 tiles) on [m, n].
pub(crate) fn launch_gemm(kernel: &str, m: usize, n: usize, args: &mut Args) {
    launch(
        kernel,
        [dim(n.div_ceil(64)), dim(m.div_ceil(64)), 1],
        [128, 1, 1],
        0,
        args,
    );
}

/// Launches a grouped expert GEMM kernel over N columns and the 64-row tiles of `offsets`
/// (moe_routing.cu's padded permutation).
pub(crate) fn launch_grouped_gemm(kernel: &str, n: usize, offsets: &[i32], args: &mut Args) {
    let row_tiles = *offsets.last().expect("offsets has E + 1 entries") as usize / 64;
    launch(kernel, [dim(n.div_ceil(64)), dim(row_tiles), 1], [128, 1, 1], 0, args);
}

/// `n` as a launch dimension.
pub(crate) fn dim(n: usize) -> u32 {
    u32::try_from(n).unwrap()
}

/// `len` random bf16 values (as bits) and their exact f64 values.
pub(crate) fn bf16_values(rng: &mut StdRng, len: usize) -> (Vec<u16>, Vec<f64>) {
    let bits: Vec<u16> = uniform(rng, len, -2.0, 2.0)
        .into_iter()
        .map(|v| half::bf16::from_f32(v).to_bits())
        .collect();
    let exact = bits
        .iter()
        .map(|&b| f64::from(half::bf16::from_bits(b).to_f32()))
        .collect();
    (bits, exact)
}

/// `a [m, k] * w [n, k]^T (+ bias)` in f64, rounded to f32.
pub(crate) fn bf16_product(a: &[f64], w: &[f64], bias: Option<&[f32]>, m: usize, n: usize, k: usize) -> Vec<f32> {
    scaled_product(a, w, 1.0, bias, m, n, k)
}

/// `a [m, k] * w [n, k]^T * scale (+ bias)` in f64, rounded to f32.
pub(crate) fn scaled_product(
    a: &[f64],
    w: &[f64],
    scale: f64,
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| a[i * k + p] * w[j * k + p]).sum();
            c[i * n + j] = (dot * scale + bias.map_or(0.0, |b| f64::from(b[j]))) as f32;
        }
    }
    c
}

/// `x` rounded to bf16 (nearest even), as the GEMMs stage f32 activations: as f32 for the CPU
/// op, and exactly as f64 for a reference product.
pub(crate) fn bf16_rounded(x: &[f32]) -> (Vec<f32>, Vec<f64>) {
    let rounded: Vec<f32> = x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
    let exact = rounded.iter().map(|&v| f64::from(v)).collect();
    (rounded, exact)
}

/// Per expert, its routing entries (`t * top_k + slot`) in token order, padded with -1 to
/// `tile`, as moe_routing.cu's permutation lays them out: (offsets, sorted).
pub(crate) fn permutation_reference(experts: &[i32], num_experts: usize, tile: usize) -> (Vec<i32>, Vec<i32>) {
    let mut offsets = vec![0i32];
    let mut sorted = Vec::new();
    for e in 0..num_experts {
        let mine: Vec<i32> = (0..experts.len())
            .filter(|&i| experts[i] == e as i32)
            .map(|i| i as i32)
            .collect();
        let padded = mine.len().div_ceil(tile) * tile;
        sorted.extend(&mine);
        sorted.resize(sorted.len() + padded - mine.len(), -1);
        offsets.push(sorted.len() as i32);
    }
    (offsets, sorted)
}

/// (m, n, k, bias) for the GEMMs that take any K: a single element; M = 1 with K not a multiple of
/// 16; ragged M, N and K against the 64 x 64 x 32 tile, several tiles each way; one exact tile.
pub(crate) const RAGGED_GEMM_SHAPES: [(usize, usize, usize, bool); 5] = [
    (1, 1, 1, false),
    (1, 70, 40, true),
    (5, 24, 80, false),
    (64, 64, 32, false),
    (70, 72, 100, true),
];

/// The routing the grouped GEMM tests share: 5 experts (2 and 4 get no token), 9 tokens, top-2,
/// each expert's entries padded to the 64-row tile as moe_routing.cu lays them out.
pub(crate) struct Routed {
    pub num_experts: usize,
    pub tokens: usize,
    pub top_k: usize,
    /// The expert of each routing entry `t * top_k + slot`.
    pub experts: Vec<i32>,
    pub offsets: Vec<i32>,
    pub sorted: Vec<i32>,
}

impl Routed {
    pub(crate) fn new() -> Self {
        let (num_experts, tokens, top_k) = (5, 9, 2);
        let experts: Vec<i32> = (0..tokens * top_k).map(|i| [3, 0, 3, 1][i % 4]).collect();
        let (offsets, sorted) = permutation_reference(&experts, num_experts, 64);
        Self {
            num_experts,
            tokens,
            top_k,
            experts,
            offsets,
            sorted,
        }
    }

    /// The grouped GEMMs' leading arguments: the activations `a`, then `sorted`, `offsets`,
    /// the expert count and top_k.
    pub(crate) fn push_routing(&self, args: &mut Args, a: &[f32]) {
        args.input(a)
            .input(&self.sorted)
            .input(&self.offsets)
            .int(self.num_experts as i32)
            .int(self.top_k as i32);
    }

    /// The expected output, `[tokens * top_k, n]`: `row(expert, token)` for each entry in order.
    pub(crate) fn per_entry(&self, row: impl Fn(usize, usize) -> Vec<f32>) -> Vec<f32> {
        self.experts
            .iter()
            .enumerate()
            .flat_map(|(i, &e)| row(e as usize, i / self.top_k))
            .collect()
    }
}

/// The CPU expert's output for one token row `x`: its Linear at `precision`, then relu2 when
/// `relu2` (the up projection, as Mlp::forward).
pub(crate) fn cpu_expert(
    x: &[f32],
    weights: &marc_kernels::PackedMatrix,
    precision: marc_kernels::MatmulPrecision,
    relu2: bool,
) -> Vec<f32> {
    let mut row = vec![0.0f32; weights.rows()];
    marc_kernels::matmul_with_precision(x, 1, weights, None, &mut row, precision).unwrap();
    if relu2 {
        marc_kernels::ops::activation::relu2_in_place(&mut row);
    }
    row
}

/// NVFP4 data as a checkpoint stores it, and its exact values.
pub(crate) struct Nvfp4Data {
    /// `[rows, k / 2]`, element `2i` in the low nibble.
    pub packed: Vec<u8>,
    /// E4M3 `[rows, k / 16]`.
    pub scales: Vec<u8>,
    /// `e2m1 * block_scale` per element, `[rows, k]` (exact; without any tensor scale).
    pub values: Vec<f64>,
}

impl Nvfp4Data {
    /// Decodes packed data with the CPU codecs (`marc_kernels::quant`).
    pub(crate) fn new(packed: Vec<u8>, scales: Vec<u8>) -> Self {
        // The kernels read the nibbles as 32-bit words (rows are K / 2 bytes, a multiple of 8).
        assert_eq!(packed.as_ptr() as usize % 4, 0, "NVFP4 data must be 4-byte aligned");
        let values = packed
            .iter()
            .enumerate()
            .flat_map(|(i, &byte)| {
                let scale = marc_kernels::e4m3_to_f32(scales[i / 8]);
                [byte & 0xF, byte >> 4].map(|code| f64::from(marc_kernels::e2m1_to_f32(code) * scale))
            })
            .collect();
        Self { packed, scales, values }
    }

    /// `rows x k` random weights: every nibble, block scales normal E4M3 codes from 2^-6 to
    /// 2^6, so blocks differ in magnitude.
    pub(crate) fn random(rng: &mut StdRng, rows: usize, k: usize) -> Self {
        let packed = (0..rows * k / 2).map(|_| rng.random::<u8>()).collect();
        let scales = (0..rows * k / 16).map(|_| rng.random_range(0x08u8..0x68)).collect();
        Self::new(packed, scales)
    }
}
