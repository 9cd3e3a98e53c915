//! Intel AMX path for bf16 weights: `tdpbf16ps` on 16 x 16 f32 accumulator tiles.
//!
//! **Exact mode** (the default): each f32 activation is split exactly into three bf16 parts,
//! `x = hi + mid + lo` (`hi` = x truncated to bf16, `mid` = the remainder truncated, `lo` = what
//! is left, exactly a bf16 for normal values). Weights are exact bf16, so every product
//! `part * w` is exact in f32 and AMX accumulates them in f32: an f32-accumulated GEMM of the
//! exact inputs (error at the level of an f32 dot product, not of bf16).
//! **Bf16-activation mode** (opt-in): x rounded to bf16 (nearest-even), one part, 3x fewer
//! tile multiplies.
//!
//! Layouts (all tiles 64 bytes wide; B tiles 16 rows):
//! - weights (`packed.rs`, [`Layout::AmxBf16`]): per 32-column panel, per 32-wide k block, two B
//!   tiles (columns 0..16 and 16..32), each in VNNI order: tile row `r` holds, for each of the 16
//!   columns `c`, `w[c, 2r]` then `w[c, 2r + 1]`. k is zero-padded to a multiple of 32.
//! - x (packed per call here): per 16-row tile, per k block, the parts' A tiles (`hi`, `mid`,
//!   `lo`), each 16 rows x 32 bf16, k past `k` zero. The last row tile has only the rows left
//!   (`m mod 16`, when not 0), and its A and accumulator tiles are configured that high, so that
//!   small m costs loads and multiplies for its own rows only. A row's result in `tdpbf16ps`
//!   depends on its own A row and B alone, so the tile height changes no bit of it (tested
//!   against 16-row tiles).
//!
//! Kernel: 2 row tiles x 2 column tiles = 4 accumulators (tmm0-3), A in tmm4-5, B in tmm6-7;
//! the last odd row tile runs the same sequence on tmm0-1 only. Every accumulator goes through
//! the same op sequence, whatever the kernel shape, row position, `m` or thread count:
//! `for each k block: for part in hi, mid, lo: acc += A_part · B`, from a zeroed tile, then
//! `+ bias` in f32. That is what keeps rows bitwise batch- and thread-invariant.
//!
//! Tile state: the XTILEDATA permission is requested once per process (`arch_prctl`); each task
//! loads the tile configuration (`ldtilecfg`) on its thread before its first tile op and
//! releases the tiles (`tilerelease`) when done, so no thread keeps AMX state between calls.
//! No Rust code uses tmm registers, so the tiles are this module's alone.
//!
//! [`Layout::AmxBf16`]: super::packed::Layout::AmxBf16

use std::arch::asm;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::MatmulPrecision;
use super::cpu::{PooledBuf, SharedMut};
use super::packed::{KB, NR, PackedMatrix};

/// Rows of an A / accumulator tile.
const TR: usize = 16;
/// bf16 elements in one A or B tile.
const TILE: usize = TR * KB;
/// Bytes of weights kept hot in L2 by one task while the row tiles stream past.
const GROUP_BYTES: usize = 1 << 20;
/// Most panels in one group.
const GROUP_MAX_PANELS: usize = 8;
/// Fewest panels in a group when x is a single row unit.
const GROUP_PANELS_ONE_UNIT: usize = 4;
/// Tasks per pool thread when x is a single row unit.
const TASKS_PER_THREAD_ONE_UNIT: usize = 2;
/// How far ahead of the B tiles in use the kernel prefetches the weight stream. Tile loads are
/// not followed by the hardware prefetchers the way vector loads are: without it, a GEMV (x a
/// single row tile) read bf16 weights at about half the rate the f32 kernel reads f32 ones.
const AMX_PREFETCH_BYTES: usize = 4096;
/// Tasks per pool thread to aim for.
const TASKS_PER_THREAD: usize = 4;
/// Row tiles from which x is packed in parallel.
const PARALLEL_PACK_MIN_TILES: usize = 8;

/// Whether this CPU and OS run the AMX path: AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24
/// and 22), AVX-512F/BW for packing x, and the kernel granting this process XTILEDATA.
pub(super) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        cpu_has_amx()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && request_permission()
    })
}

