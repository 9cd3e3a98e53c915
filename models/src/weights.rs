//! Typed access to a checkpoint's tensors: every fetch checks the shape and dtype the config
//! implies, converts small parameters to `f32`, packs matrices for the GEMM in their own dtype
//! (bf16 stays bf16, NVFP4 and FP8 stay quantised), and reports the bytes it consumed for the
//! progress display.

use std::sync::Arc;

use marc_kernels::backend::{Backend, InputObserver, LinearSource, WeightData, WeightSource};
use marc_kernels::{MatmulPrecision, PackedMatrix};
use safetensors::Dtype;

pub use marc_kernels::FloatType;
pub use marc_kernels::backend::cpu::{EmbeddingTable, Linear};

use crate::checkpoint::{Checkpoint, TensorRef};
use crate::error::LoadError;
use crate::quant::QuantMode;
use crate::quant::calibration::{ActivationAmax, Observer};
use crate::quant::stored::StoredWeight;

/// Receives the number of checkpoint bytes consumed so far.
pub type ProgressFn<'a> = dyn FnMut(u64) + 'a;

/// Converts little-endian elements of `dtype` to f32.
pub(crate) fn widen_into(dtype: FloatType, bytes: &[u8], out: &mut [f32]) {
    dtype.widen_into(bytes, out);
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

/// A float tensor's values as f32.
fn widened(t: &TensorRef<'_>) -> Result<Vec<f32>, LoadError> {
    let dtype = float_dtype(t)?;
    let mut out = vec![0.0; t.shape.iter().product()];
    widen_into(dtype, t.bytes, &mut out);
    Ok(out)
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

/// Fetches tensors from a checkpoint with checks, counting bytes for progress, and hands them
/// to the backend.
pub(crate) struct WeightLoader<'a, B: Backend> {
    backend: &'a B,
    checkpoint: &'a Checkpoint,
    precision: MatmulPrecision,
    quant: QuantMode,
    consumed: u64,
    progress: &'a mut ProgressFn<'a>,
    /// Where every Linear loaded reports its inputs, when calibrating.
    observer: Option<Arc<ActivationAmax>>,
}

impl<'a, B: Backend> WeightLoader<'a, B> {
    pub(crate) fn new(
        backend: &'a B,
        checkpoint: &'a Checkpoint,
        precision: MatmulPrecision,
        quant: QuantMode,
        progress: &'a mut ProgressFn<'a>,
    ) -> Self {
        Self {
            backend,
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
        widened(&t)
    }

    /// A vector (or small tensor) of the given shape, on the backend.
    pub(crate) fn param(&mut self, name: &str, shape: &[usize]) -> Result<B::Vector, LoadError> {
        self.param_with(name, shape, |values| values)
    }

    /// Like [`Self::param`], with the values transformed on the way (e.g. `A = -exp(A_log)`).
    pub(crate) fn param_with(
        &mut self,
        name: &str,
        shape: &[usize],
        transform: impl FnOnce(Vec<f32>) -> Vec<f32>,
    ) -> Result<B::Vector, LoadError> {
        let t = self.fetch(name, shape)?;
        let values = transform(widened(&t)?);
        self.backend.upload_vector(values).map_err(|source| LoadError::Kernel {
            path: t.path.to_owned(),
            tensor: t.name.to_owned(),
            source,
        })
    }

    /// A vector on the backend that exists only when the config says so.
    pub(crate) fn optional_param(
        &mut self,
        name: &str,
        len: usize,
        present: bool,
    ) -> Result<Option<B::Vector>, LoadError> {
        present.then(|| self.param(name, &[len])).transpose()
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

    /// Hands a Linear stored as `stored` to the backend; errors name the stored tensor. When
    /// calibrating, its inputs are reported under `observed_as` (its canonical module name), if given.
    fn upload_linear(
        &self,
        observed_as: Option<&str>,
        stored: &StoredWeight<'_>,
        (rows, cols): (usize, usize),
        bias: Option<Vec<f32>>,
        precision: MatmulPrecision,
    ) -> Result<B::Linear, LoadError> {
        let with_input_scale = precision == MatmulPrecision::Nvfp4Activations;
        let observer = self.observer.as_ref().zip(observed_as).map(|(amax, module)| {
            Arc::new(Observer {
                amax: amax.clone(),
                module: module.into(),
            }) as Arc<dyn InputObserver>
        });
        let source = LinearSource {
            weight: stored.source(rows, cols, with_input_scale)?,
            bias,
            precision,
            observer,
        };
        self.backend.upload_linear(source).map_err(|source| {
            let t = stored.tensor();
            LoadError::Kernel {
                path: t.path.to_owned(),
                tensor: t.name.to_owned(),
                source,
            }
        })
    }

    /// The Linear of module `module` (its canonical name) from its stored weight.
    fn linear_from(
        &self,
        module: &str,
        stored: &StoredWeight<'_>,
        rows: usize,
        cols: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<B::Linear, LoadError> {
        let precision = self.precision_for(stored)?;
        self.upload_linear(Some(module), stored, (rows, cols), bias, precision)
    }

    /// The Linear `prefix`, bias-free, for a GEMM that always runs exact (the MoE router).
    pub(crate) fn exact_linear(&mut self, prefix: &str, rows: usize, cols: usize) -> Result<B::Linear, LoadError> {
        let stored = self.stored(prefix, rows, cols)?;
        // Not observed: the router is never quantised.
        self.upload_linear(None, &stored, (rows, cols), None, MatmulPrecision::Exact)
    }

    /// A Linear `prefix` (`{prefix}.weight`, its scales if quantised, and its bias when `bias` is set).
    pub(crate) fn linear(
        &mut self,
        prefix: &str,
        rows: usize,
        cols: usize,
        bias: bool,
    ) -> Result<B::Linear, LoadError> {
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
    ) -> Result<[B::Linear; N], LoadError> {
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
    ) -> Result<B::Linear, LoadError> {
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

    /// Groups an MoE block's routed experts (tensors under `prefix`) on the backend.
    pub(crate) fn group_experts(
        &self,
        prefix: &str,
        experts: Vec<(B::Linear, B::Linear)>,
    ) -> Result<B::Experts, LoadError> {
        self.backend.group_experts(experts).map_err(|source| LoadError::Kernel {
            path: self.checkpoint.dir().to_owned(),
            tensor: format!("{prefix}.*"),
            source,
        })
    }

    /// The embedding table `[vocab, hidden]`, kept in its dtype.
    pub(crate) fn embedding(&mut self, name: &str, vocab: usize, hidden: usize) -> Result<B::Embedding, LoadError> {
        let t = self.fetch(name, &[vocab, hidden])?;
        let table = WeightSource {
            rows: vocab,
            cols: hidden,
            data: WeightData::Float {
                dtype: float_dtype(&t)?,
                bytes: t.bytes,
            },
        };
        self.backend
            .upload_embedding(table)
            .map_err(|source| LoadError::Kernel {
                path: t.path.to_owned(),
                tensor: t.name.to_owned(),
                source,
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
