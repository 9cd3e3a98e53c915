//! The CPU matmul driver: ISA selection, packing of x, cache blocking and the parallel split.
//!
//! Every output element `y[i, j]` is computed as one chain of fused multiply-adds
//! `acc = fma(x[i, kk], w[j, kk], acc)` for `kk = 0, 1, .., k-1`, starting from `+0.0`, then
//! `acc + bias[j]`, accumulated in a register from the first k to the last. Vector lanes hold
//! different `j`, never different `kk`, so the result does not depend on the tile an element
//! falls in, on the batch size, on the thread count or on the ISA: an FMA is exactly rounded
//! wherever it runs. Threads split the work by columns (and rows) only, never by k.
//!
//! Loop structure: x is packed once into k-major tiles of `MR` rows. A task owns a group of
//! panels (sized to stay in L2, widened to f32 once if that pays) and a range of row tiles, and
//! runs every tile against the group over all of k; y is written exactly once.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;

use super::MatmulPrecision;
use super::packed::{Layout, NR, PackedMatrix};
use super::xpack::pack_x;
use crate::dtype::WeightDType;
use crate::quant::e4m3::e4m3_to_f32;

/// Bytes of weights (counted as f32) that a task keeps hot in L2 while the row tiles of x
/// stream past them: the weights are the larger operand per k-step (NR values against MR), so
/// they are the ones to reuse from cache, and x the one to stream.
const GROUP_BYTES: usize = 1 << 20;
/// Most panels in one group (a task's share of the columns).
const GROUP_MAX_PANELS: usize = 8;
/// Panels in a group when x is a single row tile: with no reuse to size for, as many as the
/// few-row kernels take at once (their independent FMA chains hide the FMA latency), and no
/// more, so that the weight stream splits into many tasks.
const GROUP_PANELS_ONE_TILE: usize = 4;
/// Row tiles from which a task widens its bf16/f16 group to f32 once, instead of widening
/// in registers once per tile.
const WIDEN_MIN_TILES: usize = 5;
/// How far ahead in a weight stream the SIMD kernels prefetch: enough to cover L3 latency
/// when a group's panels are first read (later tiles find them in L2 and lose nothing).
pub(super) const PREFETCH_BYTES: usize = 2048;
/// How far ahead the NVFP4 kernels also prefetch into L2. They consume their stream about 4x
/// more slowly per instruction than the float kernels (4.5 bits per weight, and the decoding),
/// so the L1 prefetch alone leaves too few lines in flight to keep the memory busy at batch 1.
pub(super) const PREFETCH_L2_BYTES: usize = 8192;
/// Tasks per pool thread to aim for, so that work stealing can even out the load.
const TASKS_PER_THREAD: usize = 4;
/// Elements of x from which it is packed in parallel.
const PARALLEL_PACK_MIN: usize = 1 << 16;

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
    /// AMX-TILE + AMX-BF16 for bf16 weights (packed in [`Layout::AmxBf16`]); AVX-512F for
    /// the others.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Amx,
}

