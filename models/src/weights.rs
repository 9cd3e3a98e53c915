//! Typed access to a checkpoint's tensors: every fetch checks the shape and dtype the config
//! implies, converts small parameters to `f32`, packs matrices for the GEMM in their own dtype
//! (bf16 stays bf16, NVFP4 and FP8 stay quantised), and reports the bytes it consumed for the
//! progress display.

use std::sync::Arc;

use half::{bf16, f16};
use marc_kernels::{MatmulPrecision, PackedMatrix, WeightDType};
use safetensors::Dtype;

use crate::checkpoint::{Checkpoint, TensorRef};
use crate::error::LoadError;
use crate::quant::QuantMode;
use crate::quant::calibration::{ActivationAmax, Observer};
use crate::quant::stored::StoredWeight;
use crate::scratch::{self, Buffer};

/// Receives the number of checkpoint bytes consumed so far.
pub type ProgressFn<'a> = dyn FnMut(u64) + 'a;

/// An embedding table kept in the checkpoint's dtype; rows are widened when looked up.
pub struct EmbeddingTable {
    dtype: FloatType,
    width: usize,
    bytes: Vec<u8>,
}

impl EmbeddingTable {
    /// Number of rows (the vocabulary size).
    pub fn rows(&self) -> usize {
        self.bytes.len() / (self.width * self.dtype.size_in_bytes())
    }

    /// Writes row `row` as f32 into `out` (`width` values). `row` must be `< rows()`.
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        let size = self.dtype.size_in_bytes();
        let bytes = &self.bytes[row * self.width * size..(row + 1) * self.width * size];
        widen_into(self.dtype, bytes, out);
    }

    /// Bytes held.
    pub fn size_in_bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// The plain floating element types: what embeddings, vectors and unquantised matrices come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FloatType {
    F32,
    BF16,
    F16,
}

impl FloatType {
    pub(crate) const fn size_in_bytes(self) -> usize {
        self.weight_dtype().size_in_bytes()
    }

    /// The kernels' name for it.
    pub(crate) const fn weight_dtype(self) -> WeightDType {
        match self {
            Self::F32 => WeightDType::F32,
            Self::BF16 => WeightDType::BF16,
            Self::F16 => WeightDType::F16,
        }
    }
}

/// Converts little-endian elements of `dtype` to f32.
pub(crate) fn widen_into(dtype: FloatType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        FloatType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        FloatType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        FloatType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
    }
}

/// The floating dtypes weights may come in.
pub(crate) fn float_dtype(t: &TensorRef<'_>) -> Result<FloatType, LoadError> {
    match t.dtype {
        Dtype::F32 => Ok(FloatType::F32),
        Dtype::BF16 => Ok(FloatType::BF16),
        Dtype::F16 => Ok(FloatType::F16),
        other => Err(LoadError::DType {
            path: t.path.to_owned(),
            tensor: t.name.to_owned(),
            expected: "F32, BF16 or F16".to_owned(),
            found: format!("{other:?}"),
        }),
    }
}

pub(crate) fn check_shape(t: &TensorRef<'_>, expected: &[usize]) -> Result<(), LoadError> {
    if t.shape != expected {
        return Err(LoadError::Shape {
            path: t.path.to_owned(),
            tensor: t.name.to_owned(),
            expected: expected.to_vec(),
            found: t.shape.to_vec(),
        });
    }
    Ok(())
}

pub(crate) fn describe(shape: &[usize]) -> String {
    format!("a F32/BF16/F16 tensor of shape {shape:?}")
}

/// Fetches tensors from a checkpoint with checks, counting bytes for progress.
pub(crate) struct WeightLoader<'a> {
    checkpoint: &'a Checkpoint,
    precision: MatmulPrecision,
    quant: QuantMode,
    consumed: u64,
    progress: &'a mut ProgressFn<'a>,
    /// Where every Linear loaded reports its inputs, when calibrating.
    observer: Option<Arc<ActivationAmax>>,
}

impl<'a> WeightLoader<'a> {
    pub(crate) fn new(
        checkpoint: &'a Checkpoint,
        precision: MatmulPrecision,
        quant: QuantMode,
        progress: &'a mut ProgressFn<'a>,
    ) -> Self {
        Self {
            checkpoint,
            precision,
            quant,
            consumed: 0,
            progress,
            observer: None,
        }
    }

    /// Makes every Linear loaded from now on report its inputs to `amax`.
    pub(crate) fn observe_into(&mut self, amax: Arc<ActivationAmax>) {
        self.observer = Some(amax);
    }

