//! AVX-512F micro-kernels: up to 12 rows x 32 columns (24 zmm accumulators) per call.
//!
//! Per k-step a kernel loads each 16-lane weight vector once (widened exactly: bf16 by
//! zero-extension and a 16-bit shift, f16 by `vcvtph2ps`, FP8 E4M3 through f16), broadcasts each row's x value from
//! the packed tile, and issues one FMA per (row, vector). Each accumulator lane is one output
//! element's FMA chain; on this layout a 12 x 32 tile runs at ~88% of the FMA peak from L1.

use std::arch::x86_64::*;

use super::cpu::{E4m3, Isa, PREFETCH_BYTES, Tile, Weight};
use super::nvfp4::{SCALES_AT, chunk_at};
use super::packed::{NR, NVFP4_RECORD};
use crate::dtype::WeightDType;
use crate::quant::e2m1::E2M1_VALUES;
use crate::quant::nvfp4::NVFP4_BLOCK;

/// Lanes per vector.
const L: usize = 16;

/// The AVX-512F code path.
pub(super) struct Avx512;

impl Isa for Avx512 {
    const MR: usize = 12;

    unsafe fn tile<W: Weight>(rows: usize, panels: usize, t: &Tile<W>) {
        // SAFETY: forwarded from the caller (ISA available, pointers valid).
        unsafe { tile::<W>(rows, panels, t) }
    }

    unsafe fn widen<W: Weight>(src: *const W, len: usize, dst: *mut f32) {
        // SAFETY: forwarded from the caller.
        unsafe { widen::<W>(src, len, dst) }
    }

    unsafe fn tile_nvfp4(rows: usize, panels: usize, t: &Tile<u8>) {
        // SAFETY: forwarded from the caller (ISA available, pointers valid); the kernels read
        // `t.w` as the bytes of block records (the element type is a formality).
        unsafe { tile_nvfp4(rows, panels, t) }
    }
}

/// The 16 E2M1 values, a lookup table for `vpermps` (which reads the low 4 bits of each index
/// lane).
#[target_feature(enable = "avx512f")]
#[inline]
fn e2m1_table() -> __m512 {
    // SAFETY: the table has 16 f32.
    unsafe { _mm512_loadu_ps(E2M1_VALUES.as_ptr()) }
}

/// The 64 bytes at `p` (`j` bytes into a chunk of a block record, see `nvfp4::nibble_byte`)
/// decoded to the E2M1 values of k-step pair `j` of the chunk's 16 columns: (low nibbles of
/// each lane's lowest byte, high nibbles). `vpermps` reads only the low 4 bits of each index
/// lane, so the rest of the lane, the next pairs' bytes, needs no masking.
///
/// # Safety
/// 64 bytes are readable at `p`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn decode_pair_e2m1(p: *const u8, table: __m512) -> (__m512, __m512) {
    // SAFETY: per the caller.
    let idx = unsafe { _mm512_loadu_si512(p.cast()) };
    let even = _mm512_permutexvar_ps(idx, table);
    let odd = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(idx), table);
    (even, odd)
}

