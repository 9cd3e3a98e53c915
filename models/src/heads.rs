//! Compression heads: small learned (or fitted) networks that turn a middle layer's pooled hidden
//! state into the compact vector marc returns.
//!
//! # On-disk format (`marc-head/1`)
//!
//! A model directory holds its heads under `heads/NAME/`, each as two files:
//!
//! - `head.json`:
//!   ```json
//!   {"format": "marc-head/1", "source_layer": 5, "pooling": "mean",
//!    "layers": [{"activation": "none"}], "output_dim": 64, "normalize": true,
//!    "description": "PCA of 300 items"}
//!   ```
//!   `source_layer` is transformers' `hidden_states[L]` (0 = embeddings, at most the number of
//!   blocks); `pooling` is `mean` or `last`; `layers` lists one object per linear layer with its
//!   `activation` (`none`, `relu`, `tanh`, `silu` or `gelu`, the erf form), applied after it;
//!   `normalize` (default `true`) L2-normalises the output (a zero vector stays zero);
//!   `description` (default empty) is free text. Unknown keys are refused, so a typo is not
//!   silently ignored.
//! - `head.safetensors`: `layers.{i}.weight` `[out, in]` and optionally `layers.{i}.bias` `[out]`
//!   per layer, in f32, bf16 or f16. Layer 0's `in` is the model's hidden size, each layer's `in`
//!   is the previous layer's `out`, and the last layer's `out` is `output_dim`.
//!
//! Entries of `heads/` that are not directories, or whose name starts with `.`, are ignored.
//!
//! # The default head
//!
//! [`default_head`]: the head named `default` if there is one, else the only head if there is
//! exactly one, else none (several heads and none named `default`: the caller must choose).

pub mod pca;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use marc_kernels::MatmulPrecision;
use safetensors::SafeTensors;
use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::TensorRef;
use crate::error::{ForwardError, LoadError};
use crate::pooling::Pooling;
use crate::weights::{Linear, float_dtype, pack, widen_into};

/// The folder of a model directory that holds its heads.
pub const HEADS_DIR: &str = "heads";
/// A head's description file.
pub const HEAD_CONFIG: &str = "head.json";
/// A head's weights file.
pub const HEAD_WEIGHTS: &str = "head.safetensors";
/// The `format` value this version reads and writes.
pub const FORMAT: &str = "marc-head/1";
/// The name of the head used when none is asked for (see [`default_head`]).
pub const DEFAULT_HEAD: &str = "default";

/// The nonlinearity after a head layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `tanh(x)`.
    Tanh,
    /// `x * sigmoid(x)`.
    Silu,
    /// `x * Φ(x)` with the exact (erf) normal CDF, as PyTorch's default `gelu`.
    Gelu,
}

impl Activation {
    /// The name used in `head.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Relu => "relu",
            Self::Tanh => "tanh",
            Self::Silu => "silu",
            Self::Gelu => "gelu",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::None, Self::Relu, Self::Tanh, Self::Silu, Self::Gelu]
            .into_iter()
            .find(|a| a.name() == s)
    }

    /// Applies the activation to one value.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::None => x,
            Self::Relu => x.max(0.0),
            Self::Tanh => x.tanh(),
            Self::Silu => x / (1.0 + (-x).exp()),
            Self::Gelu => {
                let x64 = f64::from(x);
                (0.5 * x64 * (1.0 + libm::erf(x64 / std::f64::consts::SQRT_2))) as f32
            }
        }
    }
}

/// One layer of a head: a Linear and the activation after it.
pub struct HeadLayer {
    /// `[out, in]` weight and optional bias.
    pub linear: Linear,
    /// Applied elementwise to the Linear's output.
    pub activation: Activation,
}

