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
//!
//! FP8 E4M3 weights use the plain panels with 1-byte elements. NVFP4 weights
//! ([`Layout::Nvfp4`]) stay 4.5 bits per weight: a panel is a run of 16-k block records of
//! [`NVFP4_RECORD`] bytes, one per block of 16 k-steps: 256 bytes of nibbles, for each column
//! `c` and k-step pair `t` the byte `nib(c, 2t) | nib(c, 2t + 1) << 4` (which is the
//! checkpoint's own byte: it packs element `2i` low, `2i + 1` high) at the place
//! `nvfp4::nibble_byte(c, t)` gives, then the [`NR`] E4M3 block scales of the columns.

use rayon::prelude::*;

use super::cpu::CpuIsa;
use super::nvfp4::nibble_byte;
use crate::dtype::WeightDType;
use crate::error::KernelError;
use crate::quant::e4m3::e4m3_is_nan;
use crate::quant::nvfp4::{NVFP4_BLOCK, check_block_scales, check_scale};

/// Output columns per panel: two 16-lane AVX-512 vectors, four 8-lane AVX2 vectors.
pub(crate) const NR: usize = 32;

/// k values per block in the AMX layout: one 64-byte tile row of bf16.
pub(crate) const KB: usize = 32;

/// Bytes of one NVFP4 block record of a panel: 16 k-steps x [`NR`] nibbles, then [`NR`]
/// E4M3 scales.
pub(crate) const NVFP4_RECORD: usize = NVFP4_BLOCK * NR / 2 + NR;

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
    /// Multiplies every output after accumulation (the tensor scale of FP8 and NVFP4; 1.0
    /// for float weights).
    scale: f32,
    /// The static activation scale of an NVFP4 layer, for W4A4.
    input_scale: Option<f32>,
    data: Vec<Line>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("dtype", &self.dtype)
            .field("layout", &self.layout)
            .field("rows", &self.n)
            .field("cols", &self.k)
            .field("scale", &self.scale)
            .field("input_scale", &self.input_scale)
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
    /// NVFP4 only: 16-k block records of nibble lines and scales (see the module docs).
    Nvfp4,
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
        if matches!(dtype, WeightDType::F8E4M3 | WeightDType::NVFP4) {
            return Err(KernelError::Unsupported {
                op: "PackedMatrix::from_bytes",
                reason: format!("{dtype} weights carry scales: use PackedMatrix::from_fp8_e4m3 or from_nvfp4"),
            });
        }
        check_byte_len(n, k, dtype, checked_len(n, k, dtype.size_in_bytes())?, bytes.len())?;
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
            WeightDType::F8E4M3 | WeightDType::NVFP4 => unreachable!("refused above"),
        }
        Ok(packed)
    }

    /// Packs FP8 E4M3 weights with one per-tensor scale (ModelOpt's FP8 per-tensor layers:
    /// `weight` F8_E4M3 `[n, k]` and an f32 `weight_scale`): `w = e4m3 * scale`. The weights
    /// stay one byte each; kernels decode them exactly in registers and multiply each output by
    /// `scale` once its sum is complete.
    ///
    /// Fails if `n` or `k` is zero, if `bytes.len() != n * k`, if `scale` is not finite and
    /// positive, or if a weight is one of the E4M3 NaN codes.
    pub fn from_fp8_e4m3(n: usize, k: usize, bytes: &[u8], scale: f32) -> Result<Self, KernelError> {
        const OP: &str = "PackedMatrix::from_fp8_e4m3";
        check_byte_len(n, k, WeightDType::F8E4M3, checked_len(n, k, 1)?, bytes.len())?;
        check_scale(OP, "scale", scale)?;
        if let Some(at) = bytes.iter().position(|&b| e4m3_is_nan(b)) {
            return Err(KernelError::InvalidValue {
                op: OP,
                what: "weights",
                reason: format!("element [{}, {}] is an E4M3 NaN ({:#04x})", at / k, at % k, bytes[at]),
            });
        }
        let mut packed = Self::zeroed(Layout::Panels, WeightDType::F8E4M3, n, k);
        packed.scale = scale;
        packed.fill::<1>(|row, kk| [bytes[row * k + kk]]);
        Ok(packed)
    }

    /// Packs NVFP4 weights as a checkpoint stores them: `packed` `[n, k / 2]` (element `2i` of a
    /// row in the low nibble of byte `i`), `block_scales` E4M3 `[n, k / 16]`, the f32
    /// `tensor_scale` (ModelOpt's `weight_scale_2`) and, for W4A4, the static `input_scale`:
    /// `w = e2m1 * f32(block_scale) * tensor_scale`. The weights stay 4.5 bits each in memory
    /// (re-laid out in panels, see the module docs); kernels decode them in the GEMM.
    ///
    /// Fails if `n` or `k` is zero, if `k` is not a multiple of 16, if a length does not fit the
    /// shape, if a scale is not finite and positive, or if a block scale is NaN or negative.
    pub fn from_nvfp4(
        n: usize,
        k: usize,
        packed: &[u8],
        block_scales: &[u8],
        tensor_scale: f32,
        input_scale: Option<f32>,
    ) -> Result<Self, KernelError> {
        const OP: &str = "PackedMatrix::from_nvfp4";
        let dtype = WeightDType::NVFP4;
        let values = checked_len(n, k, 1)?;
        if !k.is_multiple_of(NVFP4_BLOCK) {
            return Err(KernelError::InvalidShape {
                op: OP,
                reason: format!("NVFP4 weights of shape [{n}, {k}]: in_features must be a multiple of {NVFP4_BLOCK}"),
            });
        }
        check_byte_len(n, k, dtype, values / 2, packed.len())?;
        crate::error::check_len(OP, "block_scales", block_scales.len(), values / NVFP4_BLOCK)?;
        check_scale(OP, "tensor_scale", tensor_scale)?;
        if let Some(s) = input_scale {
            check_scale(OP, "input_scale", s)?;
        }
        check_block_scales(OP, block_scales)?;
        let mut w = Self::zeroed(Layout::Nvfp4, dtype, n, k);
        w.scale = tensor_scale;
        w.input_scale = input_scale;
        let (row_bytes, row_blocks) = (k / 2, k / NVFP4_BLOCK);
        w.fill_panels(|p, dst| {
            for c in 0..NR.min(n - p * NR) {
                let row = p * NR + c;
                let (bytes, scales) = (
                    &packed[row * row_bytes..(row + 1) * row_bytes],
                    &block_scales[row * row_blocks..(row + 1) * row_blocks],
                );
                for (b, record) in dst.chunks_exact_mut(NVFP4_RECORD).enumerate() {
                    for t in 0..NVFP4_BLOCK / 2 {
                        record[nibble_byte(c, t)] = bytes[b * NVFP4_BLOCK / 2 + t];
                    }
                    record[NVFP4_BLOCK / 2 * NR + c] = scales[b];
                }
            }
        });
        Ok(w)
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

    /// The factor every output is multiplied by once its sum is complete: the tensor scale of
    /// FP8 and NVFP4 weights, 1.0 for float weights.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The static activation scale of NVFP4 weights that carry one (used by
    /// [`MatmulPrecision::Nvfp4Activations`]).
    ///
    /// [`MatmulPrecision::Nvfp4Activations`]: crate::MatmulPrecision::Nvfp4Activations
    pub fn input_scale(&self) -> Option<f32> {
        self.input_scale
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

    /// Bytes of packed weight data held, scales included (and the zero padding of the last
    /// panel): 4.5 bits per weight for NVFP4, 1 byte for FP8.
    pub fn size_in_bytes(&self) -> usize {
        self.panels() * self.panel_bytes()
    }

    /// Bytes from the start of one panel to the start of the next.
    pub(crate) fn panel_bytes(&self) -> usize {
        match self.layout {
            Layout::Nvfp4 => self.k / NVFP4_BLOCK * NVFP4_RECORD,
            Layout::Panels | Layout::AmxBf16 => self.panel_stride() * self.dtype.size_in_bytes(),
        }
    }

    /// The number of [`NR`]-column panels.
    pub(crate) fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Elements from the start of one panel to the start of the next (`k * NR`, with k
    /// rounded up to a multiple of 32 in the AMX layout); for NVFP4 (whose panels are
    /// [`Self::panel_bytes`] apart), the elements a panel holds.
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
            Layout::Panels | Layout::Nvfp4 => self.k,
            Layout::AmxBf16 => self.k.div_ceil(KB) * KB,
        }
    }

    /// The start of the packed data, viewed as elements of type `W`.
    ///
    /// The caller must pick the `W` whose size matches [`Self::dtype`] (`u8` for NVFP4).
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
            scale: 1.0,
            input_scale: None,
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
            Layout::Nvfp4 => unreachable!("NVFP4 panels are filled by from_nvfp4"),
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
        let this = &*self;
        let offsets: Vec<usize> = (0..k)
            .flat_map(|kk| (0..NR).map(move |c| this.offset::<SZ>(c, kk)))
            .collect();
        self.fill_panels(|p, dst| {
            for c in 0..NR.min(n - p * NR) {
                let row = p * NR + c;
                for kk in 0..k {
                    let at = offsets[kk * NR + c];
                    dst[at..at + SZ].copy_from_slice(&read(row, kk));
                }
            }
        });
    }

    /// Runs `write(p, bytes of panel p)` for every panel, in parallel.
    fn fill_panels(&mut self, write: impl Fn(usize, &mut [u8]) + Sync) {
        let (panel_bytes, panels) = (self.panel_bytes(), self.panels());
        // SAFETY: `Line` is 64 plain bytes with no padding, so the storage can be viewed as
        // bytes; it holds at least panels * panel_bytes of them (`zeroed`).
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast(), self.data.len() * 64) };
        bytes[..panels * panel_bytes]
            .par_chunks_mut(panel_bytes)
            .enumerate()
            .for_each(|(p, dst)| write(p, dst));
    }
}

/// Checks that `found` bytes are the `expected` of `[n, k]` weights of `dtype`.
fn check_byte_len(n: usize, k: usize, dtype: WeightDType, expected: usize, found: usize) -> Result<(), KernelError> {
    if found == expected {
        Ok(())
    } else {
        Err(KernelError::WeightByteLength {
            rows: n,
            cols: k,
            dtype,
            expected,
            found,
        })
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