fn cpu_has_amx() -> bool {
    use std::arch::x86_64::__cpuid_count;
    let max_leaf = __cpuid_count(0, 0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Asks Linux to let this process use the AMX tile data (once per process; idempotent).
#[cfg(target_os = "linux")]
fn request_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, feature) takes two integers, touches no memory of
    // ours and only widens the set of xsave features this process may use.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_permission() -> bool {
    false
}

/// A tile configuration (palette 1): B tiles (tmm6-7) 16 rows, the accumulators and A tiles of
/// the first row tile (tmm0-1, tmm4) `r0` rows, those of the second (tmm2-3, tmm5) `r1` rows;
/// every tile 64 bytes wide. Rows past `m` are never loaded, multiplied or stored: a row's result
/// in `tdpbf16ps` depends only on its own A row and B, so the rows computed are bitwise the same
/// whatever the tile height.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(r0: usize, r1: usize) -> TileConfig {
        debug_assert!((1..=TR).contains(&r0) && (1..=TR).contains(&r1));
        let mut c = [0u8; 64];
        c[0] = 1;
        let rows = [r0, r0, r1, r1, r0, r1, TR, TR];
        for (i, &r) in rows.iter().enumerate() {
            c[16 + 2 * i] = 64; // colsb, little-endian u16
            c[48 + i] = r as u8;
        }
        TileConfig(c)
    }
}

/// Tiles configured on this thread for as long as it lives; released on drop. Not `Send`:
/// the configuration belongs to the thread that loaded it.
struct Tiles(std::marker::PhantomData<*const ()>);

impl Tiles {
    /// # Safety
    /// [`available`] returned true.
    unsafe fn configure(config: &TileConfig) -> Tiles {
        // SAFETY: AMX is available and permitted (caller).
        unsafe { Self::load(config) };
        Tiles(std::marker::PhantomData)
    }

    /// Loads another configuration (zeroing all tiles).
    fn reconfigure(&mut self, config: &TileConfig) {
        // SAFETY: a `Tiles` exists only once AMX was found available (see `configure`).
        unsafe { Self::load(config) };
    }

    /// # Safety
    /// AMX is available and permitted.
    unsafe fn load(config: &TileConfig) {
        // SAFETY: AMX is available and permitted (caller); `config` is a valid 64-byte palette-1
        // configuration (`TileConfig::new`), 64-byte aligned, read only.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config, options(nostack, readonly, preserves_flags)) };
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: tiles were configured by `configure` on this thread (a `Tiles` exists only
        // after it succeeded and is not Send: it lives in one task's frame).
        unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
    }
}

/// Loads a tile from `p`, rows 64 bytes apart.
macro_rules! load {
    ($t:literal, $p:expr) => {
        asm!(
            concat!("tileloadd ", $t, ", [{p} + {s}*1]"),
            p = in(reg) $p,
            s = in(reg) 64usize,
            options(nostack, readonly, preserves_flags)
        )
    };
}

/// Stores a tile to `p`, rows `NR` f32 apart.
macro_rules! store {
    ($t:literal, $p:expr) => {
        asm!(
            concat!("tilestored [{p} + {s}*1], ", $t),
            p = in(reg) $p,
            s = in(reg) NR * 4,
            options(nostack, preserves_flags)
        )
    };
}

/// `acc += a · b` on tiles.
macro_rules! dp {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(
            concat!("tdpbf16ps ", $c, ", ", $a, ", ", $b),
            options(nostack, nomem, preserves_flags)
        )
    };
}

