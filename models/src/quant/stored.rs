//! One Linear's weight as stored, recognised from the tensors present (never from the
//! checkpoint's exclude lists), checked, and packed for the kernels:
//!
//! | stored under `{prefix}.`                                                    | is                      |
//! | --------------------------------------------------------------------------- | ----------------------- |
//! | `weight` U8 `[out, in/2]`, `weight_scale` F8_E4M3 `[out, in/16]`, `weight_scale_2` | NVFP4 (ModelOpt)  |
//! | `weight_packed` U8, `weight_scale` F8_E4M3, `weight_global_scale` (= 1 / ModelOpt's) | NVFP4 (compressed-tensors) |
//! | `weight` F8_E4M3 `[out, in]`, `weight_scale` F32 scalar                      | FP8 per tensor          |
//! | `weight` F32 / BF16 / F16 `[out, in]`                                        | unquantised             |
//!
//! NVFP4 packs element `2i` of a row in the low nibble of byte `i`; one E4M3 block scale covers
//! 16 consecutive inputs; value = e2m1 x block scale x tensor scale. An optional static
//! `input_scale` (ModelOpt) / `input_global_scale` (compressed-tensors, reciprocal) is what W4A4
//! quantises activations with.

use marc_kernels::backend::{WeightData, WeightSource};
use safetensors::Dtype;

use crate::checkpoint::{Checkpoint, TensorRef};
use crate::error::LoadError;
use crate::weights::{check_shape, describe, float_dtype};

/// Inputs per NVFP4 block scale.
pub(crate) const NVFP4_BLOCK: usize = 16;

