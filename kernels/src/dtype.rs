//! Element types that weights can be stored in.

use std::fmt;

/// The element type of a weight matrix as it sits in memory (and in the checkpoint).
///
/// Weights keep their own type in memory (a bf16 checkpoint stays bf16, half the bytes of f32);
/// kernels widen them to f32 in registers, exactly, before multiplying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightDType {
    /// IEEE 754 binary32.
    F32,
    /// bfloat16: the upper half of an f32 (8-bit exponent, 7-bit mantissa).
    BF16,
    /// IEEE 754 binary16.
    F16,
}

impl WeightDType {
    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            WeightDType::F32 => 4,
            WeightDType::BF16 | WeightDType::F16 => 2,
        }
    }

    /// The name safetensors uses for this type (`"F32"`, `"BF16"`, `"F16"`).
    pub const fn name(self) -> &'static str {
        match self {
            WeightDType::F32 => "F32",
            WeightDType::BF16 => "BF16",
            WeightDType::F16 => "F16",
        }
    }
}

impl fmt::Display for WeightDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
