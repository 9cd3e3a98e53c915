//! Element types that weights can be stored in.

use std::fmt;

/// The element type of a weight matrix as it sits in memory (and in the checkpoint).
///
/// Weights keep their own type in memory (a bf16 checkpoint stays bf16, half the bytes of f32;
/// NVFP4 stays 4.5 bits); kernels decode them to f32 in registers, exactly, before multiplying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightDType {
    /// IEEE 754 binary32.
    F32,
    /// bfloat16: the upper half of an f32 (8-bit exponent, 7-bit mantissa).
    BF16,
    /// IEEE 754 binary16.
    F16,
    /// FP8 E4M3 (`float8_e4m3fn`) with one f32 scale per tensor.
    F8E4M3,
    /// NVFP4: E2M1 elements, an E4M3 scale per 16 along a row, one f32 scale per tensor.
    NVFP4,
}

impl WeightDType {
    /// Bytes one element occupies, rounded up to a whole byte: exact for the types that are
    /// whole bytes; an NVFP4 element is half a byte (see [`Self::bits`]), reported as 1.
    pub const fn size_in_bytes(self) -> usize {
        self.bits().div_ceil(8)
    }

    /// Bits per element as stored, not counting scales: 32, 16, 16, 8 and 4 (NVFP4's block
    /// scales add 0.5 bit per element).
    pub const fn bits(self) -> usize {
        match self {
            WeightDType::F32 => 32,
            WeightDType::BF16 | WeightDType::F16 => 16,
            WeightDType::F8E4M3 => 8,
            WeightDType::NVFP4 => 4,
        }
    }

    /// The name safetensors uses for this type (`"F32"`, `"BF16"`, `"F16"`, `"F8_E4M3"`);
    /// `"NVFP4"` for NVFP4, which safetensors stores as `U8` pairs of elements.
    pub const fn name(self) -> &'static str {
        match self {
            WeightDType::F32 => "F32",
            WeightDType::BF16 => "BF16",
            WeightDType::F16 => "F16",
            WeightDType::F8E4M3 => "F8_E4M3",
            WeightDType::NVFP4 => "NVFP4",
        }
    }
}

impl fmt::Display for WeightDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The plain floating element types: what embeddings, vectors and unquantised matrices come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FloatType {
    /// IEEE 754 binary32.
    F32,
    /// bfloat16.
    BF16,
    /// IEEE 754 binary16.
    F16,
}

impl FloatType {
    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        self.weight_dtype().size_in_bytes()
    }

    /// The same type as a [`WeightDType`].
    pub const fn weight_dtype(self) -> WeightDType {
        match self {
            Self::F32 => WeightDType::F32,
            Self::BF16 => WeightDType::BF16,
            Self::F16 => WeightDType::F16,
        }
    }

    /// Converts little-endian elements of this type to f32 (exactly: every value is an f32).
    pub fn widen_into(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            Self::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Self::BF16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            Self::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
    }
}
