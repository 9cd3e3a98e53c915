//! `--quant` against what the checkpoint declares: the mode its NVFP4 layers run in, and the
//! `Info.quantization` string.
//!
//! Policy: without `--quant`, NVFP4 layers run `w4a16` and unquantised checkpoints run as stored.
//! An explicit `--quant` on a checkpoint with no NVFP4 layers is refused rather than ignored, so
//! an operator who believes they are serving NVFP4 finds out at start-up.

use std::path::Path;

use anyhow::{Context, bail};
use marc_kernels::MatmulPrecision;
use marc_models::{CheckpointQuantization, QuantMode};

/// The mode a checkpoint runs in.
#[derive(Clone, Debug)]
pub(crate) struct Quantization {
    /// How NVFP4 layers run.
    pub(crate) mode: QuantMode,
    /// What the checkpoint declares, if it is quantised.
    pub(crate) declared: Option<CheckpointQuantization>,
}

impl Quantization {
    /// Reads the declaration in `dir` and checks `requested` against it.
    pub(crate) fn resolve(dir: &Path, requested: Option<QuantMode>) -> anyhow::Result<Self> {
        let declared = CheckpointQuantization::detect(dir)
            .with_context(|| format!("cannot read the quantisation of the model in {}", dir.display()))?;
        if let Some(mode) = requested
            && !declared.as_ref().is_some_and(|d| d.format.has_nvfp4())
        {
            let what = match &declared {
                Some(d) => format!("is {} (no NVFP4 layers)", d.format.name()),
                None => "is not quantised (no hf_quant_config.json, no quantization_config in config.json)".into(),
            };
            bail!(
                "--quant {mode}: the model in {} {what}; its weights run as stored, so drop --quant \
                 (or make an NVFP4 checkpoint with `marc quantize`)",
                dir.display()
            );
        }
        Ok(Self {
            mode: requested.unwrap_or_default(),
            declared,
        })
    }

    /// What `Info.quantization` reports: `none` / `bf16` (the activation mode) for an unquantised
    /// checkpoint, else the format and, when it has NVFP4 layers, the mode (`modelopt-nvfp4 w4a16`).
    pub(crate) fn describe(&self, precision: MatmulPrecision) -> String {
        match &self.declared {
            None if precision == MatmulPrecision::Bf16Activations => "bf16".into(),
            None => "none".into(),
            Some(d) if d.format.has_nvfp4() => format!("{} {}", d.format.name(), self.mode),
            Some(d) => d.format.name().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture(case: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/tests/fixtures/nvfp4")
            .join(case)
    }

    #[test]
    fn info_names_format_and_mode() {
        let exact = MatmulPrecision::Exact;
        let mixed = Quantization::resolve(&fixture("modelopt_mixed"), Some(QuantMode::W4A4)).unwrap();
        assert_eq!(mixed.describe(exact), "modelopt-mixed w4a4");
        let ct = Quantization::resolve(&fixture("compressed_tensors_nvfp4"), None).unwrap();
        assert_eq!(ct.describe(exact), "compressed-tensors-nvfp4 w4a16");
        let plain = Quantization::resolve(&fixture("base_bf16"), None).unwrap();
        assert_eq!(plain.describe(exact), "none");
        assert_eq!(plain.describe(MatmulPrecision::Bf16Activations), "bf16");
        let refused = Quantization::resolve(&fixture("base_bf16"), Some(QuantMode::W4A16)).unwrap_err();
        assert!(refused.to_string().contains("not quantised"), "{refused}");
    }
}
