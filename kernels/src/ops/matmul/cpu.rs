//! The CPU matmul driver: ISA selection, packing of x, cache blocking and the parallel split.
//!
//! Every output element `y[i, j]` is computed as one chain of fused multiply-adds
//! `acc = fma(x[i, kk], w[j, kk], acc)` for `kk = 0, 1, .., k-1`, starting from `+0.0`, then
//! `acc + bias[j]`. Vector lanes hold different `j`, never different `kk`, and k-blocks carry
//! `acc` through `y` exactly (an f32 store and reload), so the result does not depend on the
//! tile an element falls in, on the batch size, on the thread count or on the ISA: an FMA is
//! exactly rounded wherever it runs. Threads split the work by rows and columns only.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::packed::{NR, PackedMatrix};
use crate::dtype::WeightDType;

/// Rows of `x` at or below which the streaming path runs: weights are read once, straight from
/// the packed matrix, and widened in registers (the decode / few-token MoE expert case).
const STREAM_MAX_M: usize = 48;
/// Panels that the streaming path keeps hot in L2 while it walks the row tiles of x.
const STREAM_PANELS: usize = 4;
/// k-block of the blocked path: an f32 panel block (KC x NR x 4 = 32 KiB) stays in L1d.
const KC: usize = 256;
/// Upper bound on the rows of an x block of the blocked path (MC x KC x 4 = 192 KiB in L2).
const MC_MAX: usize = 192;

/// The instruction sets the CPU matmul has a code path for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CpuIsa {
    /// Portable Rust with `f32::mul_add`.
    Scalar,
    /// AVX2 + FMA + F16C.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// AVX-512F.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

impl CpuIsa {
    /// The best path this CPU runs, detected once.
    pub(crate) fn detected() -> CpuIsa {
        static ISA: OnceLock<CpuIsa> = OnceLock::new();
        *ISA.get_or_init(|| {
            [CpuIsa::Avx512, CpuIsa::Avx2]
                .into_iter()
                .find(|isa| isa.is_available())
                .unwrap_or(CpuIsa::Scalar)
        })
    }