/// `R` (1 or 2) row tiles x one panel (2 column tiles), `P` parts, all `kblocks` k blocks.
///
/// Writes the results of the configured rows to `out` (row tile `i` at row `16 i`, row stride
/// `NR`).
///
/// # Safety
/// Tiles are configured on this thread with the heights of these row tiles. `a[i]` points at the
/// packed x of row tile `i`, `kblocks * P` A tiles of `at[i]` bf16 each (the tile's rows times
/// 32); `b` at a panel of `kblocks` pairs of B tiles; `out` is valid for `R * 16 * NR` f32.
#[inline]
unsafe fn kernel<const R: usize, const P: usize>(
    a: [*const u16; 2],
    at: [usize; 2],
    b: *const u16,
    kblocks: usize,
    out: *mut f32,
) {
    // SAFETY: every load reads one configured tile inside the buffers described above; the
    // stores write at most R * 16 rows of 128 bytes into `out`.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            options(nostack, nomem, preserves_flags)
        );
        if R == 2 {
            asm!(
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem, preserves_flags)
            );
        }
        let ([mut a0, mut a1], mut bp) = (a, b);
        for _ in 0..kblocks {
            // The next blocks' B tiles (a prefetch never faults, even past the panel's end).
            for line in (0..2 * TILE * 2).step_by(64) {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    bp.cast::<u8>().wrapping_add(line + AMX_PREFETCH_BYTES).cast(),
                );
            }
            load!("tmm6", bp);
            load!("tmm7", bp.add(TILE));
            for part in 0..P {
                load!("tmm4", a0.add(part * at[0]));
                if R == 2 {
                    load!("tmm5", a1.add(part * at[1]));
                }
                // B0 first, so that tmm4 is free (for the next part) two ops before the end.
                dp!("tmm0", "tmm4", "tmm6");
                if R == 2 {
                    dp!("tmm2", "tmm5", "tmm6");
                }
                dp!("tmm1", "tmm4", "tmm7");
                if R == 2 {
                    dp!("tmm3", "tmm5", "tmm7");
                }
            }
            a0 = a0.add(P * at[0]);
            if R == 2 {
                a1 = a1.add(P * at[1]);
            }
            bp = bp.add(2 * TILE);
        }
        store!("tmm0", out);
        store!("tmm1", out.add(TR));
        if R == 2 {
            store!("tmm2", out.add(TR * NR));
            store!("tmm3", out.add(TR * NR + TR));
        }
    }
}

/// bf16 parts per x value for a precision.
fn parts(precision: MatmulPrecision) -> usize {
    match precision {
        MatmulPrecision::Exact | MatmulPrecision::Nvfp4Activations => 3,
        MatmulPrecision::Bf16Activations => 1,
    }
}

/// Splits 32 f32 into `P` bf16 parts (3: exact hi/mid/lo by truncation; 1: nearest-even).
#[inline(always)]
fn split<const P: usize>(v: &[f32; KB], out: &mut [[u16; KB]; P]) {
    if P == 1 {
        for (o, &x) in out[0].iter_mut().zip(v) {
            let b = x.to_bits();
            *o = if x.is_nan() {
                ((b >> 16) | 0x40) as u16
            } else {
                (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16
            };
        }
        return;
    }
    const HI: u32 = 0xFFFF_0000;
    for c in 0..KB {
        let x = v[c];
        let hi = f32::from_bits(x.to_bits() & HI);
        let r1 = x - hi; // exact: the low 16 significand bits of x
        let mid = f32::from_bits(r1.to_bits() & HI);
        let lo = r1 - mid; // exact, at most 8 significant bits: a bf16
        out[0][c] = (hi.to_bits() >> 16) as u16;
        out[1][c] = (mid.to_bits() >> 16) as u16;
        out[2][c] = (lo.to_bits() >> 16) as u16;
    }
}

/// Packs rows `r0..r0 + rows` of x into one row tile of `height` rows (`rows <= height <= 16`,
/// rows past `rows` zero): `kblocks * P` A tiles of `height * 32` bf16.
///
/// # Safety
/// AVX-512F/BW are available (for the vectorised split); `dst` holds `kblocks * P * height * 32`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_tile<const P: usize>(x: &[f32], k: usize, r0: usize, rows: usize, height: usize, dst: &mut [u16]) {
    let kblocks = k.div_ceil(KB);
    let at = height * KB;
    for kb in 0..kblocks {
        let (k0, kw) = (kb * KB, KB.min(k - kb * KB));
        let block = &mut dst[kb * P * at..(kb + 1) * P * at];
        for r in 0..height {
            let mut v = [0.0f32; KB];
            if r < rows {
                let row = (r0 + r) * k;
                v[..kw].copy_from_slice(&x[row + k0..row + k0 + kw]);
            }
            let mut out = [[0u16; KB]; P];
            split::<P>(&v, &mut out);
            for (part, o) in out.iter().enumerate() {
                block[part * at + r * KB..part * at + (r + 1) * KB].copy_from_slice(o);
            }
        }
    }
}