/// A loaded compression head.
pub struct CompressionHead {
    /// The head's folder name under `heads/`.
    pub name: String,
    /// transformers' `hidden_states[L]` the head reads.
    pub source_layer: usize,
    /// How token states are pooled before the head (never [`Pooling::None`]).
    pub pooling: Pooling,
    /// Width of the head's output.
    pub output_dim: usize,
    /// Whether outputs are L2-normalised.
    pub normalize: bool,
    /// Free text from `head.json`.
    pub description: String,
    /// The layers, in order.
    pub layers: Vec<HeadLayer>,
}

impl CompressionHead {
    /// Width of the head's input (the model's hidden size).
    pub fn input_dim(&self) -> usize {
        self.layers[0].linear.weight.cols()
    }

    /// Maps `n` pooled states `[n, input_dim]` to `[n, output_dim]`: [`Self::project`], then L2
    /// normalisation per row when [`Self::normalize`] is set (the norm is accumulated in f64 in a
    /// fixed order; a zero row stays zero).
    pub fn apply(&self, pooled: &[f32], n: usize) -> Result<Vec<f32>, ForwardError> {
        let mut x = self.project(pooled, n)?;
        if self.normalize {
            crate::pooling::l2_normalize_rows(&mut x, self.output_dim);
        }
        Ok(x)
    }