impl CpuIsa {
    /// The path [`crate::matmul`] takes, chosen once: the best this CPU runs, or the one named
    /// by `MARC_MATMUL_ISA` (`amx`, `avx512`, `avx2` or `scalar`) if this CPU runs it. Forcing
    /// a slower path is for benchmarking and debugging. The non-AMX paths give the same bits;
    /// AMX (bf16 weights only) sums in another fixed order, so its bits differ from theirs.
    pub(crate) fn detected() -> CpuIsa {
        static ISA: OnceLock<CpuIsa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let forced =
                std::env::var("MARC_MATMUL_ISA")
                    .ok()
                    .and_then(|name| match name.to_ascii_lowercase().as_str() {
                        "amx" => Some(CpuIsa::Amx),
                        "avx512" => Some(CpuIsa::Avx512),
                        "avx2" => Some(CpuIsa::Avx2),
                        "scalar" => Some(CpuIsa::Scalar),
                        _ => None,
                    });
            forced
                .into_iter()
                .chain([CpuIsa::Amx, CpuIsa::Avx512, CpuIsa::Avx2])
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
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Amx => super::amx::available(),
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

/// An FP8 E4M3 weight as stored (one byte).
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct E4m3(#[allow(dead_code)] u8);

impl Weight for E4m3 {
    const DTYPE: WeightDType = WeightDType::F8E4M3;
    fn widen(self) -> f32 {
        e4m3_to_f32(self.0)
    }
}

/// One call of a micro-kernel: `rows` rows of packed x times a group of consecutive panels.
///
/// The ISA's `tile` reads `x[kk * x_stride + r]` for `kk < kc`, `r < rows`, the weights of panel
/// `q` of the group at `w + q * panel_stride + kk * NR + c`, and writes
/// `y[r * ldy + c]` for the first `cols` columns of the group only: `sum * scale (+ bias)`.
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
    /// When non-null, `bias[c]` is added once the chain is complete.
    pub(super) bias: *const f32,
    /// Multiplies each complete chain before the bias is added (the weights' tensor scale;
    /// 1.0, an exact no-op, for float weights).
    pub(super) scale: f32,
}

impl<W: Copy> Tile<W> {
    /// The tile moved `panels` panels on (the next kernel's part of the group).
    pub(super) fn advance(&mut self, panels: usize) {
        self.w = self.w.wrapping_add(panels * self.panel_stride);
        self.columns_from(panels * NR);
    }

    /// The tile viewed from column `c` of its first panel on, for kernels narrower than a
    /// panel (`c` elements further in every line of weights).
    pub(super) fn at_column(&self, c: usize) -> Tile<W> {
        let mut view = *self;
        view.w = view.w.wrapping_add(c);
        view.columns_from(c);
        view
    }

    /// The tile viewed from column `c` of its first panel on, for y, bias and the column count
    /// only: the weights stay at the panel, for kernels that find their columns in it
    /// themselves (NVFP4 records keep a panel's column halves in separate chunks).
    pub(super) fn columns_from_view(&self, c: usize) -> Tile<W> {
        let mut view = *self;
        view.columns_from(c);
        view
    }

    /// Moves y, bias and the column count `c` columns on (not the weights).
    fn columns_from(&mut self, c: usize) {
        self.y = self.y.wrapping_add(c);
        self.cols = self.cols.saturating_sub(c);
        if !self.bias.is_null() {
            self.bias = self.bias.wrapping_add(c);
        }
    }
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

    /// [`Self::tile`] on NVFP4 panels (`t.w` at the group's block records, `t.panel_stride`
    /// in bytes), decoded where they are used, in the order of operations of `nvfp4.rs` (the
    /// same on every ISA).
    ///
    /// # Safety
    /// As for [`Self::tile`], with the panels as block records.
    unsafe fn tile_nvfp4(rows: usize, panels: usize, t: &Tile<u8>) {
        // SAFETY: forwarded from the caller.
        unsafe { super::nvfp4::tile_portable(rows, panels, t) }
    }
}

/// A raw pointer that tasks share; each task writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(super) struct SharedMut(pub(super) *mut f32);

impl SharedMut {
    /// The pointer. (A method, so that closures capture the `Send` wrapper, not the field.)
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: tasks write through the pointer only to disjoint (row, column) ranges of y, and the
// borrow of y outlives the parallel region that uses it.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

/// `y = x · wᵀ (+ bias)` on the CPU with the given ISA path; arguments are already validated.
///
/// Weights in the AMX layout need `isa == Amx`; `precision` matters only for them (the other
/// paths are exact f32 FMA chains).
pub(crate) fn matmul(
    isa: CpuIsa,
    precision: MatmulPrecision,
    x: &[f32],
    m: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    assert!(isa.is_available(), "{isa:?} is not supported by this CPU");
    if m == 0 {
        return;
    }
    match w.layout() {
        Layout::AmxBf16 => {
            assert_eq!(isa, CpuIsa::Amx, "weights packed for AMX need the AMX path");
            #[cfg(target_arch = "x86_64")]
            super::amx::run(precision, x, m, w, bias, y);
            return;
        }
        Layout::Nvfp4 if precision == MatmulPrecision::Nvfp4Activations && w.input_scale().is_some() => {
            super::w4a4::run(isa, x, m, w, bias, y);
            return;
        }
        Layout::Nvfp4 | Layout::Panels => {}
    }
    match w.dtype() {
        WeightDType::F32 => by_isa::<f32>(isa, x, m, w, bias, y),
        WeightDType::BF16 => by_isa::<half::bf16>(isa, x, m, w, bias, y),
        WeightDType::F16 => by_isa::<half::f16>(isa, x, m, w, bias, y),
        WeightDType::F8E4M3 => by_isa::<E4m3>(isa, x, m, w, bias, y),
        // NVFP4 panels go to `Isa::tile_nvfp4` (see `Job::run`); the type is a formality.
        WeightDType::NVFP4 => by_isa::<f32>(isa, x, m, w, bias, y),
    }
}

fn by_isa<W: Weight>(isa: CpuIsa, x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    match isa {
        CpuIsa::Scalar => run::<super::scalar::Scalar, W>(x, m, w, bias, y),
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx2 => run::<super::avx2::Avx2, W>(x, m, w, bias, y),
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx512 | CpuIsa::Amx => run::<super::avx512::Avx512, W>(x, m, w, bias, y),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("checked by is_available"),
    }
}

fn run<I: Isa, W: Weight>(x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    let k = w.cols();
    let panels = w.panels();
    let tiles = m.div_ceil(I::MR);
    let threads = rayon::current_num_threads();

    let mut pooled = None;
    let xp: &[f32] = if m == 1 {
        x // one row is already k-major
    } else {
        let buf = pooled.insert(PooledBuf::take(m * k));
        let dst = buf.slice(m * k);
        if m * k < PARALLEL_PACK_MIN {
            pack_x(x, k, 0..m, I::MR, dst);
        } else {
            let per_chunk = tiles.div_ceil(TASKS_PER_THREAD * threads) * I::MR;
            dst.par_chunks_mut(per_chunk * k).enumerate().for_each(|(c, d)| {
                let i0 = c * per_chunk;
                pack_x(x, k, i0..m.min(i0 + per_chunk), I::MR, d);
            });
        }
        buf.slice(m * k)
    };

    let group = if tiles == 1 {
        GROUP_PANELS_ONE_TILE
    } else {
        (GROUP_BYTES / (k * NR * 4)).clamp(1, GROUP_MAX_PANELS)
    };
    let groups = panels.div_ceil(group);
    // Split the rows too when there are too few groups to keep every thread busy.
    let wanted = if threads > 1 { TASKS_PER_THREAD * threads } else { 1 };
    let tiles_per_task = tiles.div_ceil(wanted.div_ceil(groups).clamp(1, tiles));
    let splits = tiles.div_ceil(tiles_per_task);

    let yp = SharedMut(y.as_mut_ptr());
    let task = |t: usize| {
        let (g, s) = (t / splits, t % splits);
        let panel_range = g * group..panels.min((g + 1) * group);
        let tile_range = s * tiles_per_task..tiles.min((s + 1) * tiles_per_task);
        let job = Job {
            xp,
            m,
            w,
            bias,
            y: yp.get(),
            panel_range,
            tile_range,
        };
        job.run::<I, W>();
    };
    if groups * splits == 1 {
        task(0);
    } else {
        (0..groups * splits).into_par_iter().for_each(task);
    }
}

/// One task: a group of panels against a range of row tiles.
struct Job<'a> {
    xp: &'a [f32],
    m: usize,
    w: &'a PackedMatrix,
    bias: Option<&'a [f32]>,
    y: *mut f32,
    panel_range: Range<usize>,
    tile_range: Range<usize>,
}

impl Job<'_> {
    fn run<I: Isa, W: Weight>(&self) {
        if self.w.layout() == Layout::Nvfp4 {
            self.sweep_nvfp4::<I>();
            return;
        }
        let ps = self.w.panel_stride();
        let (p0, np) = (self.panel_range.start, self.panel_range.len());
        let src = self.w.data_ptr::<W>().wrapping_add(p0 * ps);
        if W::DTYPE == WeightDType::F32 || self.tile_range.len() < WIDEN_MIN_TILES {
            self.sweep::<I, W>(src);
            return;
        }
        SCRATCH.with(|cell| {
            // Nothing below re-enters rayon, so the borrow is never held already; fall back to
            // a fresh buffer rather than panic if that ever changes.
            let mut fresh = Vec::new();
            let mut held = cell.try_borrow_mut();
            let buf = aligned(held.as_deref_mut().unwrap_or(&mut fresh), np * ps);
            // SAFETY: the ISA is available (checked by `matmul`); the group's np panels hold
            // np * ps elements from src, and buf as many f32.
            unsafe { I::widen(src, np * ps, buf.as_mut_ptr()) };
            self.sweep::<I, f32>(buf.as_ptr());
        });
    }

    /// Every row tile of the task against the group's panels, starting at `w`.
    fn sweep<I: Isa, V: Weight>(&self, w: *const V) {
        self.sweep_with::<I, V>(w, self.w.panel_stride(), |rows, panels, tile| {
            // SAFETY: the ISA is available; the tile's pointers are valid as described in
            // `sweep_with`.
            unsafe { I::tile(rows, panels, tile) }
        });
    }

    /// Every row tile of the task against the group's NVFP4 block records, decoded in the
    /// micro-kernels.
    fn sweep_nvfp4<I: Isa>(&self) {
        let pb = self.w.panel_bytes();
        let w = self.w.data_ptr::<u8>().wrapping_add(self.panel_range.start * pb);
        self.sweep_with::<I, u8>(w, pb, |rows, panels, tile| {
            // SAFETY: as in `sweep`, with the group's panels as block records.
            unsafe { I::tile_nvfp4(rows, panels, tile) }
        });
    }

    /// Runs `kernel(rows, panels, tile)` for every row tile of the task, the tile's weights
    /// starting at `w` with panels `panel_stride` elements apart. Each call has the ISA
    /// available; its x tile holds k * rows packed values, w the group's panels, and y rows
    /// i0.. (< m) and columns p0*NR.. (clipped to n by `cols`) belong to this task alone.
    fn sweep_with<I: Isa, V>(&self, w: *const V, panel_stride: usize, kernel: impl Fn(usize, usize, &Tile<V>)) {
        let (n, k) = (self.w.rows(), self.w.cols());
        let p0 = self.panel_range.start;
        for t in self.tile_range.clone() {
            let i0 = t * I::MR;
            let rows = I::MR.min(self.m - i0);
            let tile = Tile {
                x: self.xp[i0 * k..].as_ptr(),
                x_stride: rows,
                w,
                panel_stride,
                kc: k,
                y: self.y.wrapping_add(i0 * n + p0 * NR),
                ldy: n,
                cols: n - p0 * NR,
                bias: self.bias.map_or(std::ptr::null(), |b| b[p0 * NR..].as_ptr()),
                scale: self.w.scale(),
            };
            kernel(rows, self.panel_range.len(), &tile);
        }
    }
}

/// 16 f32, 64-byte aligned: the unit of scratch allocation.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Aligned([f32; 16]);

/// A 64-byte aligned f32 slice of `len` elements backed by `buf`, grown if needed.
fn aligned(buf: &mut Vec<Aligned>, len: usize) -> &mut [f32] {
    if buf.len() * 16 < len {
        buf.resize(len.div_ceil(16), Aligned([0.0; 16]));
    }
    // SAFETY: `Aligned` is 16 f32 with no padding; the buffer holds at least `len` f32.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), len) }
}

thread_local! {
    /// Per-thread buffer for a widened group of panels, reused across calls.
    static SCRATCH: RefCell<Vec<Aligned>> = const { RefCell::new(Vec::new()) };
}

/// Buffers for packed x, shared by all calls so that steady-state calls neither allocate nor
/// fault in fresh pages; a call takes one and gives it back when done.
static X_POOL: Mutex<Vec<Vec<Aligned>>> = Mutex::new(Vec::new());
/// Buffers kept in [`X_POOL`] at most (about one per concurrent call).
const X_POOL_MAX: usize = 4;

/// A buffer taken from [`X_POOL`], returned on drop.
pub(super) struct PooledBuf(Vec<Aligned>);

impl PooledBuf {
    /// A buffer of at least `len` f32 from the pool (or a fresh one).
    pub(super) fn take(len: usize) -> Self {
        let mut pool = X_POOL.lock().unwrap_or_else(|e| e.into_inner());
        // The largest buffer, so that a small call does not strand a big one.
        let best = (0..pool.len()).max_by_key(|&i| pool[i].len());
        let mut buf = PooledBuf(best.map(|i| pool.swap_remove(i)).unwrap_or_default());
        drop(pool);
        aligned(&mut buf.0, len);
        buf
    }

    /// The first `len` f32 of the buffer, 64-byte aligned (grown if needed).
    pub(super) fn slice(&mut self, len: usize) -> &mut [f32] {
        aligned(&mut self.0, len)
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let mut pool = X_POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < X_POOL_MAX {
            pool.push(std::mem::take(&mut self.0));
        }
    }
}
