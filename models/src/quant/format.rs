//! What a checkpoint declares about its quantisation.
//!
//! ModelOpt writes `hf_quant_config.json` (`{"producer": {"name": "modelopt"}, "quantization":
//! {"quant_algo": "NVFP4" | "W4A16_NVFP4" | "FP8" | "MIXED_PRECISION", ...}}`) and, in recent versions, the same
//! facts as `config.json`'s `quantization_config` (`quant_method: "modelopt"`). llm-compressor
//! writes `quantization_config` with `quant_method: "compressed-tensors"` and a `format`.
//!
//! The declaration only names the format (for `Info` and logs) and refuses formats marc cannot
//! run; which Linear is quantised how is decided from the stored tensors (see `stored`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::config::config_path;
use crate::error::LoadError;

/// ModelOpt's quantisation description beside `config.json`.
pub const HF_QUANT_CONFIG: &str = "hf_quant_config.json";

/// The quantisation formats marc loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// ModelOpt `quant_algo: "NVFP4"` (or `"W4A16_NVFP4"`, the weight-only export).
    ModelOptNvfp4,
    /// ModelOpt `quant_algo: "FP8"` (per-tensor E4M3 weights).
    ModelOptFp8,
    /// ModelOpt `quant_algo: "MIXED_PRECISION"` (NVFP4, FP8 and unquantised layers).
    ModelOptMixed,
    /// compressed-tensors `format: "nvfp4-pack-quantized"`.
    CompressedTensorsNvfp4,
}

impl QuantFormat {
    /// A short name for logs and the server's `Info`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ModelOptNvfp4 => "modelopt-nvfp4",
            Self::ModelOptFp8 => "modelopt-fp8",
            Self::ModelOptMixed => "modelopt-mixed",
            Self::CompressedTensorsNvfp4 => "compressed-tensors-nvfp4",
        }
    }

    /// Whether some layers may be NVFP4 (and so `--quant` matters).
    pub const fn has_nvfp4(self) -> bool {
        !matches!(self, Self::ModelOptFp8)
    }
}

/// A checkpoint's declared quantisation and the file that declared it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointQuantization {
    /// The format.
    pub format: QuantFormat,
    /// `hf_quant_config.json` or `config.json`.
    pub declared_in: PathBuf,
}

#[derive(Deserialize)]
struct HfQuantConfig {
    quantization: Option<ModelOptSection>,
}

#[derive(Deserialize)]
struct ModelOptSection {
    quant_algo: Option<String>,
}

#[derive(Deserialize)]
struct ConfigWithQuantization {
    quantization_config: Option<Value>,
}

