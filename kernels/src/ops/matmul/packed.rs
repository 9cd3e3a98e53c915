//! Weights re-laid out once, at load, into column panels that the micro-kernels stream.
//!
//! A `[n, k]` weight matrix (one row per output feature) is cut into panels of [`NR`] rows
//! (= [`NR`] output columns of `y`). Inside a panel the data is k-major: for each `kk` in
//! `0..k`, the [`NR`] weights `w[p*NR .. p*NR+NR, kk]` sit next to each other. A micro-kernel
//! then reads one contiguous line of weights per k-step, and a k-block of a panel is one
//! contiguous range. The last panel is padded with zero rows; the columns they produce are never
//! stored. Elements keep their dtype (bf16 stays 2 bytes), so the packed size is
//! `ceil(n / NR) * NR * k * size_of(dtype)`.
//!
//! bf16 weights on a CPU whose matmul path is AMX ([`Layout::AmxBf16`]) use the same panels,
//! but inside a panel k is cut into blocks of 32 (zero-padded at the end) and each block holds
//! two AMX B tiles in VNNI order (see `amx.rs`), so the size is `ceil(n / NR) * NR *
//! ceil(k / 32) * 32 * 2` bytes.

use rayon::prelude::*;

use super::cpu::CpuIsa;
use crate::dtype::WeightDType;
use crate::error::KernelError;

/// Output columns per panel: two 16-lane AVX-512 vectors, four 8-lane AVX2 vectors.
pub(crate) const NR: usize = 32;

/// k values per block in the AMX layout: one 64-byte tile row of bf16.
pub(crate) const KB: usize = 32;

/// A cache line: the allocation unit, so that panels start 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// The weights of a Linear layer, `[out_features = n, in_features = k]`, packed for [`matmul`].
///
/// [`matmul`]: crate::matmul
#[derive(Clone)]
pub struct PackedMatrix {
    dtype: WeightDType,
    layout: Layout,
    n: usize,
    k: usize,
    data: Vec<Line>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("dtype", &self.dtype)
            .field("layout", &self.layout)
            .field("rows", &self.n)
            .field("cols", &self.k)
            .finish_non_exhaustive()
    }
}

/// How the elements of a panel are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// k-major lines of [`NR`] elements (the AVX-512 / AVX2 / scalar paths).
    Panels,
    /// bf16 only: 32-wide k blocks of two VNNI B tiles (the AMX path).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    AmxBf16,
}

impl Layout {
    /// The layout the matmul path of this process wants for `dtype`.
    fn preferred(dtype: WeightDType) -> Layout {
        if dtype == WeightDType::BF16 && CpuIsa::detected() == CpuIsa::Amx {
            Layout::AmxBf16
        } else {
            Layout::Panels
        }
    }
}

impl PackedMatrix {
    /// Packs row-major `[n, k]` little-endian elements of `dtype`, e.g. a tensor's bytes
    /// straight from a safetensors file. `bytes` need not be aligned.
    ///
    /// Fails if `n` or `k` is zero or if `bytes.len() != n * k * dtype.size_in_bytes()`.
    pub fn from_bytes(dtype: WeightDType, n: usize, k: usize, bytes: &[u8]) -> Result<Self, KernelError> {
        Self::from_bytes_in(Layout::preferred(dtype), dtype, n, k, bytes)
    }

    /// [`Self::from_bytes`] into a given layout (`AmxBf16` for bf16 only).
    pub(crate) fn from_bytes_in(
        layout: Layout,
        dtype: WeightDType,
        n: usize,
        k: usize,
        bytes: &[u8],
    ) -> Result<Self, KernelError> {
        assert!(
            layout == Layout::Panels || dtype == WeightDType::BF16,
            "the AMX layout is for bf16"
        );
        let expected = checked_len(n, k, dtype.size_in_bytes())?;
        if bytes.len() != expected {
            return Err(KernelError::WeightByteLength {
                rows: n,
                cols: k,
                dtype,
                expected,
                found: bytes.len(),
            });
        }
        let mut packed = Self::zeroed(layout, dtype, n, k);
        // Elements are stored in native byte order so kernels can load them directly.
        match dtype {
            WeightDType::F32 => packed.fill::<4>(|row, kk| {
                let at = (row * k + kk) * 4;
                u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")).to_ne_bytes()
            }),
            WeightDType::BF16 | WeightDType::F16 => packed.fill::<2>(|row, kk| {
                let at = (row * k + kk) * 2;
                u16::from_le_bytes([bytes[at], bytes[at + 1]]).to_ne_bytes()
            }),
        }
        Ok(packed)
    }

