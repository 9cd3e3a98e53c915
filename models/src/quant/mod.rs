//! Quantised checkpoints: NVIDIA ModelOpt's NVFP4 and mixed NVFP4 + FP8 exports, and
//! compressed-tensors' `nvfp4-pack-quantized` (llm-compressor).
//!
//! - [`format`](mod@format): what the checkpoint *says* it is (`hf_quant_config.json`, `config.json`'s
//!   `quantization_config`), for reporting and for refusing formats we cannot run.
//! - `stored`: what each Linear *is*, decided from the tensors actually stored (never from
//!   `exclude_modules`, which has been seen holding garbage), checked and packed for the kernels.
//!
//! - `calibration`: the activation amax per Linear over a corpus, for W4A4's static input scales.
//!
//! How NVFP4 layers run is chosen at load time by [`QuantMode`].

pub mod calibration;
pub mod format;
pub(crate) mod stored;
pub mod writer;

use std::fmt;
use std::str::FromStr;

pub use calibration::ActivationAmax;
pub use format::{CheckpointQuantization, QuantFormat};
pub use writer::{OutputFormat, QuantizeError, QuantizeOptions, QuantizeSummary, quantize_checkpoint};

/// How NVFP4 Linears run (FP8 and unquantised layers are unaffected).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QuantMode {
    /// Weights decoded inside the kernel, activations stay f32 (what Hopper-class engines do).
    #[default]
    W4A16,
    /// Activations quantised to NVFP4 with each layer's static `input_scale`, then the
    /// block-scaled product, as Blackwell FP4 tensor cores compute it (emulated exactly).
    W4A4,
}

impl QuantMode {
    /// The flag value: `w4a16` or `w4a4`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::W4A16 => "w4a16",
            Self::W4A4 => "w4a4",
        }
    }
}

impl fmt::Display for QuantMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "w4a16" => Ok(Self::W4A16),
            "w4a4" => Ok(Self::W4A4),
            other => Err(format!("unknown quantisation mode {other:?}: expected w4a16 or w4a4")),
        }
    }
}