    /// The head's layers without its normalisation: each layer's GEMM over the whole batch, then its
    /// activation. For callers that truncate (Matryoshka) before normalising.
    ///
    /// An item's output is bitwise the same whatever else is in the batch: the GEMM computes
    /// rows independently and everything after it is per row.
    pub fn project(&self, pooled: &[f32], n: usize) -> Result<Vec<f32>, ForwardError> {
        if pooled.len() != n * self.input_dim() {
            return Err(ForwardError::Batch(format!(
                "head `{}`: expected {n} x {} pooled values, found {}",
                self.name,
                self.input_dim(),
                pooled.len()
            )));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut x = pooled.to_vec();
        for layer in &self.layers {
            // A plain vector, not a scratch buffer: the result leaves the engine.
            let mut y = vec![0.0; n * layer.linear.out_features()];
            layer.linear.forward(&x, n, &mut y)?;
            if layer.activation != Activation::None {
                y.iter_mut().for_each(|v| *v = layer.activation.apply(*v));
            }
            x = y;
        }
        Ok(x)
    }
}

/// The head used when the caller names none: `default` if present, else the only head, else none.
pub fn default_head(heads: &[CompressionHead]) -> Option<&CompressionHead> {
    heads
        .iter()
        .find(|h| h.name == DEFAULT_HEAD)
        .or(if heads.len() == 1 { heads.first() } else { None })
}

/// Loads every head under `model_dir/heads/`, sorted by name. No `heads/` folder means no heads.
///
/// `hidden_size` and `num_layers` come from the model's config: the first layer must read
/// `hidden_size` values and `source_layer` must be at most `num_layers`. Any broken head fails the
/// whole load, with an error naming its file, the key or tensor, what was expected and found.
pub fn load_heads(
    model_dir: &Path,
    hidden_size: usize,
    num_layers: usize,
    precision: MatmulPrecision,
) -> Result<Vec<CompressionHead>, LoadError> {
    let dir = model_dir.join(HEADS_DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let io = |source| LoadError::Io {
        path: dir.clone(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|name| load_head(&dir.join(&name), &name, hidden_size, num_layers, precision))
        .collect()
}

fn config_error(path: &Path, key: &str, expected: impl Into<String>, found: impl Into<String>) -> LoadError {
    LoadError::Config {
        path: path.to_owned(),
        key: key.to_owned(),
        expected: expected.into(),
        found: found.into(),
    }
}

fn found(value: Option<&Value>) -> String {
    value.map_or_else(|| "nothing (the key is missing)".to_owned(), Value::to_string)
}

/// `head.json` parsed and checked against the model (not yet against the weights).
struct HeadSpec {
    source_layer: usize,
    pooling: Pooling,
    activations: Vec<Activation>,
    output_dim: usize,
    normalize: bool,
    description: String,
}

const KEYS: [&str; 7] = [
    "format",
    "source_layer",
    "pooling",
    "layers",
    "output_dim",
    "normalize",
    "description",
];

fn parse_spec(path: &Path, text: &str, num_layers: usize) -> Result<HeadSpec, LoadError> {
    let json: Value = serde_json::from_str(text).map_err(|e| LoadError::Json {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let Some(obj) = json.as_object() else {
        return Err(config_error(path, "(top level)", "a JSON object", json.to_string()));
    };
    if let Some(key) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(config_error(
            path,
            key,
            format!("one of the keys {KEYS:?}"),
            "an unknown key",
        ));
    }
    let format = obj.get("format");
    if format.and_then(Value::as_str) != Some(FORMAT) {
        return Err(config_error(path, "format", format!("\"{FORMAT}\""), found(format)));
    }
    let layer = obj.get("source_layer");
    let source_layer = layer
        .and_then(Value::as_u64)
        .map(|l| l as usize)
        .filter(|&l| l <= num_layers)
        .ok_or_else(|| {
            config_error(
                path,
                "source_layer",
                format!("an integer in 0..={num_layers} (the model's hidden states)"),
                found(layer),
            )
        })?;
    let pooling = obj.get("pooling");
    let pooling = match pooling.and_then(Value::as_str) {
        Some("mean") => Pooling::Mean,
        Some("last") => Pooling::Last,
        _ => return Err(config_error(path, "pooling", "\"mean\" or \"last\"", found(pooling))),
    };
    let layers = obj.get("layers");
    let list = layers
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| config_error(path, "layers", "a non-empty array of layers", found(layers)))?;
    let mut activations = Vec::with_capacity(list.len());
    for (i, layer) in list.iter().enumerate() {
        let key = format!("layers[{i}].activation");
        let valid = layer.as_object().filter(|o| o.keys().all(|k| k == "activation"));
        let activation = valid.and_then(|o| o.get("activation"));
        let parsed = activation.and_then(Value::as_str).and_then(Activation::parse);
        match (valid, parsed) {
            (None, _) => {
                return Err(config_error(
                    path,
                    &format!("layers[{i}]"),
                    "an object with only the key \"activation\"",
                    layer.to_string(),
                ));
            }
            (Some(_), None) => {
                return Err(config_error(
                    path,
                    &key,
                    "\"none\", \"relu\", \"tanh\", \"silu\" or \"gelu\"",
                    found(activation),
                ));
            }
            (Some(_), Some(a)) => activations.push(a),
        }
    }
    let dim = obj.get("output_dim");
    let output_dim = dim
        .and_then(Value::as_u64)
        .filter(|&d| d > 0)
        .map(|d| d as usize)
        .ok_or_else(|| config_error(path, "output_dim", "a positive integer", found(dim)))?;
    let normalize = match obj.get("normalize") {
        None => true,
        Some(Value::Bool(b)) => *b,
        other => return Err(config_error(path, "normalize", "true or false", found(other))),
    };
    let description = match obj.get("description") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        other => return Err(config_error(path, "description", "a string", found(other))),
    };
    Ok(HeadSpec {
        source_layer,
        pooling,
        activations,
        output_dim,
        normalize,
        description,
    })
}

/// Loads one head from its folder `dir` (see the module docs for the format).
pub fn load_head(
    dir: &Path,
    name: &str,
    hidden_size: usize,
    num_layers: usize,
    precision: MatmulPrecision,
) -> Result<CompressionHead, LoadError> {
    let config_path = dir.join(HEAD_CONFIG);
    let text = std::fs::read_to_string(&config_path).map_err(|source| LoadError::Io {
        path: config_path.clone(),
        source,
    })?;
    let spec = parse_spec(&config_path, &text, num_layers)?;

    let weights_path = dir.join(HEAD_WEIGHTS);
    let bytes = std::fs::read(&weights_path).map_err(|source| LoadError::Io {
        path: weights_path.clone(),
        source,
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| LoadError::Safetensors {
        path: weights_path.clone(),
        message: e.to_string(),
    })?;
    let tensors: HashMap<String, _> = file.tensors().into_iter().collect();
    let count = spec.activations.len();
    let expected_names: Vec<String> = (0..count)
        .flat_map(|i| [format!("layers.{i}.weight"), format!("layers.{i}.bias")])
        .collect();
    let mut extra: Vec<&String> = tensors.keys().filter(|k| !expected_names.contains(k)).collect();
    extra.sort();
    if let Some(name) = extra.first() {
        return Err(LoadError::Safetensors {
            path: weights_path.clone(),
            message: format!(
                "unexpected tensor `{name}`: {HEAD_CONFIG} lists {count} layer(s), so only layers.0..{count}.{{weight,bias}} belong here"
            ),
        });
    }
    let tensor_ref = |name: &str| {
        tensors.get_key_value(name).map(|(stored, view)| TensorRef {
            name: stored,
            path: &weights_path,
            dtype: view.dtype(),
            shape: view.shape(),
            bytes: view.data(),
        })
    };

    let mut layers = Vec::with_capacity(count);
    let mut width = hidden_size;
    for (i, &activation) in spec.activations.iter().enumerate() {
        let last = i + 1 == count;
        let name = format!("layers.{i}.weight");
        let out_desc = if last {
            format!("{}", spec.output_dim)
        } else {
            "out".to_owned()
        };
        let weight = tensor_ref(&name).ok_or_else(|| LoadError::MissingTensor {
            path: weights_path.clone(),
            tensor: name.clone(),
            expected: format!("a F32/BF16/F16 tensor of shape [{out_desc}, {width}]"),
        })?;
        let rows = match weight.shape {
            &[rows, cols] if cols == width && rows > 0 && (!last || rows == spec.output_dim) => rows,
            shape => {
                let rows = if last {
                    spec.output_dim
                } else {
                    shape.first().copied().unwrap_or(0)
                };
                return Err(LoadError::Shape {
                    path: weights_path.clone(),
                    tensor: name,
                    expected: vec![rows, width],
                    found: shape.to_vec(),
                });
            }
        };
        let packed = pack(&weight, rows, width)?;
        let bias = match tensor_ref(&format!("layers.{i}.bias")) {
            None => None,
            Some(b) => {
                if b.shape != [rows] {
                    return Err(LoadError::Shape {
                        path: weights_path.clone(),
                        tensor: b.name.to_owned(),
                        expected: vec![rows],
                        found: b.shape.to_vec(),
                    });
                }
                let mut v = vec![0.0; rows];
                widen_into(float_dtype(&b)?, b.bytes, &mut v);
                Some(v)
            }
        };
        layers.push(HeadLayer {
            linear: Linear {
                weight: packed,
                bias,
                precision,
                observer: None,
            },
            activation,
        });
        width = rows;
    }
    Ok(CompressionHead {
        name: name.to_owned(),
        source_layer: spec.source_layer,
        pooling: spec.pooling,
        output_dim: spec.output_dim,
        normalize: spec.normalize,
        description: spec.description,
        layers,
    })
}

/// `head.json` as written by [`save_head`].
#[derive(Serialize)]
struct HeadJson<'a> {
    format: &'a str,
    source_layer: usize,
    pooling: &'a str,
    layers: Vec<LayerJson>,
    output_dim: usize,
    normalize: bool,
    description: &'a str,
}

#[derive(Serialize)]
struct LayerJson {
    activation: &'static str,
}

/// One layer of a head to be written: a row-major f32 weight `[out, in]` and optional bias.
pub struct LayerWeights {
    /// `[out, in]`, row-major.
    pub weight: Vec<f32>,
    /// Rows of `weight`.
    pub out: usize,
    /// Columns of `weight`.
    pub input: usize,
    /// `[out]`.
    pub bias: Option<Vec<f32>>,
    /// After the layer.
    pub activation: Activation,
}

/// What a head is, apart from its weights, for [`save_head`].
pub struct HeadInfo<'a> {
    /// transformers' `hidden_states[L]` the head reads.
    pub source_layer: usize,
    /// [`Pooling::Mean`] or [`Pooling::Last`].
    pub pooling: Pooling,
    /// Whether outputs are L2-normalised.
    pub normalize: bool,
    /// Free text.
    pub description: &'a str,
}

/// Why [`save_head`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The head exists and overwriting was not asked for.
    #[error("{0} already exists (overwrite it with --force)")]
    Exists(PathBuf),
    /// The name cannot be a folder under `heads/`.
    #[error("invalid head name {0:?}: use letters, digits, `-`, `_` or `.`, not starting with `.`")]
    Name(String),
    /// The layers do not chain or the pooling is `none`.
    #[error("invalid head: {0}")]
    Invalid(String),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

/// Whether `name` is usable as a head's folder name.
pub fn valid_head_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The folder head `name` of `model_dir` lives in.
pub fn head_dir(model_dir: &Path, name: &str) -> PathBuf {
    model_dir.join(HEADS_DIR).join(name)
}

/// Writes head `name` into `model_dir/heads/name/` (f32 weights), refusing to replace an existing
/// head unless `overwrite`. The files are written into a hidden folder first and moved into place
/// at the end, so a failure leaves no half-written head. Returns the head's folder.
pub fn save_head(
    model_dir: &Path,
    name: &str,
    info: &HeadInfo<'_>,
    layers: &[LayerWeights],
    overwrite: bool,
) -> Result<PathBuf, SaveError> {
    if !valid_head_name(name) {
        return Err(SaveError::Name(name.to_owned()));
    }
    let pooling = match info.pooling {
        Pooling::Mean => "mean",
        Pooling::Last => "last",
        Pooling::None => return Err(SaveError::Invalid("a head needs mean or last pooling".to_owned())),
    };
    let Some(last) = layers.last() else {
        return Err(SaveError::Invalid("a head needs at least one layer".to_owned()));
    };
    for (i, l) in layers.iter().enumerate() {
        let chained = i == 0 || layers[i - 1].out == l.input;
        let sized = l.weight.len() == l.out * l.input && l.bias.as_ref().is_none_or(|b| b.len() == l.out);
        if !chained || !sized || l.out == 0 || l.input == 0 {
            return Err(SaveError::Invalid(format!(
                "layer {i} does not chain or has the wrong size"
            )));
        }
    }
    let final_dir = head_dir(model_dir, name);
    if final_dir.exists() && !overwrite {
        return Err(SaveError::Exists(final_dir));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SaveError::Io { path, source }
    };
    let heads = model_dir.join(HEADS_DIR);
    let staging = heads.join(format!(".{name}.partial"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;

    let json = HeadJson {
        format: FORMAT,
        source_layer: info.source_layer,
        pooling,
        layers: layers
            .iter()
            .map(|l| LayerJson {
                activation: l.activation.name(),
            })
            .collect(),
        output_dim: last.out,
        normalize: info.normalize,
        description: info.description,
    };
    let mut text = serde_json::to_string_pretty(&json).expect("a head's JSON serialises");
    text.push('\n');
    let config_path = staging.join(HEAD_CONFIG);
    std::fs::write(&config_path, text).map_err(io(&config_path))?;

    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut data = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        data.push((format!("layers.{i}.weight"), vec![l.out, l.input], bytes(&l.weight)));
        if let Some(b) = &l.bias {
            data.push((format!("layers.{i}.bias"), vec![l.out], bytes(b)));
        }
    }
    let weights_path = staging.join(HEAD_WEIGHTS);
    let views = data
        .iter()
        .map(|(n, shape, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SaveError::Invalid(e.to_string()))?;
    let serialized = safetensors::tensor::serialize(views, None).map_err(|e| SaveError::Invalid(e.to_string()))?;
    std::fs::write(&weights_path, serialized).map_err(io(&weights_path))?;

    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&staging, &final_dir).map_err(io(&final_dir))?;
    Ok(final_dir)
}

#[cfg(test)]
mod tests;
