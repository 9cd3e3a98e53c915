//! Writing NVFP4 checkpoints (`marc quantize`): weight-only calibration with ModelOpt's
//! two-level scales (`weight_scale_2 = amax / (6 * 448)`, E4M3 block scales per 16 inputs, see
//! `marc_kernels::quant::nvfp4`), in ModelOpt's or compressed-tensors' layout.
//!
//! Which weights are quantised follows ModelOpt's `NVFP4_DEFAULT_CFG` on NemotronH: every 2-D
//! Linear weight of the blocks (Mamba in/out_proj, attention, MLPs, routed and shared experts,
//! latent projections); not the embeddings, `lm_head`, the MoE router `gate`, conv1d, norms or
//! SSM parameters ([`DEFAULT_EXCLUDES`], plus what is not a float matrix), nor a matrix whose
//! `in_features` is not a multiple of 16. Stacked experts (transformers' `experts.up_proj
//! [E, out, in]`) are written one quantised tensor per expert, as NVIDIA's checkpoints are.
//! Input files map one to one onto output files, so memory holds one shard at a time.
//!
//! Like ModelOpt's export, the projections a serving engine fuses into one GEMM share one tensor
//! scale: `q_proj`, `k_proj` and `v_proj` of an attention block get `weight_scale_2` of the
//! largest of their three `amax` (their block scales follow from it), so the fused QKV weight has
//! one scale.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use marc_kernels::quant::{NVFP4_BLOCK, nvfp4_quantize, nvfp4_tensor_scale};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::{Value, json};

use super::format::HF_QUANT_CONFIG;
use crate::checkpoint::{Checkpoint, INDEX_FILE, TensorRef, canonical_name};
use crate::config::{NemotronHConfig, config_path};
use crate::error::LoadError;
use crate::weights::{FloatType, float_dtype, widen_into};

/// ModelOpt's `quant_algo` for NVFP4 weights without activation scales.
const WEIGHT_ONLY_ALGO: &str = "W4A16_NVFP4";
/// ModelOpt's `quant_algo` for NVFP4 weights and activations (with input scales).
const W4A4_ALGO: &str = "NVFP4";

/// Projections that share one tensor scale with their siblings under the same parent (fused QKV).
const FUSED_SIBLINGS: [&str; 3] = ["q_proj", "k_proj", "v_proj"];

/// Modules never quantised (glob patterns on module names, `*` any run of characters), as
/// ModelOpt leaves them: embeddings, `lm_head`, the MoE router, and multi-token-prediction heads.
pub const DEFAULT_EXCLUDES: &[&str] = &["*embeddings", "lm_head", "*.gate", "mtp.*"];

/// The layout written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// NVIDIA ModelOpt's export: `weight` U8, `weight_scale` F8_E4M3, `weight_scale_2` F32, plus
    /// `hf_quant_config.json`.
    ModelOpt,
    /// compressed-tensors `nvfp4-pack-quantized`: `weight_packed`, `weight_scale`,
    /// `weight_global_scale` (the reciprocal of ModelOpt's tensor scale).
    CompressedTensors,
}

/// What to quantise and how to write it.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// The layout.
    pub format: OutputFormat,
    /// More module-name patterns to leave unquantised, besides [`DEFAULT_EXCLUDES`].
    pub exclude: Vec<String>,
    /// The calibrated input amax per Linear (canonical module names, see
    /// [`crate::quant::calibration`]): when given, every NVFP4 layer also gets its static input
    /// scale (`amax / (6 * 448)`), so the checkpoint runs W4A4; without, it is weight-only.
    pub input_amax: Option<HashMap<String, f32>>,
}