/// A Linear weight `[rows = out, cols = in]` as the checkpoint stores it.
pub(crate) enum StoredWeight<'a> {
    /// F32 / BF16 / F16.
    Float(TensorRef<'a>),
    /// NVFP4: packed nibbles, E4M3 block scales, and ModelOpt's tensor scale.
    Nvfp4 {
        packed: TensorRef<'a>,
        block_scales: TensorRef<'a>,
        tensor_scale: f32,
        input_scale: Option<f32>,
    },
    /// FP8 E4M3 with one F32 scale per tensor.
    Fp8 { weight: TensorRef<'a>, scale: f32 },
}

/// The names one quantised layout uses for its tensors.
struct Nvfp4Names {
    packed: &'static str,
    global: &'static str,
    input: &'static str,
    /// Whether the stored global scales are reciprocals of ModelOpt's (compressed-tensors).
    reciprocal: bool,
}

const MODELOPT: Nvfp4Names = Nvfp4Names {
    packed: "weight",
    global: "weight_scale_2",
    input: "input_scale",
    reciprocal: false,
};

const COMPRESSED_TENSORS: Nvfp4Names = Nvfp4Names {
    packed: "weight_packed",
    global: "weight_global_scale",
    input: "input_global_scale",
    reciprocal: true,
};

impl<'a> StoredWeight<'a> {
    /// Finds and checks the weight of the Linear `prefix` (canonical name, without `.weight`).
    /// Also returns the bytes of every tensor it read, for progress.
    pub(crate) fn find(
        checkpoint: &'a Checkpoint,
        prefix: &str,
        rows: usize,
        cols: usize,
    ) -> Result<(Self, u64), LoadError> {
        if checkpoint.contains(&format!("{prefix}.{}", COMPRESSED_TENSORS.packed)) {
            return Self::nvfp4(checkpoint, prefix, rows, cols, &COMPRESSED_TENSORS);
        }
        let weight = checkpoint.require(&format!("{prefix}.weight"), &describe(&[rows, cols]))?;
        match weight.dtype {
            Dtype::U8 => Self::nvfp4(checkpoint, prefix, rows, cols, &MODELOPT),
            Dtype::F8_E4M3 => {
                check_shape(&weight, &[rows, cols])?;
                let scale_name = format!("{prefix}.weight_scale");
                let (scale, scale_bytes) = scalar(
                    checkpoint,
                    &scale_name,
                    "the FP8 tensor scale that goes with an F8_E4M3 `weight`",
                )?;
                Ok((Self::Fp8 { weight, scale }, weight.bytes.len() as u64 + scale_bytes))
            }
            _ => {
                check_shape(&weight, &[rows, cols])?;
                float_dtype(&weight)?;
                Ok((Self::Float(weight), weight.bytes.len() as u64))
            }
        }
    }

    fn nvfp4(
        checkpoint: &'a Checkpoint,
        prefix: &str,
        rows: usize,
        cols: usize,
        names: &Nvfp4Names,
    ) -> Result<(Self, u64), LoadError> {
        let packed = checkpoint.require(
            &format!("{prefix}.{}", names.packed),
            &format!(
                "a U8 tensor of shape [{rows}, {}] (NVFP4, two inputs per byte)",
                cols / 2
            ),
        )?;
        if !cols.is_multiple_of(NVFP4_BLOCK) {
            return Err(invalid(
                &packed,
                format!("in_features a multiple of {NVFP4_BLOCK} (one E4M3 scale per {NVFP4_BLOCK} inputs)"),
                format!("in_features {cols}"),
            ));
        }
        expect_dtype(&packed, Dtype::U8, "U8 (two NVFP4 values per byte)")?;
        check_shape(&packed, &[rows, cols / 2])?;
        let block_scales = checkpoint.require(
            &format!("{prefix}.weight_scale"),
            &format!(
                "an F8_E4M3 tensor of shape [{rows}, {}] (NVFP4 block scales)",
                cols / NVFP4_BLOCK
            ),
        )?;
        expect_dtype(&block_scales, Dtype::F8_E4M3, "F8_E4M3 (NVFP4 block scales)")?;
        check_shape(&block_scales, &[rows, cols / NVFP4_BLOCK])?;
        check_block_scales(&block_scales)?;
        let global_name = format!("{prefix}.{}", names.global);
        let (global, global_bytes) = scalar(
            checkpoint,
            &global_name,
            "the NVFP4 tensor scale that goes with the packed weight and its block scales",
        )?;
        let input_name = format!("{prefix}.{}", names.input);
        let (input, input_bytes) = match checkpoint.get(&input_name)? {
            Some(_) => {
                let (v, b) = scalar(checkpoint, &input_name, "the static activation scale")?;
                (Some(v), b)
            }
            None => (None, 0),
        };
        let from_stored = |v: f32| if names.reciprocal { 1.0 / v } else { v };
        let bytes = (packed.bytes.len() + block_scales.bytes.len()) as u64 + global_bytes + input_bytes;
        Ok((
            Self::Nvfp4 {
                packed,
                block_scales,
                tensor_scale: from_stored(global),
                input_scale: input.map(from_stored),
            },
            bytes,
        ))
    }

    /// Output rows `first..first + count` of this `[_, cols]` weight (the scales are shared).
    pub(crate) fn rows(&self, first: usize, count: usize, cols: usize) -> Result<Self, LoadError> {
        let slice = |t: &TensorRef<'a>, row_bytes: usize| TensorRef {
            bytes: &t.bytes[first * row_bytes..(first + count) * row_bytes],
            ..*t
        };
        Ok(match self {
            Self::Float(t) => Self::Float(slice(t, cols * float_dtype(t)?.size_in_bytes())),
            Self::Nvfp4 {
                packed,
                block_scales,
                tensor_scale,
                input_scale,
            } => Self::Nvfp4 {
                packed: slice(packed, cols / 2),
                block_scales: slice(block_scales, cols / NVFP4_BLOCK),
                tensor_scale: *tensor_scale,
                input_scale: *input_scale,
            },
            Self::Fp8 { weight, scale } => Self::Fp8 {
                weight: slice(weight, cols),
                scale: *scale,
            },
        })
    }

    /// The static activation scale of an NVFP4 weight, if stored.
    pub(crate) fn input_scale(&self) -> Option<f32> {
        match self {
            Self::Nvfp4 { input_scale, .. } => *input_scale,
            _ => None,
        }
    }

    /// Whether this is an NVFP4 weight.
    pub(crate) fn is_nvfp4(&self) -> bool {
        matches!(self, Self::Nvfp4 { .. })
    }

    /// The tensor that names this weight in errors.
    pub(crate) fn tensor(&self) -> &TensorRef<'a> {
        match self {
            Self::Float(t) => t,
            Self::Nvfp4 { packed, .. } => packed,
            Self::Fp8 { weight, .. } => weight,
        }
    }

    /// The weight's bytes for a backend, `[rows, cols]`. `with_input_scale` keeps the static
    /// activation scale so the GEMM quantises activations (W4A4).
    pub(crate) fn source(
        &self,
        rows: usize,
        cols: usize,
        with_input_scale: bool,
    ) -> Result<WeightSource<'a>, LoadError> {
        let data = match self {
            Self::Float(t) => WeightData::Float {
                dtype: float_dtype(t)?,
                bytes: t.bytes,
            },
            Self::Nvfp4 {
                packed,
                block_scales,
                tensor_scale,
                input_scale,
            } => WeightData::Nvfp4 {
                packed: packed.bytes,
                block_scales: block_scales.bytes,
                tensor_scale: *tensor_scale,
                input_scale: input_scale.filter(|_| with_input_scale),
            },
            Self::Fp8 { weight, scale } => WeightData::Fp8 {
                bytes: weight.bytes,
                scale: *scale,
            },
        };
        Ok(WeightSource { rows, cols, data })
    }
}