impl CheckpointQuantization {
    /// Reads the declaration of the checkpoint in `dir`: `hf_quant_config.json` first, else
    /// `config.json`'s `quantization_config`. `None` for an unquantised checkpoint.
    pub fn detect(dir: &Path) -> Result<Option<Self>, LoadError> {
        let hf = dir.join(HF_QUANT_CONFIG);
        if hf.is_file() {
            let parsed: HfQuantConfig = read_json(&hf)?;
            let algo = parsed.quantization.and_then(|q| q.quant_algo);
            return Ok(Some(Self {
                format: modelopt_format(&hf, "quantization.quant_algo", algo.as_deref())?,
                declared_in: hf,
            }));
        }
        let config = config_path(dir);
        let parsed: ConfigWithQuantization = read_json(&config)?;
        let Some(section) = parsed.quantization_config else {
            return Ok(None);
        };
        let method = section.get("quant_method").and_then(Value::as_str);
        let format = match method {
            Some("modelopt") => modelopt_format(
                &config,
                "quantization_config.quant_algo",
                section.get("quant_algo").and_then(Value::as_str),
            )?,
            Some("compressed-tensors") => compressed_tensors_format(&config, &section)?,
            other => {
                return Err(LoadError::Config {
                    path: config,
                    key: "quantization_config.quant_method".into(),
                    expected: "\"modelopt\" or \"compressed-tensors\"".into(),
                    found: other.map_or("nothing".into(), |m| format!("{m:?}")),
                });
            }
        };
        Ok(Some(Self {
            format,
            declared_in: config,
        }))
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    // JSON5: configs written by Python may hold bare Infinity / NaN elsewhere in the file.
    json5::from_str(&text).map_err(|e| LoadError::Json {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn modelopt_format(path: &Path, key: &str, algo: Option<&str>) -> Result<QuantFormat, LoadError> {
    match algo {
        // W4A16_NVFP4 is ModelOpt's name for a weight-only NVFP4 export (no input scales).
        Some("NVFP4" | "W4A16_NVFP4") => Ok(QuantFormat::ModelOptNvfp4),
        Some("FP8") => Ok(QuantFormat::ModelOptFp8),
        Some("MIXED_PRECISION") => Ok(QuantFormat::ModelOptMixed),
        other => Err(LoadError::Config {
            path: path.to_owned(),
            key: key.to_owned(),
            expected: "\"NVFP4\", \"W4A16_NVFP4\", \"FP8\" or \"MIXED_PRECISION\"".into(),
            found: other.map_or("nothing".into(), |a| format!("{a:?}")),
        }),
    }
}

/// compressed-tensors names its packing in `format`, at the top of `quantization_config` or per
/// config group; every one stated must be `nvfp4-pack-quantized`.
fn compressed_tensors_format(path: &Path, section: &Value) -> Result<QuantFormat, LoadError> {
    const NVFP4: &str = "nvfp4-pack-quantized";
    let mut stated: Vec<(String, Option<&str>)> = Vec::new();
    if let Some(format) = section.get("format") {
        stated.push(("quantization_config.format".into(), format.as_str()));
    }
    if let Some(groups) = section.get("config_groups").and_then(Value::as_object) {
        for (name, group) in groups {
            if let Some(format) = group.get("format") {
                stated.push((
                    format!("quantization_config.config_groups.{name}.format"),
                    format.as_str(),
                ));
            }
        }
    }
    if stated.is_empty() {
        stated.push(("quantization_config.format".into(), None));
    }
    for (key, format) in stated {
        if format != Some(NVFP4) {
            return Err(LoadError::Config {
                path: path.to_owned(),
                key,
                expected: format!("{NVFP4:?} (the only compressed-tensors format marc loads)"),
                found: format.map_or("nothing".into(), |f| format!("{f:?}")),
            });
        }
    }
    Ok(QuantFormat::CompressedTensorsNvfp4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(files: &[(&str, &str)]) -> Result<Option<CheckpointQuantization>, LoadError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        CheckpointQuantization::detect(dir.path())
    }

    fn format(files: &[(&str, &str)]) -> Option<QuantFormat> {
        detect(files).unwrap().map(|q| q.format)
    }

    #[test]
    fn formats_are_read_from_either_file() {
        assert_eq!(format(&[("config.json", "{\"x\": Infinity}")]), None);
        let hf = r#"{"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "MIXED_PRECISION"}}"#;
        assert_eq!(
            format(&[("config.json", "{}"), (HF_QUANT_CONFIG, hf)]),
            Some(QuantFormat::ModelOptMixed)
        );
        let modelopt = r#"{"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}}"#;
        assert_eq!(format(&[("config.json", modelopt)]), Some(QuantFormat::ModelOptNvfp4));
        let weight_only = r#"{"quantization_config": {"quant_method": "modelopt", "quant_algo": "W4A16_NVFP4"}}"#;
        assert_eq!(
            format(&[("config.json", weight_only)]),
            Some(QuantFormat::ModelOptNvfp4)
        );
        let ct = r#"{"quantization_config": {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
            "config_groups": {"group_0": {"format": "nvfp4-pack-quantized"}}}}"#;
        assert_eq!(
            format(&[("config.json", ct)]),
            Some(QuantFormat::CompressedTensorsNvfp4)
        );
    }

    #[test]
    fn unsupported_declarations_name_the_key() {
        let cases = [
            (
                r#"{"quantization_config": {"quant_method": "gptq"}}"#,
                "quantization_config.quant_method",
                "\"gptq\"",
            ),
            (
                r#"{"quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized"}}"#,
                "quantization_config.format",
                "\"pack-quantized\"",
            ),
            (
                r#"{"quantization_config": {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
                    "config_groups": {"g": {"format": "float-quantized"}}}}"#,
                "quantization_config.config_groups.g.format",
                "\"float-quantized\"",
            ),
            (
                r#"{"quantization_config": {"quant_method": "modelopt", "quant_algo": "W4A8_AWQ"}}"#,
                "quantization_config.quant_algo",
                "W4A8_AWQ",
            ),
        ];
        for (text, key, found) in cases {
            let message = detect(&[("config.json", text)]).unwrap_err().to_string();
            assert!(message.contains(key) && message.contains(found), "{message}");
        }
        let message = detect(&[("config.json", "{}"), (HF_QUANT_CONFIG, "{\"quantization\": {}}")])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("hf_quant_config.json") && message.contains("quant_algo"),
            "{message}"
        );
    }
}