fn pack_tile_dyn(p: usize, x: &[f32], k: usize, r0: usize, rows: usize, height: usize, dst: &mut [u16]) {
    // SAFETY: `available` (checked before any AMX run) includes AVX-512F/BW; dst is one row
    // tile's worth (sliced by the caller).
    unsafe {
        if p == 3 {
            pack_tile::<3>(x, k, r0, rows, height, dst)
        } else {
            pack_tile::<1>(x, k, r0, rows, height, dst)
        }
    }
}

/// `y = x · wᵀ (+ bias)` with AMX; `w` is in the AMX layout, arguments validated, `m > 0`.
pub(super) fn run(
    precision: MatmulPrecision,
    x: &[f32],
    m: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    run_with(precision, x, m, w, bias, y, false);
}

/// [`run`] with every row tile 16 rows high (rows past `m` zero): the reference the short tiles
/// are compared with bitwise in the tests.
#[cfg(test)]
pub(super) fn run_full_tiles(
    precision: MatmulPrecision,
    x: &[f32],
    m: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    run_with(precision, x, m, w, bias, y, true);
}

fn run_with(
    precision: MatmulPrecision,
    x: &[f32],
    m: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
    full_tiles: bool,
) {
    assert!(available(), "AMX is not available");
    let (n, k) = (w.rows(), w.cols());
    let p = parts(precision);
    let kblocks = k.div_ceil(KB);
    let tiles = m.div_ceil(TR);
    // The last row tile is only as high as the rows it holds (unless `full_tiles`).
    let last_height = if full_tiles { TR } else { m - (tiles - 1) * TR };
    let tile_len = kblocks * p * TILE; // bf16 per packed full row tile (a multiple of 32)
    let total = (tiles - 1) * tile_len + kblocks * p * last_height * KB;

    let mut buf = PooledBuf::take(total / 2);
    let f32s = buf.slice(total / 2);
    // SAFETY: the buffer is 64-byte aligned plain f32 storage of total / 2 values, reinterpreted
    // as twice as many u16 (no padding, weaker alignment).
    let xa: &mut [u16] = unsafe { std::slice::from_raw_parts_mut(f32s.as_mut_ptr().cast(), total) };
    let height = |t: usize| if t + 1 == tiles { last_height } else { TR };
    let pack = |t: usize, dst: &mut [u16]| pack_tile_dyn(p, x, k, t * TR, TR.min(m - t * TR), height(t), dst);
    if tiles >= PARALLEL_PACK_MIN_TILES && rayon::current_num_threads() > 1 {
        xa.par_chunks_mut(tile_len).enumerate().for_each(|(t, d)| pack(t, d));
    } else {
        xa.chunks_mut(tile_len).enumerate().for_each(|(t, d)| pack(t, d));
    }
    let xa: &[u16] = xa;

    // Units of two row tiles (32 rows), split over tasks with groups of panels.
    let units = tiles.div_ceil(2);
    let panels = w.panels();
    let threads = rayon::current_num_threads();
    let group = if units == 1 {
        // All the work is over n: a few long runs of panels per thread, so that each task
        // streams its own weights and amortises its tile configuration.
        panels
            .div_ceil(TASKS_PER_THREAD_ONE_UNIT * threads)
            .max(GROUP_PANELS_ONE_UNIT)
    } else {
        (GROUP_BYTES / (w.panel_stride() * 2)).clamp(1, GROUP_MAX_PANELS)
    };
    let groups = panels.div_ceil(group);
    let wanted = if threads > 1 { TASKS_PER_THREAD * threads } else { 1 };
    let units_per_task = units.div_ceil(wanted.div_ceil(groups).clamp(1, units));
    let splits = units.div_ceil(units_per_task);

    let yp = SharedMut(y.as_mut_ptr());
    let task = |t: usize| {
        let (g, s) = (t / splits, t % splits);
        let job = Job {
            xa,
            tile_len,
            tiles,
            last_height,
            p,
            m,
            n,
            kblocks,
            w,
            bias,
            y: yp.get(),
            panel_range: g * group..panels.min((g + 1) * group),
            tile_range: 2 * s * units_per_task..tiles.min(2 * (s + 1) * units_per_task),
        };
        job.run();
    };
    if groups * splits == 1 {
        task(0);
    } else {
        (0..groups * splits).into_par_iter().for_each(task);
    }
}