    /// Packs row-major `[n, k]` f32 values; they are stored as f32.
    ///
    /// Fails if `n` or `k` is zero or if `values.len() != n * k`.
    pub fn from_f32(n: usize, k: usize, values: &[f32]) -> Result<Self, KernelError> {
        let expected = checked_len(n, k, 1)?;
        if values.len() != expected {
            return Err(KernelError::LengthMismatch {
                op: "PackedMatrix::from_f32",
                what: "values",
                expected,
                found: values.len(),
            });
        }
        let mut packed = Self::zeroed(Layout::Panels, WeightDType::F32, n, k);
        packed.fill::<4>(|row, kk| values[row * k + kk].to_ne_bytes());
        Ok(packed)
    }

    /// `n`, the number of output features (rows of the weight matrix).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// `k`, the number of input features (columns of the weight matrix).
    pub fn cols(&self) -> usize {
        self.k
    }

    /// The element type the weights are stored in.
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }

    /// Bytes of packed weight data held (including the zero padding of the last panel).
    pub fn size_in_bytes(&self) -> usize {
        self.panels() * self.panel_stride() * self.dtype.size_in_bytes()
    }

    /// The number of [`NR`]-column panels.
    pub(crate) fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Elements from the start of one panel to the start of the next (`k * NR`, with k
    /// rounded up to a multiple of 32 in the AMX layout).
    pub(crate) fn panel_stride(&self) -> usize {
        self.padded_k() * NR
    }

    /// How the elements of a panel are ordered.
    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// k as stored: k itself, or rounded up to whole 32-wide blocks in the AMX layout.
    fn padded_k(&self) -> usize {
        match self.layout {
            Layout::Panels => self.k,
            Layout::AmxBf16 => self.k.div_ceil(KB) * KB,
        }
    }

    /// The start of the packed data, viewed as elements of type `W`.
    ///
    /// The caller must pick the `W` whose size matches [`Self::dtype`].
    pub(crate) fn data_ptr<W>(&self) -> *const W {
        debug_assert_eq!(size_of::<W>(), self.dtype.size_in_bytes());
        self.data.as_ptr().cast()
    }

    fn zeroed(layout: Layout, dtype: WeightDType, n: usize, k: usize) -> Self {
        let mut packed = PackedMatrix {
            dtype,
            layout,
            n,
            k,
            data: Vec::new(),
        };
        let bytes = packed.size_in_bytes();
        packed.data = vec![Line([0; 64]); bytes.div_ceil(64)];
        packed
    }

    /// Byte offset of element `(c, kk)` (column `c` of its panel, `kk < k`) from the panel start.
    fn offset<const SZ: usize>(&self, c: usize, kk: usize) -> usize {
        match self.layout {
            Layout::Panels => (kk * NR + c) * SZ,
            // Block kk / 32, B tile c / 16, tile row (kk % 32) / 2, then column c % 16's pair.
            Layout::AmxBf16 => {
                let (kb, kr) = (kk / KB, kk % KB);
                let elem = kb * KB * NR + (c / 16) * 16 * KB + (kr / 2) * KB + (c % 16) * 2 + kr % 2;
                elem * SZ
            }
        }
    }

    /// Writes element `(row, kk)` of every panel from `read(row, kk)`, panels in parallel.
    fn fill<const SZ: usize>(&mut self, read: impl Fn(usize, usize) -> [u8; SZ] + Sync) {
        let (n, k) = (self.n, self.k);
        // A panel is panel_stride * SZ bytes, a multiple of 64 because NR * SZ is, so panels
        // map onto whole lines and can be filled independently.
        let lines_per_panel = self.panel_stride() * SZ / 64;
        let this = &*self;
        let offsets: Vec<usize> = (0..k)
            .flat_map(|kk| (0..NR).map(move |c| this.offset::<SZ>(c, kk)))
            .collect();
        self.data
            .par_chunks_mut(lines_per_panel)
            .enumerate()
            .for_each(|(p, lines)| {
                // SAFETY: `Line` is 64 plain bytes with no padding, so its storage can be viewed
                // as bytes; the slice covers exactly the lines of this chunk.
                let dst: &mut [u8] =
                    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * 64) };
                for c in 0..NR.min(n - p * NR) {
                    let row = p * NR + c;
                    for kk in 0..k {
                        let at = offsets[kk * NR + c];
                        dst[at..at + SZ].copy_from_slice(&read(row, kk));
                    }
                }
            });
    }
}

/// `n * k * elem_size`, refusing zero dimensions and overflow.
fn checked_len(n: usize, k: usize, elem_size: usize) -> Result<usize, KernelError> {
    if n == 0 || k == 0 {
        return Err(KernelError::InvalidShape {
            op: "PackedMatrix",
            reason: format!("weights of shape [{n}, {k}]: both dimensions must be at least 1"),
        });
    }
    n.div_ceil(NR)
        .checked_mul(NR)
        .and_then(|padded| padded.checked_mul(k))
        .and_then(|e| e.checked_mul(elem_size))
        .map(|_| n * k * elem_size)
        .ok_or_else(|| KernelError::InvalidShape {
            op: "PackedMatrix",
            reason: format!("weights of shape [{n}, {k}] overflow usize"),
        })
}