    /// Whether this CPU can run the path.
    pub(crate) fn is_available(self) -> bool {
        match self {
            CpuIsa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// A weight element type as stored in a [`PackedMatrix`].
pub(super) trait Weight: Copy + Send + Sync + 'static {
    /// The dtype tag matching this type.
    const DTYPE: WeightDType;
    /// Exact conversion to f32.
    fn widen(self) -> f32;
}

impl Weight for f32 {
    const DTYPE: WeightDType = WeightDType::F32;
    fn widen(self) -> f32 {
        self
    }
}

impl Weight for half::bf16 {
    const DTYPE: WeightDType = WeightDType::BF16;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Weight for half::f16 {
    const DTYPE: WeightDType = WeightDType::F16;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// One call of a micro-kernel: `rows` rows of packed x times a group of consecutive panels.
///
/// The ISA's `tile` reads `x[kk * x_stride + r]` for `kk < kc`, `r < rows`, the weights of panel
/// `q` of the group at `w + q * panel_stride + kk * NR + c`, and writes
/// `y[r * ldy + c]` for the first `cols` columns of the group only.
#[derive(Clone, Copy)]
pub(super) struct Tile<W> {
    pub(super) x: *const f32,
    pub(super) x_stride: usize,
    pub(super) w: *const W,
    pub(super) panel_stride: usize,
    pub(super) kc: usize,
    pub(super) y: *mut f32,
    pub(super) ldy: usize,
    /// Columns of y that exist from the group's first column (may exceed the group's width).
    pub(super) cols: usize,
    /// Continue the chains from the values in y (a later k-block) instead of from +0.0.
    pub(super) accumulate: bool,
    /// When non-null, `bias[c]` is added once the chain is complete (last k-block only).
    pub(super) bias: *const f32,
}

/// What each ISA module provides.
pub(super) trait Isa {
    /// Rows per x tile of the blocked path (the register-blocking height).
    const MR: usize;

    /// Runs the micro-kernel(s) for `rows <= MR` rows and `panels >= 1` panels.
    ///
    /// # Safety
    /// The CPU supports the ISA, and every pointer of `t` is valid for the accesses described
    /// on [`Tile`].
    unsafe fn tile<W: Weight>(rows: usize, panels: usize, t: &Tile<W>);

    /// Widens `len` (a multiple of 32) elements at `src` into `dst`.
    ///
    /// # Safety
    /// The CPU supports the ISA; `src` and `dst` are valid for `len` elements.
    unsafe fn widen<W: Weight>(src: *const W, len: usize, dst: *mut f32);
}

/// A raw pointer that tasks share; each task writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

impl SharedMut {
    /// The pointer. (A method, so that closures capture the `Send` wrapper, not the field.)
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: tasks write through the pointer only to disjoint (row, column) ranges of y, and the
// borrow of y outlives the parallel region that uses it.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

/// `y = x · wᵀ (+ bias)` on the CPU with the given ISA path; arguments are already validated.
pub(crate) fn matmul(isa: CpuIsa, x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    assert!(isa.is_available(), "{isa:?} is not supported by this CPU");
    if m == 0 {
        return;
    }
    match w.dtype() {
        WeightDType::F32 => by_isa::<f32>(isa, x, m, w, bias, y),
        WeightDType::BF16 => by_isa::<half::bf16>(isa, x, m, w, bias, y),
        WeightDType::F16 => by_isa::<half::f16>(isa, x, m, w, bias, y),
    }
}

fn by_isa<W: Weight>(isa: CpuIsa, x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    match isa {
        CpuIsa::Scalar => run::<super::scalar::Scalar, W>(x, m, w, bias, y),
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx2 => run::<super::avx2::Avx2, W>(x, m, w, bias, y),
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx512 => run::<super::avx512::Avx512, W>(x, m, w, bias, y),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("checked by is_available"),
    }
}

fn run<I: Isa, W: Weight>(x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    if m <= STREAM_MAX_M {
        stream::<I, W>(x, m, w, bias, y);
    } else {
        blocked::<I, W>(x, m, w, bias, y);
    }
}

/// Copies rows `rows` of x, columns `ks`, into tiles of `mr` rows, each
/// k-major (`[kc][tile rows]`), so that a micro-kernel reads one short contiguous run per k-step.
fn pack_x(x: &[f32], k: usize, rows: Range<usize>, ks: Range<usize>, mr: usize, dst: &mut [f32]) {
    let (i0, rows) = (rows.start, rows.len());
    let (k0, kc) = (ks.start, ks.len());
    for t0 in (0..rows).step_by(mr) {
        let tr = mr.min(rows - t0);
        let tile = &mut dst[t0 * kc..(t0 + tr) * kc];
        for r in 0..tr {
            let src = &x[(i0 + t0 + r) * k + k0..][..kc];
            for (kk, &v) in src.iter().enumerate() {
                tile[kk * tr + r] = v;
            }
        }
    }
}

/// Few rows: every panel is read once, straight from the packed weights (widened in
/// registers), with the whole of x (packed once, small) against a group of panels.
fn stream<I: Isa, W: Weight>(x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    let packed_x;
    let xp: &[f32] = if m == 1 {
        x // one row is already k-major
    } else {
        packed_x = {
            let mut buf = vec![0.0; m * k];
            pack_x(x, k, 0..m, 0..k, I::MR, &mut buf);
            buf
        };
        &packed_x
    };
    let panels = w.panels();
    let threads = rayon::current_num_threads();
    // Enough groups for the pool to balance (4 per thread), each a multiple of STREAM_PANELS.
    let group = panels
        .div_ceil(4 * threads)
        .next_multiple_of(STREAM_PANELS)
        .min(panels.next_multiple_of(STREAM_PANELS));
    let ps = w.panel_stride();
    let yp = SharedMut(y.as_mut_ptr());
    let bias = bias.map_or(std::ptr::null(), <[f32]>::as_ptr);
    let bias = SharedMut(bias.cast_mut());
    let body = |g: usize| {
        let (yp, bias) = (yp.get(), bias.get());
        let wp = w.data_ptr::<W>();
        let p_end = panels.min((g + 1) * group);
        for p in (g * group..p_end).step_by(STREAM_PANELS) {
            let sub = STREAM_PANELS.min(p_end - p);
            for i0 in (0..m).step_by(I::MR) {
                let rows = I::MR.min(m - i0);
                let t = Tile {
                    x: xp[i0 * k..].as_ptr(),
                    x_stride: rows,
                    w: wp.wrapping_add(p * ps),
                    panel_stride: ps,
                    kc: k,
                    y: yp.wrapping_add(i0 * n + p * NR),
                    ldy: n,
                    cols: n - p * NR,
                    accumulate: false,
                    bias: if bias.is_null() {
                        bias
                    } else {
                        bias.wrapping_add(p * NR)
                    },
                };
                // SAFETY: the ISA was checked available; x tile, panels p..p+sub, rows
                // i0..i0+rows and columns p*NR.. (clipped to n by `cols`) are all in bounds,
                // and no other group writes these columns.
                unsafe { I::tile(rows, sub, &t) };
            }
        }
    };
    let groups = panels.div_ceil(group);
    if groups == 1 {
        body(0);
    } else {
        (0..groups).into_par_iter().for_each(body);
    }
}

/// Per-thread scratch of the blocked path, reused across calls.
#[derive(Default)]
struct Scratch {
    x: Vec<Aligned>,
    w: Vec<Aligned>,
}

/// 16 f32, 64-byte aligned: the unit of scratch allocation.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Aligned([f32; 16]);

/// A 64-byte aligned f32 slice of at least `len` elements backed by `buf`.
fn aligned(buf: &mut Vec<Aligned>, len: usize) -> &mut [f32] {
    if buf.len() * 16 < len {
        buf.resize(len.div_ceil(16), Aligned([0.0; 16]));
    }
    // SAFETY: `Aligned` is 16 f32 with no padding; the buffer holds at least `len` f32.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), len) }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Many rows: GotoBLAS-style blocking. A task owns an m-block of rows and a chunk of panels;
/// for each k-block it packs its x block (L2) and sweeps the panels, widening each panel's
/// k-block into an f32 buffer (L1) that all row tiles of the block reuse.
fn blocked<I: Isa, W: Weight>(x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    let panels = w.panels();
    let (mc, chunk) = plan(m, panels, rayon::current_num_threads(), I::MR);
    let (mblocks, chunks) = (m.div_ceil(mc), panels.div_ceil(chunk));
    let yp = SharedMut(y.as_mut_ptr());
    let task = |t: usize| {
        let (mb, cb) = (t / chunks, t % chunks);
        let rows = mc.min(m - mb * mc);
        let panel_range = cb * chunk..panels.min((cb + 1) * chunk);
        SCRATCH.with(|cell| {
            let mut fresh = Scratch::default();
            // The borrow cannot be held already (nothing below re-enters rayon), but fall back
            // to a fresh buffer rather than panic if that ever changes.
            let mut held = cell.try_borrow_mut();
            let scratch = held.as_deref_mut().unwrap_or(&mut fresh);
            block::<I, W>(x, w, bias, yp.get(), mb * mc, rows, panel_range, scratch);
        });
    };
    if mblocks * chunks == 1 {
        task(0);
    } else {
        (0..mblocks * chunks).into_par_iter().for_each(task);
    }
}

/// Rows per m-block and panels per chunk: about two equal tasks per thread (a multiple of the
/// thread count when it can be), m-blocks no taller than [`MC_MAX`], chunks as wide as possible
/// so that x is packed few times.
fn plan(m: usize, panels: usize, threads: usize, mr: usize) -> (usize, usize) {
    let mb0 = m.div_ceil(MC_MAX);
    let (mblocks, chunks) = if threads <= 1 {
        (mb0, 1)
    } else if mb0 >= 2 * threads {
        (mb0.next_multiple_of(threads), 1)
    } else {
        let mut chunks = (2 * threads).div_ceil(mb0).min(panels);
        while !(mb0 * chunks).is_multiple_of(threads) && chunks < panels {
            chunks += 1;
        }
        (mb0, chunks)
    };
    let mc = m.div_ceil(mblocks).next_multiple_of(mr);
    (mc, panels.div_ceil(chunks))
}

/// One task of the blocked path: rows `i0..i0+rows`, panels `panel_range`, all of k.
#[allow(clippy::too_many_arguments)]
fn block<I: Isa, W: Weight>(
    x: &[f32],
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    yp: *mut f32,
    i0: usize,
    rows: usize,
    panel_range: Range<usize>,
    scratch: &mut Scratch,
) {
    let (n, k) = (w.rows(), w.cols());
    let wp = w.data_ptr::<W>();
    let ps = w.panel_stride();
    let xbuf = aligned(&mut scratch.x, rows.next_multiple_of(I::MR) * KC);
    let wbuf = aligned(&mut scratch.w, KC * NR);
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let last = k0 + kc == k;
        pack_x(x, k, i0..i0 + rows, k0..k0 + kc, I::MR, xbuf);
        for p in panel_range.clone() {
            let src = wp.wrapping_add(p * ps + k0 * NR);
            let panel: *const f32 = if W::DTYPE == WeightDType::F32 {
                src.cast()
            } else {
                // SAFETY: the ISA is available (checked by `matmul`); src holds kc * NR
                // elements (a k-block of one panel) and wbuf holds KC * NR >= kc * NR.
                unsafe { I::widen(src, kc * NR, wbuf.as_mut_ptr()) };
                wbuf.as_ptr()
            };
            for t0 in (0..rows).step_by(I::MR) {
                let tr = I::MR.min(rows - t0);
                let t = Tile {
                    x: xbuf[t0 * kc..].as_ptr(),
                    x_stride: tr,
                    w: panel,
                    panel_stride: 0,
                    kc,
                    y: yp.wrapping_add((i0 + t0) * n + p * NR),
                    ldy: n,
                    cols: n - p * NR,
                    accumulate: k0 > 0,
                    bias: match bias {
                        Some(b) if last => b[p * NR..].as_ptr(),
                        _ => std::ptr::null(),
                    },
                };
                // SAFETY: the ISA is available; the x tile holds kc * tr packed values, the
                // panel kc * NR weights, and y rows i0+t0.. (< m) and columns p*NR.. (clipped
                // to n by `cols`) belong to this task alone.
                unsafe { I::tile(tr, 1, &t) };
            }
        }
    }
}