/// What was written.
#[derive(Clone, Debug, Default)]
pub struct QuantizeSummary {
    /// Modules written as NVFP4 (stored names, without `.weight`).
    pub quantized: Vec<String>,
    /// 2-D float weights left as they were (stored module names), with the reason.
    pub kept: Vec<(String, &'static str)>,
    /// Bytes of tensors written.
    pub bytes_written: u64,
    /// NVFP4 modules written with a calibrated input scale.
    pub calibrated: usize,
}

/// Why a checkpoint could not be quantised.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// The input does not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The input is quantised already.
    #[error("{path}: the checkpoint is quantised already ({format}); quantise the unquantised original")]
    AlreadyQuantized {
        /// The file that says so.
        path: PathBuf,
        /// Its format.
        format: &'static str,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// One tensor to write.
struct Output {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Quantises the checkpoint in `input` into `output` (an existing, writable directory): weights
/// and `config.json` with its `quantization_config` (and `hf_quant_config.json` for ModelOpt).
/// Tokenizer and heads are the caller's to copy. `progress(done, total)` gets input bytes.
pub fn quantize_checkpoint(
    input: &Path,
    output: &Path,
    options: &QuantizeOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<QuantizeSummary, QuantizeError> {
    NemotronHConfig::from_file(&config_path(input))?;
    if let Some(declared) = super::CheckpointQuantization::detect(input)? {
        return Err(QuantizeError::AlreadyQuantized {
            path: declared.declared_in,
            format: declared.format.name(),
        });
    }
    let checkpoint = Checkpoint::open(input)?;
    let total = checkpoint.total_bytes(|_| true)?;
    let excludes: Vec<&str> = DEFAULT_EXCLUDES
        .iter()
        .copied()
        .chain(options.exclude.iter().map(String::as_str))
        .collect();
    let fused_amax = fused_amax(&checkpoint)?;
    let mut summary = QuantizeSummary::default();
    let mut weight_map = BTreeMap::new();
    let mut done = 0u64;
    progress(done, total);
    for (path, names) in checkpoint.files() {
        let file_name = path.file_name().map(PathBuf::from).unwrap_or_default();
        let mut outputs = Vec::new();
        for canonical in names {
            let t = checkpoint
                .get(canonical)?
                .expect("Checkpoint::files lists only tensors it holds");
            encode_tensor(&t, options, &excludes, &fused_amax, &mut outputs, &mut summary)?;
            done += t.bytes.len() as u64;
            progress(done, total);
        }
        let out_path = output.join(&file_name);
        for o in &outputs {
            weight_map.insert(o.name.clone(), file_name.to_string_lossy().into_owned());
            summary.bytes_written += o.bytes.len() as u64;
        }
        write_safetensors(&out_path, outputs)?;
    }
    if checkpoint.is_sharded() {
        let index = json!({"metadata": {"total_size": summary.bytes_written}, "weight_map": weight_map});
        write_text(&output.join(INDEX_FILE), &pretty(&index))?;
    }
    summary.quantized.sort();
    write_configs(input, output, options.format, &summary)?;
    Ok(summary)
}

/// The parent module of a fused sibling (`...mixer` of `...mixer.k_proj`).
fn fused_parent(module: &str) -> Option<&str> {
    let (parent, leaf) = module.rsplit_once('.')?;
    FUSED_SIBLINGS.contains(&leaf).then_some(parent)
}

fn amax_of(dtype: FloatType, bytes: &[u8]) -> f32 {
    let mut values = vec![0.0f32; bytes.len() / dtype.size_in_bytes()];
    widen_into(dtype, bytes, &mut values);
    values.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The largest `amax` of each group of fused siblings, by parent module.
fn fused_amax(checkpoint: &Checkpoint) -> Result<HashMap<String, f32>, QuantizeError> {
    let mut groups: HashMap<String, f32> = HashMap::new();
    for (_, names) in checkpoint.files() {
        for canonical in names {
            let Some(parent) = canonical.strip_suffix(".weight").and_then(fused_parent) else {
                continue;
            };
            let t = checkpoint
                .get(canonical)?
                .expect("Checkpoint::files lists only tensors it holds");
            if let (Ok(dtype), 2) = (float_dtype(&t), t.shape.len()) {
                let amax = amax_of(dtype, t.bytes);
                let group = groups.entry(parent.to_owned()).or_insert(0.0);
                *group = group.max(amax);
            }
        }
    }
    Ok(groups)
}

/// Appends what `t` becomes to `out`: NVFP4 tensors, one per expert for stacked experts, or `t`
/// as it is.
fn encode_tensor(
    t: &TensorRef<'_>,
    options: &QuantizeOptions,
    excludes: &[&str],
    fused_amax: &HashMap<String, f32>,
    out: &mut Vec<Output>,
    summary: &mut QuantizeSummary,
) -> Result<(), QuantizeError> {
    let keep = |out: &mut Vec<Output>| {
        out.push(Output {
            name: t.name.to_owned(),
            dtype: t.dtype,
            shape: t.shape.to_vec(),
            bytes: t.bytes.to_vec(),
        })
    };
    let Ok(dtype) = float_dtype(t) else {
        keep(out);
        return Ok(());
    };
    // transformers' stacked experts `...experts.up_proj [E, out, in]` -> `...experts.K.up_proj`.
    let stacked = ["up_proj", "down_proj"]
        .iter()
        .find(|p| canonical_name(t.name).ends_with(&format!("experts.{p}")));
    let modules: Vec<(String, &[u8], [usize; 2])> = match (t.shape, t.name.strip_suffix(".weight"), stacked) {
        (&[rows, cols], Some(module), None) => vec![(module.to_owned(), t.bytes, [rows, cols])],
        (&[experts, rows, cols], _, Some(proj)) => {
            let prefix = &t.name[..t.name.len() - proj.len()];
            let size = t.bytes.len() / experts.max(1);
            (0..experts)
                .map(|e| {
                    (
                        format!("{prefix}{e}.{proj}"),
                        &t.bytes[e * size..(e + 1) * size],
                        [rows, cols],
                    )
                })
                .collect()
        }
        _ => {
            keep(out);
            return Ok(());
        }
    };
    for (module, bytes, [rows, cols]) in modules {
        let reason = if excludes
            .iter()
            .any(|p| glob_match(p, &module) || glob_match(p, canonical_name(&module)))
        {
            Some("excluded")
        } else if !cols.is_multiple_of(NVFP4_BLOCK) {
            Some("in_features is not a multiple of 16")
        } else {
            None
        };
        let mut values = vec![0.0f32; rows * cols];
        widen_into(dtype, bytes, &mut values);
        let own_amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let amax = fused_parent(canonical_name(&module))
            .and_then(|parent| fused_amax.get(parent))
            .map_or(own_amax, |group| group.max(own_amax));
        let reason = reason.or((amax == 0.0).then_some("all zeros"));
        if let Some(reason) = reason {
            summary.kept.push((module.clone(), reason));
            out.push(Output {
                name: format!("{module}.weight"),
                dtype: t.dtype,
                shape: vec![rows, cols],
                bytes: bytes.to_vec(),
            });
            continue;
        }
        let tensor_scale = nvfp4_tensor_scale(amax);
        let mut packed = vec![0u8; rows * cols / 2];
        let mut scales = vec![0u8; rows * cols / NVFP4_BLOCK];
        nvfp4_quantize(&values, tensor_scale, &mut packed, &mut scales).map_err(|source| {
            // The quantiser refuses NaN and infinite weights.
            LoadError::Kernel {
                path: t.path.to_owned(),
                tensor: t.name.to_owned(),
                source,
            }
        })?;
        let (packed_name, global_name, global_shape, global) = match options.format {
            OutputFormat::ModelOpt => ("weight", "weight_scale_2", vec![], tensor_scale),
            OutputFormat::CompressedTensors => ("weight_packed", "weight_global_scale", vec![1], 1.0 / tensor_scale),
        };
        out.push(Output {
            name: format!("{module}.{packed_name}"),
            dtype: Dtype::U8,
            shape: vec![rows, cols / 2],
            bytes: packed,
        });
        out.push(Output {
            name: format!("{module}.weight_scale"),
            dtype: Dtype::F8_E4M3,
            shape: vec![rows, cols / NVFP4_BLOCK],
            bytes: scales,
        });
        out.push(Output {
            name: format!("{module}.{global_name}"),
            dtype: Dtype::F32,
            shape: global_shape.clone(),
            bytes: global.to_le_bytes().to_vec(),
        });
        if let Some(amax) = &options.input_amax {
            let scale = nvfp4_tensor_scale(input_amax(amax, &module, t)?);
            let (name, value) = match options.format {
                OutputFormat::ModelOpt => ("input_scale", scale),
                OutputFormat::CompressedTensors => ("input_global_scale", 1.0 / scale),
            };
            out.push(Output {
                name: format!("{module}.{name}"),
                dtype: Dtype::F32,
                shape: global_shape,
                bytes: value.to_le_bytes().to_vec(),
            });
            summary.calibrated += 1;
        }
        summary.quantized.push(module);
    }
    Ok(())
}

/// The calibrated input amax of `module`. Routed experts share one input scale per layer and
/// projection, the largest of theirs (ModelOpt exports MoE layers so, which lets a grouped GEMM
/// quantise every expert's rows alike). A module with no amax is an error naming it.
fn input_amax(amax: &HashMap<String, f32>, module: &str, t: &TensorRef<'_>) -> Result<f32, QuantizeError> {
    let canonical = canonical_name(module);
    let usable = |v: f32| (v.is_finite() && v > 0.0).then_some(v);
    // `layers.N.mixer.experts.E.up_proj` -> (`layers.N.mixer`, `up_proj`).
    let expert_of = |name: &str| {
        let (layer, rest) = name.split_once(".experts.")?;
        let (index, proj) = rest.split_once('.')?;
        index.parse::<usize>().ok().map(|_| (layer.to_owned(), proj.to_owned()))
    };
    let found = match expert_of(canonical) {
        Some(group) => amax
            .iter()
            .filter(|(name, _)| expert_of(name).as_ref() == Some(&group))
            .filter_map(|(_, &v)| usable(v))
            .reduce(f32::max),
        None => amax.get(canonical).copied().and_then(usable),
    };
    found.ok_or_else(|| {
        QuantizeError::Load(LoadError::Unsupported {
            path: t.path.to_owned(),
            tensor: t.name.to_owned(),
            message: format!(
                "no calibrated input amax for {canonical}: the calibration corpus never ran it (or its inputs \
                 were all zero); calibrate with more text, or exclude it"
            ),
        })
    })
}

fn write_safetensors(path: &Path, mut outputs: Vec<Output>) -> Result<(), QuantizeError> {
    outputs.sort_by(|a, b| a.name.cmp(&b.name));
    let views = outputs
        .iter()
        .map(|o| {
            TensorView::new(o.dtype, o.shape.clone(), &o.bytes)
                .map(|view| (o.name.clone(), view))
                .map_err(|e| QuantizeError::Write {
                    path: path.to_owned(),
                    message: format!("tensor `{}`: {e}", o.name),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = Some([("format".to_owned(), "pt".to_owned())].into_iter().collect());
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| QuantizeError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn write_text(path: &Path, text: &str) -> Result<(), QuantizeError> {
    std::fs::write(path, text).map_err(|e| QuantizeError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON values always serialise") + "\n"
}

/// `config.json` with a `quantization_config` added (inserted as text, so the rest of the file,
/// bare `Infinity` included, stays as it was), and ModelOpt's `hf_quant_config.json`.
fn write_configs(
    input: &Path,
    output: &Path,
    format: OutputFormat,
    summary: &QuantizeSummary,
) -> Result<(), QuantizeError> {
    let source = config_path(input);
    let text = std::fs::read_to_string(&source).map_err(|e| LoadError::Io {
        path: source.clone(),
        source: e,
    })?;
    let ignore: Vec<&str> = summary.kept.iter().map(|(m, _)| m.as_str()).collect();
    let producer = json!({"name": "marc", "version": env!("CARGO_PKG_VERSION")});
    let weights = json!({"dynamic": false, "num_bits": 4, "type": "float", "group_size": NVFP4_BLOCK});
    // With calibrated input scales the layers run W4A4: ModelOpt's "NVFP4", compressed-tensors'
    // NVFP4 activation scheme (per-16 block scales computed at run time, a static global scale).
    let calibrated = summary.calibrated > 0;
    let algo = if calibrated { W4A4_ALGO } else { WEIGHT_ONLY_ALGO };
    let activations = calibrated.then(|| {
        json!({"num_bits": 4, "type": "float", "symmetric": true, "group_size": NVFP4_BLOCK,
               "strategy": "tensor_group", "dynamic": "local", "scale_dtype": "torch.float8_e4m3fn"})
    });
    let section = match format {
        OutputFormat::ModelOpt => {
            let hf = json!({
                "producer": producer,
                "quantization": {"quant_algo": algo, "kv_cache_quant_algo": null,
                                 "group_size": NVFP4_BLOCK, "exclude_modules": ignore},
            });
            write_text(&output.join(HF_QUANT_CONFIG), &pretty(&hf))?;
            json!({
                "quant_method": "modelopt", "quant_algo": algo, "group_size": NVFP4_BLOCK,
                "producer": producer, "ignore": ignore,
                "config_groups": {"group_0": {"weights": weights, "targets": ["Linear"]}},
            })
        }
        OutputFormat::CompressedTensors => json!({
            "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
            "quantization_status": "compressed", "ignore": ignore, "kv_cache_scheme": null,
            "config_groups": {"group_0": {
                "format": "nvfp4-pack-quantized", "targets": ["Linear"],
                "weights": {"num_bits": 4, "type": "float", "symmetric": true, "group_size": NVFP4_BLOCK,
                            "strategy": "tensor_group", "dynamic": false, "scale_dtype": "torch.float8_e4m3fn"},
                "input_activations": activations, "output_activations": null,
            }},
        }),
    };
    let Some(close) = text.rfind('}') else {
        return Err(LoadError::Json {
            path: source,
            message: "no closing brace".into(),
        }
        .into());
    };
    let body = text[..close].trim_end();
    let separator = if body.ends_with('{') { "" } else { "," };
    let inserted = format!(
        "{body}{separator}\n  \"quantization_config\": {}\n}}\n",
        serde_json::to_string(&section).expect("JSON values always serialise")
    );
    write_text(&config_path(output), &inserted)
}

/// fnmatch-style matching with `*` (any run, also empty) and `?` (one character).
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_fnmatch() {
        assert!(glob_match("*.gate", "backbone.layers.3.mixer.gate"));
        assert!(!glob_match("*.gate", "backbone.layers.3.mixer.gate_proj"));
        assert!(glob_match("lm_head", "lm_head"));
        assert!(glob_match("*embeddings", "backbone.embeddings"));
        assert!(glob_match("*layers.?.mixer*", "backbone.layers.3.mixer.in_proj"));
        assert!(!glob_match("*layers.?.mixer*", "backbone.layers.13.mixer.in_proj"));
        assert!(glob_match("*", ""));
    }
}