/// One task: a group of panels against a range of row tiles (starting at an even tile).
struct Job<'a> {
    xa: &'a [u16],
    tile_len: usize,
    tiles: usize,
    last_height: usize,
    p: usize,
    m: usize,
    n: usize,
    kblocks: usize,
    w: &'a PackedMatrix,
    bias: Option<&'a [f32]>,
    y: *mut f32,
    panel_range: Range<usize>,
    tile_range: Range<usize>,
}

/// One accumulator block of results: 2 row tiles x 32 columns.
#[repr(C, align(64))]
struct Out([f32; 2 * TR * NR]);

impl Job<'_> {
    /// Rows of row tile `t` as packed and configured.
    fn height(&self, t: usize) -> usize {
        if t + 1 == self.tiles { self.last_height } else { TR }
    }

    fn run(&self) {
        let mut out = Out([0.0; 2 * TR * NR]);
        let wp = self.w.data_ptr::<u16>();
        let ps = self.w.panel_stride();
        let mut tiles: Option<(Tiles, (usize, usize))> = None;
        let mut t = self.tile_range.start;
        while t < self.tile_range.end {
            let r = if t + 1 < self.tile_range.end { 2 } else { 1 };
            let h = (self.height(t), self.height(t + r - 1));
            match &mut tiles {
                Some((_, cur)) if *cur == h => {}
                Some((tl, cur)) => {
                    tl.reconfigure(&TileConfig::new(h.0, h.1));
                    *cur = h;
                }
                None => {
                    // SAFETY: `run_with` asserted `available()`.
                    tiles = Some((unsafe { Tiles::configure(&TileConfig::new(h.0, h.1)) }, h));
                }
            }
            let a0 = self.xa[t * self.tile_len..].as_ptr();
            let a1 = self.xa[(t + r - 1) * self.tile_len..].as_ptr();
            let at = [h.0 * KB, h.1 * KB];
            for q in self.panel_range.clone() {
                let b = wp.wrapping_add(q * ps);
                // SAFETY: tiles are configured with the heights of row tiles t and t + r - 1;
                // those exist in xa (tile_len apart, kblocks * p A tiles of `at` bf16 each),
                // panel q exists in w (kblocks pairs of B tiles) and `out` holds 2 * 16 * NR f32.
                unsafe {
                    let o = out.0.as_mut_ptr();
                    match (r, self.p) {
                        (2, 3) => kernel::<2, 3>([a0, a1], at, b, self.kblocks, o),
                        (1, 3) => kernel::<1, 3>([a0, a1], at, b, self.kblocks, o),
                        (2, _) => kernel::<2, 1>([a0, a1], at, b, self.kblocks, o),
                        _ => kernel::<1, 1>([a0, a1], at, b, self.kblocks, o),
                    }
                }
                self.write(&out, t * TR, r * TR, q * NR);
            }
            t += r;
        }
    }

    /// Copies the valid part of `out` (rows from `i0`, at most `rows`; columns from `j0`) to y,
    /// adding the bias.
    fn write(&self, out: &Out, i0: usize, rows: usize, j0: usize) {
        let rows = rows.min(self.m - i0);
        let cols = NR.min(self.n - j0);
        for r in 0..rows {
            let src = &out.0[r * NR..r * NR + cols];
            // SAFETY: row i0 + r < m and columns j0..j0 + cols < n of y belong to this task
            // alone (disjoint row and panel ranges), and y holds m * n values.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.y.add((i0 + r) * self.n + j0), cols) };
            match self.bias {
                Some(bias) => {
                    for ((d, &s), &b) in dst.iter_mut().zip(src).zip(&bias[j0..j0 + cols]) {
                        *d = s + b;
                    }
                }
                None => dst.copy_from_slice(src),
            }
        }
    }
}