/// Loads 16 weights and widens them to f32.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load<W: Weight>(p: *const W) -> __m512 {
    // SAFETY: the caller guarantees 16 readable elements at p; loads are unaligned-safe.
    unsafe {
        match W::DTYPE {
            WeightDType::F32 => _mm512_loadu_ps(p.cast()),
            WeightDType::BF16 => {
                let h = _mm256_loadu_si256(p.cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
            WeightDType::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
            WeightDType::F8E4M3 => {
                // Sign-extended to 16 bits and shifted left by 7, an E4M3 byte `s eeee mmm`
                // becomes the f16 `s s eeee mmm 0000000`; clearing bit 14 leaves the f16 of
                // value * 2^-8 (subnormals included), which widens and rescales exactly.
                let h = _mm256_slli_epi16::<7>(_mm256_cvtepi8_epi16(_mm_loadu_si128(p.cast())));
                let h = _mm256_and_si256(h, _mm256_set1_epi16(0xBFFFu16 as i16));
                _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0))
            }
            WeightDType::NVFP4 => unreachable!("NVFP4 panels are decoded before the kernels"),
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn widen<W: Weight>(src: *const W, len: usize, dst: *mut f32) {
    for i in (0..len).step_by(L) {
        // SAFETY: i + 16 <= len (len is a multiple of 32); both buffers hold len elements.
        unsafe { _mm512_storeu_ps(dst.add(i), load(src.add(i))) };
    }
}

/// Splits a call into kernels the register file holds: 2 zmm per row per panel, at most 24
/// accumulators, preferring more panels for few rows (more independent FMA chains, which is
/// what hides the 4-cycle FMA latency when m is 1..3).
/// NVFP4 tiles: each row needs two accumulators per vector (the block's dot product and the
/// running sum), so the register tile is half as wide as for float weights: 1 row x 4 panels,
/// up to 3 rows x 2 panels, up to 6 rows x 1 panel, up to 12 rows x half a panel.
#[target_feature(enable = "avx512f")]
unsafe fn tile_nvfp4(rows: usize, panels: usize, t: &Tile<u8>) {
    for_each_nvfp4_call(rows, panels, t, |t, p| {
        // SAFETY: forwarded from the caller to every kernel; a half-panel kernel reads its
        // half's chunks and scales of panel 0 of its view, and writes its 16 columns.
        unsafe {
            match (rows, p) {
                (1, 4) => kernel_nvfp4::<1, 8>(t, 0),
                (1, 2) => kernel_nvfp4::<1, 4>(t, 0),
                (2, 2) => kernel_nvfp4::<2, 4>(t, 0),
                (3, 2) => kernel_nvfp4::<3, 4>(t, 0),
                (1, _) => kernel_nvfp4::<1, 2>(t, 0),
                (2, _) => kernel_nvfp4::<2, 2>(t, 0),
                (3, _) => kernel_nvfp4::<3, 2>(t, 0),
                (4, _) => kernel_nvfp4::<4, 2>(t, 0),
                (5, _) => kernel_nvfp4::<5, 2>(t, 0),
                (6, _) => kernel_nvfp4::<6, 2>(t, 0),
                _ => {
                    for half in 0..2 {
                        let h = t.columns_from_view(half * L);
                        match rows {
                            7 => kernel_nvfp4::<7, 1>(&h, half),
                            8 => kernel_nvfp4::<8, 1>(&h, half),
                            9 => kernel_nvfp4::<9, 1>(&h, half),
                            10 => kernel_nvfp4::<10, 1>(&h, half),
                            11 => kernel_nvfp4::<11, 1>(&h, half),
                            12 => kernel_nvfp4::<12, 1>(&h, half),
                            _ => unreachable!("AVX-512 tiles have at most 12 rows, got {rows}"),
                        }
                    }
                }
            }
        }
    });
}

/// Walks `panels` NVFP4 panels from `t` in the kernel calls [`nvfp4_panels_at_once`] chooses for
/// `rows` rows: `call(view, p)` runs the kernel for the `p` panels at `view`. The W4A16 and the
/// W4A4 VNNI tiles share it.
pub(super) fn for_each_nvfp4_call(rows: usize, panels: usize, t: &Tile<u8>, mut call: impl FnMut(&Tile<u8>, usize)) {
    let mut t = *t;
    let mut left = panels;
    while left > 0 {
        let p = nvfp4_panels_at_once(rows, left);
        call(&t, p);
        left -= p;
        t.advance(p);
    }
}

/// Panels one NVFP4 kernel call covers for `rows` rows with `left` panels to go (see
/// [`tile_nvfp4`]; the W4A4 VNNI tiles use the same shapes, through [`for_each_nvfp4_call`]).
fn nvfp4_panels_at_once(rows: usize, left: usize) -> usize {
    match rows {
        1 if left >= 4 => 4,
        1..=3 if left >= 2 => 2,
        _ => 1,
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn tile<W: Weight>(rows: usize, panels: usize, t: &Tile<W>) {
    let mut t = *t;
    let mut left = panels;
    while left > 0 {
        let max_panels = match rows {
            1..=3 => 4,
            4..=6 => 2,
            _ => 1,
        };
        let p = if left >= 4 && max_panels >= 4 {
            4
        } else if left >= 2 && max_panels >= 2 {
            2
        } else {
            1
        };
        // SAFETY: forwarded; (rows, p) is one of the instantiated shapes below.
        unsafe { by_shape::<W>(rows, p, &t) };
        left -= p;
        t.advance(p);
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn by_shape<W: Weight>(rows: usize, panels: usize, t: &Tile<W>) {
    macro_rules! shapes {
        ($( ($r:literal, $p:literal) ),* $(,)?) => {
            match (rows, panels) {
                // SAFETY: forwarded from the caller.
                $( ($r, $p) => unsafe { kernel::<W, $r, { 2 * $p }>(t) }, )*
                _ => unreachable!("no kernel for {rows} rows x {panels} panels"),
            }
        };
    }
    shapes!(
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 1),
        (6, 1),
        (7, 1),
        (8, 1),
        (9, 1),
        (10, 1),
        (11, 1),
        (12, 1),
        (1, 2),
        (2, 2),
        (3, 2),
        (4, 2),
        (5, 2),
        (6, 2),
        (1, 4),
        (2, 4),
        (3, 4),
    )
}

/// Mask of the lanes of vector `v` that fall inside the first `cols` columns.
#[inline]
fn lane_mask(cols: usize, v: usize) -> __mmask16 {
    let valid = cols.saturating_sub(v * L).min(L);
    ((1u32 << valid) - 1) as __mmask16
}

/// `R` rows x `V` vectors of 16 columns (`V / 2` panels), all `kc` k-steps, then the
/// epilogue (`* scale`, `+ bias`, masked stores).
#[target_feature(enable = "avx512f")]
unsafe fn kernel<W: Weight, const R: usize, const V: usize>(t: &Tile<W>) {
    // SAFETY: forwarded from the caller.
    unsafe { store(&chains::<W, R, V>(t), t) }
}

/// [`kernel`] on NVFP4 block records: `V` vectors of 16 columns from half `first_half` of the
/// view's first panel on.
#[target_feature(enable = "avx512f")]
unsafe fn kernel_nvfp4<const R: usize, const V: usize>(t: &Tile<u8>, first_half: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { store(&chains_nvfp4::<R, V>(t, first_half), t) }
}

/// The epilogue of a tile: `acc * t.scale (+ bias)` into the first `t.cols` columns of y.
///
/// # Safety
/// As for `Isa::tile`: y holds rows `0..R` (`t.ldy` apart) and bias the columns written.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn store<W, const R: usize, const V: usize>(acc: &[[__m512; V]; R], t: &Tile<W>) {
    let scale = _mm512_set1_ps(t.scale);
    for v in 0..V {
        let mask = lane_mask(t.cols, v);
        if mask == 0 {
            continue;
        }
        // SAFETY: y and bias are accessed only in the lanes `mask` enables (masked-off lanes
        // are never touched, so pointers past the end of y are fine).
        unsafe {
            let b = if t.bias.is_null() {
                None
            } else {
                Some(_mm512_maskz_loadu_ps(mask, t.bias.wrapping_add(v * L)))
            };
            for (r, acc) in acc.iter().enumerate() {
                let scaled = _mm512_mul_ps(acc[v], scale);
                let out = match b {
                    Some(b) => _mm512_add_ps(scaled, b),
                    None => scaled,
                };
                _mm512_mask_storeu_ps(t.y.wrapping_add(r * t.ldy + v * L), mask, out);
            }
        }
    }
}

/// The FMA chains of an `R` x `V` tile over float panels.
// Index loops over the register tile read more plainly than zipped iterators here.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn chains<W: Weight, const R: usize, const V: usize>(t: &Tile<W>) -> [[__m512; V]; R] {
    let wp = vector_ptrs::<W, V>(t.w, t.panel_stride);
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    // SAFETY: per the `Tile` contract: x holds kc * x_stride values, and each weight vector
    // pointer is followed by kc lines of NR elements.
    unsafe {
        let mut x = t.x;
        let ahead = PREFETCH_BYTES / size_of::<W>();
        for kk in 0..t.kc {
            let mut wv = [_mm512_setzero_ps(); V];
            for v in 0..V {
                wv[v] = load(wp[v].add(kk * NR));
                // One prefetch per cache line of the weight stream (a 16-lane vector is a
                // whole line of f32, half a line of bf16 / f16).
                if (v * L * size_of::<W>()).is_multiple_of(64) {
                    _mm_prefetch::<_MM_HINT_T0>(wp[v].wrapping_add(kk * NR + ahead).cast());
                }
            }
            for r in 0..R {
                let xb = _mm512_set1_ps(*x.add(r));
                for v in 0..V {
                    acc[r][v] = _mm512_fmadd_ps(xb, wv[v], acc[r][v]);
                }
            }
            x = x.add(t.x_stride);
        }
    }
    acc
}

/// The pointers of a tile's `V` 16-column vectors in consecutive panels from `w`.
#[inline(always)]
fn vector_ptrs<T, const V: usize>(w: *const T, panel_stride: usize) -> [*const T; V] {
    std::array::from_fn(|v| w.wrapping_add((v / 2) * panel_stride + (v % 2) * L))
}

/// Where the `V` 16-column vectors of an NVFP4 tile sit: vector `v` is half `half[v]` of the
/// panel whose block records start at `panel[v]`.
pub(super) struct Nvfp4Vectors<const V: usize> {
    pub(super) panel: [*const u8; V],
    pub(super) half: [usize; V],
}

impl<const V: usize> Nvfp4Vectors<V> {
    /// The vectors of a tile whose first vector is half `first_half` of the panel at `w`, the
    /// panels `panel_stride` bytes apart.
    #[inline(always)]
    pub(super) fn new(w: *const u8, panel_stride: usize, first_half: usize) -> Self {
        let at = |v: usize| ((v + first_half) / 2, (v + first_half) % 2);
        Nvfp4Vectors {
            panel: std::array::from_fn(|v| w.wrapping_add(at(v).0 * panel_stride)),
            half: std::array::from_fn(|v| at(v).1),
        }
    }

    /// Prefetches into L1, [`PREFETCH_BYTES`] ahead of the record `record` bytes into each panel.
    /// (A second, L2 prefetch further ahead was measured to cost 15% of the streaming rate at
    /// batch 1: it competes with the L1 one for the same miss slots.)
    #[inline(always)]
    pub(super) fn prefetch(&self, record: usize) {
        self.prefetch_lines(record + PREFETCH_BYTES, NVFP4_RECORD);
    }

    /// Prefetches into L1 the first [`PREFETCH_BYTES`] of each panel, which the prefetches of
    /// [`Self::prefetch`] (that far ahead of the record in use) never cover.
    #[inline(always)]
    pub(super) fn prefetch_start(&self) {
        self.prefetch_lines(0, PREFETCH_BYTES);
    }

    /// Prefetches into L1 `bytes` bytes from `offset` into each panel, once per panel (two
    /// vectors of one panel share its records).
    #[inline(always)]
    fn prefetch_lines(&self, offset: usize, bytes: usize) {
        for v in 0..V {
            if v == 0 || self.half[v] == 0 {
                for line in (0..bytes).step_by(64) {
                    let at = self.panel[v].wrapping_add(offset + line);
                    // SAFETY: a prefetch may point anywhere; it never faults.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(at.cast()) };
                }
            }
        }
    }

    /// The 16 E4M3 block scales of vector `v` in the record at byte `record`, as f32.
    ///
    /// # Safety
    /// The record exists in the vector's panel.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn scales(&self, v: usize, record: usize) -> __m512 {
        // SAFETY: per the caller; the scale line holds NR bytes, 16 per half.
        unsafe { load(self.panel[v].add(record + SCALES_AT + self.half[v] * L).cast::<E4m3>()) }
    }
}

/// The E2M1 dot products of one NVFP4 block (at byte `record` of each vector's panel) with
/// `R` rows of x (`x` at the block's first k-step, rows `x_stride` apart per k-step): one FMA
/// chain per (row, vector) in k order.
///
/// # Safety
/// x holds 16 k-steps of `x_stride` values; each vector's panel holds the record.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block_dots<const R: usize, const V: usize>(
    vectors: &Nvfp4Vectors<V>,
    record: usize,
    x: *const f32,
    x_stride: usize,
) -> [[__m512; V]; R] {
    let table = e2m1_table();
    let mut dot = [[_mm512_setzero_ps(); V]; R];
    // SAFETY: per the caller; prefetches may point anywhere.
    unsafe {
        vectors.prefetch(record);
        // Each vector's first chunk in this record; `chunk_at` is linear in the quad and the
        // half, so pair `p`'s bytes sit at a constant offset from it.
        let first: [*const u8; V] =
            std::array::from_fn(|v| vectors.panel[v].add(record + chunk_at(0, vectors.half[v])));
        // The eight k-step pairs written out, not looped: with constant offsets every load
        // addresses its bytes directly, where a loop spent about one integer op per vector op
        // computing them (on the ports the permutes and FMAs use).
        macro_rules! pair {
            ($pair:literal) => {{
                let (xe, xo) = (x.add(2 * $pair * x_stride), x.add((2 * $pair + 1) * x_stride));
                for v in 0..V {
                    let (even, odd) = decode_pair_e2m1(first[v].add(chunk_at($pair / 4, 0) + $pair % 4), table);
                    for r in 0..R {
                        dot[r][v] = _mm512_fmadd_ps(_mm512_set1_ps(*xe.add(r)), even, dot[r][v]);
                        dot[r][v] = _mm512_fmadd_ps(_mm512_set1_ps(*xo.add(r)), odd, dot[r][v]);
                    }
                }
            }};
        }
        const _: () = assert!(NVFP4_BLOCK / 2 == 8, "pair! is written out for 8 pairs");
        const _: () = assert!(chunk_at(1, 1) == chunk_at(1, 0) + chunk_at(0, 1), "chunk_at is linear");
        pair!(0);
        pair!(1);
        pair!(2);
        pair!(3);
        pair!(4);
        pair!(5);
        pair!(6);
        pair!(7);
    }
    dot
}

/// The chains of an `R` x `V` tile over NVFP4 block records (`t.w`, panels `t.panel_stride`
/// bytes apart, from half `first_half` of the first), in the W4A16 order of `nvfp4.rs`: per
/// block, the FMA chain of x times the E2M1 values ([`block_dots`]), then
/// `acc = fma(dot, block_scale, acc)`.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn chains_nvfp4<const R: usize, const V: usize>(t: &Tile<u8>, first_half: usize) -> [[__m512; V]; R] {
    let vectors = Nvfp4Vectors::<V>::new(t.w, t.panel_stride, first_half);
    vectors.prefetch_start();
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    // SAFETY: per the `Tile` contract: x holds kc * x_stride values, and each panel holds
    // kc / 16 block records.
    unsafe {
        for b in 0..t.kc / NVFP4_BLOCK {
            let record = b * NVFP4_RECORD;
            let dot = block_dots::<R, V>(&vectors, record, t.x.add(b * NVFP4_BLOCK * t.x_stride), t.x_stride);
            for v in 0..V {
                let s = vectors.scales(v, record);
                for r in 0..R {
                    acc[r][v] = _mm512_fmadd_ps(dot[r][v], s, acc[r][v]);
                }
            }
        }
    }
    acc
}