    fn count(&mut self, bytes: u64) {
        self.consumed += bytes;
        (self.progress)(self.consumed);
    }

    fn fetch(&mut self, name: &str, shape: &[usize]) -> Result<TensorRef<'a>, LoadError> {
        let t = self.checkpoint.require(name, &describe(shape))?;
        check_shape(&t, shape)?;
        self.count(t.bytes.len() as u64);
        Ok(t)
    }

    /// A vector (or small tensor) of the given shape, as f32.
    pub(crate) fn vector(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let t = self.fetch(name, shape)?;
        let dtype = float_dtype(&t)?;
        let mut out = vec![0.0; shape.iter().product()];
        widen_into(dtype, t.bytes, &mut out);
        Ok(out)
    }

    /// A vector that exists only when the config says so.
    pub(crate) fn optional_vector(
        &mut self,
        name: &str,
        len: usize,
        present: bool,
    ) -> Result<Option<Vec<f32>>, LoadError> {
        present.then(|| self.vector(name, &[len])).transpose()
    }

    /// The weight of Linear `prefix` (`[rows = out, cols = in]`), as stored: unquantised, NVFP4
    /// or FP8 (see [`crate::quant`]).
    fn stored(&mut self, prefix: &str, rows: usize, cols: usize) -> Result<StoredWeight<'a>, LoadError> {
        let (stored, bytes) = StoredWeight::find(self.checkpoint, prefix, rows, cols)?;
        self.count(bytes);
        Ok(stored)
    }

    /// How the GEMM of a Linear stored as `stored` treats its activations under the load options.
    fn precision_for(&self, stored: &StoredWeight<'_>) -> Result<MatmulPrecision, LoadError> {
        if self.quant != QuantMode::W4A4 || !stored.is_nvfp4() {
            return Ok(self.precision);
        }
        if stored.input_scale().is_none() {
            let t = stored.tensor();
            return Err(LoadError::Unsupported {
                path: t.path.to_owned(),
                tensor: t.name.to_owned(),
                message: "--quant w4a4 quantises an NVFP4 layer's activations with its static input scale \
                          (`input_scale` / `input_global_scale`), and this layer has none (a weight-only \
                          checkpoint, as `marc quantize` writes); run it with --quant w4a16"
                    .into(),
            });
        }
        Ok(MatmulPrecision::Nvfp4Activations)
    }

    /// The Linear of module `module` (its canonical name) from its stored weight.
    fn linear_from(
        &self,
        module: &str,
        stored: &StoredWeight<'_>,
        rows: usize,
        cols: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Linear, LoadError> {
        let precision = self.precision_for(stored)?;
        Ok(Linear {
            weight: stored.pack(rows, cols, precision == MatmulPrecision::Nvfp4Activations)?,
            bias,
            precision,
            observer: self.observer.as_ref().map(|amax| Observer {
                amax: amax.clone(),
                module: module.into(),
            }),
        })
    }

    /// The weight of Linear `prefix` packed for a GEMM that always runs exact (the MoE router).
    pub(crate) fn exact_matrix(&mut self, prefix: &str, rows: usize, cols: usize) -> Result<PackedMatrix, LoadError> {
        self.stored(prefix, rows, cols)?.pack(rows, cols, false)
    }

    /// A Linear `prefix` (`{prefix}.weight`, its scales if quantised, and its bias when `bias` is set).
    pub(crate) fn linear(&mut self, prefix: &str, rows: usize, cols: usize, bias: bool) -> Result<Linear, LoadError> {
        let stored = self.stored(prefix, rows, cols)?;
        let bias = self.optional_vector(&format!("{prefix}.bias"), rows, bias)?;
        self.linear_from(prefix, &stored, rows, cols, bias)
    }

    /// A Linear weight `[sum(parts), cols]` (and bias) split by output rows into one Linear per
    /// part: a projection whose outputs feed different consumers (Mamba's `in_proj` -> z, xBC, dt)
    /// then writes each part contiguously. Each output is computed exactly as unsplit (quantised
    /// weights keep their per-row block scales and share the tensor scale).
    pub(crate) fn linear_split<const N: usize>(
        &mut self,
        prefix: &str,
        parts: [usize; N],
        cols: usize,
        bias: bool,
    ) -> Result<[Linear; N], LoadError> {
        let rows: usize = parts.iter().sum();
        let stored = self.stored(prefix, rows, cols)?;
        let bias = self.optional_vector(&format!("{prefix}.bias"), rows, bias)?;
        let mut linears = Vec::with_capacity(N);
        let mut first = 0;
        for part in parts {
            let slice = stored.rows(first, part, cols)?;
            let part_bias = bias.as_ref().map(|b| b[first..first + part].to_vec());
            linears.push(self.linear_from(prefix, &slice, part, cols, part_bias)?);
            first += part;
        }
        let mut linears = linears.into_iter();
        Ok(std::array::from_fn(|_| {
            linears.next().expect("one Linear was pushed per part")
        }))
    }

    /// Routed expert `expert`'s `proj` (`up_proj` / `down_proj`) under `prefix`
    /// (`layers.N.mixer.experts`), bias-free: NVIDIA's one Linear per expert (any stored format),
    /// or transformers' stacked `[num_experts, rows, cols]` unquantised tensor.
    pub(crate) fn expert_linear(
        &mut self,
        prefix: &str,
        proj: &str,
        expert: usize,
        num_experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Linear, LoadError> {
        let per_expert = format!("{prefix}.{expert}.{proj}");
        let stacked = format!("{prefix}.{proj}");
        let stored_per_expert = ["weight", "weight_packed"]
            .iter()
            .any(|leaf| self.checkpoint.contains(&format!("{per_expert}.{leaf}")));
        if stored_per_expert || !self.checkpoint.contains(&stacked) {
            return self.linear(&per_expert, rows, cols, false);
        }
        let t = self
            .checkpoint
            .require(&stacked, &describe(&[num_experts, rows, cols]))?;
        check_shape(&t, &[num_experts, rows, cols])?;
        let dtype = float_dtype(&t)?;
        let size = rows * cols * dtype.size_in_bytes();
        let slice = TensorRef {
            bytes: &t.bytes[expert * size..(expert + 1) * size],
            ..t
        };
        self.count(size as u64);
        self.linear_from(&per_expert, &StoredWeight::Float(slice), rows, cols, None)
    }

    /// The embedding table `[vocab, hidden]`, kept in its dtype.
    pub(crate) fn embedding(&mut self, name: &str, vocab: usize, hidden: usize) -> Result<EmbeddingTable, LoadError> {
        let t = self.fetch(name, &[vocab, hidden])?;
        Ok(EmbeddingTable {
            dtype: float_dtype(&t)?,
            width: hidden,
            bytes: t.bytes.to_vec(),
        })
    }
}

pub(crate) fn pack(t: &TensorRef<'_>, rows: usize, cols: usize) -> Result<PackedMatrix, LoadError> {
    let dtype = float_dtype(t)?.weight_dtype();
    PackedMatrix::from_bytes(dtype, rows, cols, t.bytes).map_err(|source| LoadError::Kernel {
        path: t.path.to_owned(),
        tensor: t.name.to_owned(),
        source,
    })
}

/// A Linear layer: packed weight and optional bias.
pub struct Linear {
    /// `[out, in]`.
    pub weight: PackedMatrix,
    /// `[out]`.
    pub bias: Option<Vec<f32>>,
    /// How the GEMM treats activations: exact f32, the opt-in bf16 mode, or NVFP4 quantisation
    /// of the activations (W4A4, on NVFP4 weights with an input scale).
    pub precision: MatmulPrecision,
    /// Where the inputs are reported, in a model loaded for calibration.
    pub(crate) observer: Option<Observer>,
}

impl Linear {
    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.rows()
    }

    /// `y[m, out] = x[m, in] · Wᵀ + b`.
    pub fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), marc_kernels::KernelError> {
        if let Some(observer) = &self.observer {
            observer.observe(x);
        }
        marc_kernels::matmul_with_precision(x, m, &self.weight, self.bias.as_deref(), y, self.precision)
    }

    /// Like [`Linear::forward`], into a pooled buffer.
    pub fn apply(&self, x: &[f32], m: usize) -> Result<Buffer, marc_kernels::KernelError> {
        let mut y = scratch::take(m * self.out_features());
        self.forward(x, m, &mut y)?;
        Ok(y)
    }

    /// Bytes of weights held.
    pub fn size_in_bytes(&self) -> usize {
        self.weight.size_in_bytes() + self.bias.as_ref().map_or(0, |b| b.len() * 4)
    }

    /// Whether it reports its inputs (a model loaded for calibration).
    pub(crate) fn is_observed(&self) -> bool {
        self.observer.is_some()
    }
}