fn invalid(t: &TensorRef<'_>, expected: impl Into<String>, found: impl Into<String>) -> LoadError {
    LoadError::Invalid {
        path: t.path.to_owned(),
        tensor: t.name.to_owned(),
        expected: expected.into(),
        found: found.into(),
    }
}

fn expect_dtype(t: &TensorRef<'_>, dtype: Dtype, expected: &str) -> Result<(), LoadError> {
    if t.dtype != dtype {
        return Err(LoadError::DType {
            path: t.path.to_owned(),
            tensor: t.name.to_owned(),
            expected: expected.to_owned(),
            found: format!("{:?}", t.dtype),
        });
    }
    Ok(())
}

/// Block scales are positive E4M3 (zero for an all-zero block): no sign bit, no NaN (`S.1111.111`).
fn check_block_scales(t: &TensorRef<'_>) -> Result<(), LoadError> {
    let bad = t
        .bytes
        .iter()
        .position(|&b| (b & 0x80 != 0 && b != 0x80) || b & 0x7f == 0x7f);
    match bad {
        None => Ok(()),
        Some(i) => {
            let b = t.bytes[i];
            let what = if b & 0x7f == 0x7f { "NaN" } else { "a negative value" };
            Err(invalid(
                t,
                "non-negative E4M3 block scales",
                format!("{what} (byte 0x{b:02x}) at element {i}"),
            ))
        }
    }
}

/// A positive, finite scalar scale (shape `[]` or `[1]`, F32/BF16/F16); returns it and its bytes.
fn scalar(checkpoint: &Checkpoint, name: &str, role: &str) -> Result<(f32, u64), LoadError> {
    let t = checkpoint.require(name, &format!("an F32 scalar: {role}"))?;
    if t.shape.iter().product::<usize>() != 1 || t.shape.len() > 1 {
        return Err(LoadError::Shape {
            path: t.path.to_owned(),
            tensor: t.name.to_owned(),
            expected: vec![],
            found: t.shape.to_vec(),
        });
    }
    let dtype = float_dtype(&t)?;
    let mut value = [0.0f32];
    crate::weights::widen_into(dtype, t.bytes, &mut value);
    let value = value[0];
    if !(value.is_finite() && value > 0.0) {
        return Err(invalid(&t, format!("a positive finite {role}"), format!("{value}")));
    }
    Ok((value, t.bytes.len() as u64))
}
