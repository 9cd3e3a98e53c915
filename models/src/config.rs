//! `config.json` of a NemotronH-family checkpoint, resolved into the sizes the engine uses.
//!
//! Follows transformers' `NemotronHConfig` (5.2x): the same defaults, the legacy keys NVIDIA's
//! published configs still carry (`hybrid_override_pattern`, `mamba_n_groups`, ...), where a legacy
//! key wins over its modern name as it does there, and bare `Infinity`/`NaN`, which Python's JSON
//! writer emits and strict parsers reject (we parse with JSON5, a superset of JSON that allows them).
//! Everything is validated here, once, so the loader and the forward pass can trust the sizes.

use std::path::{Path, PathBuf};

use marc_kernels::ops::moe_route::RouterConfig;
use serde::Deserialize;

use crate::error::LoadError;

/// Upper bound on any single dimension in a config; larger values are rejected before they can
/// drive an allocation.
const MAX_DIM: usize = 1 << 22;

/// The mixer of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Mamba-2 selective state space mixer (`M`, `linear_attention`, legacy `mamba`).
    Mamba,
    /// Causal grouped-query self-attention (`*`, `full_attention`, legacy `attention`).
    Attention,
    /// Non-gated ReLU² MLP (`-`, `mlp`).
    Mlp,
    /// Mixture of experts, optionally latent (`E`, `moe`).
    Moe,
}

impl BlockKind {
    fn from_pattern_char(c: char) -> Option<Self> {
        match c {
            'M' => Some(Self::Mamba),
            '*' => Some(Self::Attention),
            '-' => Some(Self::Mlp),
            'E' => Some(Self::Moe),
            _ => None,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "linear_attention" | "mamba" => Some(Self::Mamba),
            "full_attention" | "attention" => Some(Self::Attention),
            "mlp" => Some(Self::Mlp),
            "moe" => Some(Self::Moe),
            _ => None,
        }
    }

    /// The one-character code of `hybrid_override_pattern`.
    pub fn pattern_char(self) -> char {
        match self {
            Self::Mamba => 'M',
            Self::Attention => '*',
            Self::Mlp => '-',
            Self::Moe => 'E',
        }
    }
}

/// Sizes of the attention blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (divides `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head; its own field, not necessarily `hidden_size / num_heads`.
    pub head_dim: usize,
}

/// Sizes of the Mamba-2 blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct MambaConfig {
    /// SSM heads.
    pub num_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// State size N.
    pub state_size: usize,
    /// Groups sharing B and C (divides `num_heads`).
    pub n_groups: usize,
    /// Width of the causal depthwise convolution.
    pub conv_kernel: usize,
    /// Tokens per SSD chunk.
    pub chunk_size: usize,
    /// Whether the convolution has a bias.
    pub conv_bias: bool,
    /// Whether `in_proj` and `out_proj` have biases.
    pub proj_bias: bool,
    /// Lower clamp of `dt` after softplus. transformers 5.2x clamps to `[time_step_min, inf)`
    /// and ignores `time_step_limit`; we follow the reference.
    pub dt_min: f32,
}

impl MambaConfig {
    /// `num_heads * head_dim`: width of x, z and y.
    pub fn intermediate_size(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Channels of the convolution: x, B and C.
    pub fn conv_dim(&self) -> usize {
        self.intermediate_size() + 2 * self.n_groups * self.state_size
    }

    /// Output width of `in_proj`: z, xBC and dt.
    pub fn in_proj_size(&self) -> usize {
        self.intermediate_size() + self.conv_dim() + self.num_heads
    }
}

/// Sizes of the dense MLP blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpConfig {
    /// Width of the up projection.
    pub intermediate_size: usize,
    /// Whether up/down projections have biases.
    pub bias: bool,
}

/// Sizes and routing rules of the MoE blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Routed experts.
    pub num_experts: usize,
    /// Experts picked per token.
    pub top_k: usize,
    /// Width of a routed expert's up projection.
    pub expert_intermediate_size: usize,
    /// Width of the shared expert's up projection.
    pub shared_intermediate_size: usize,
    /// Width the routed experts work in, when LatentMoE projects down first.
    pub latent_size: Option<usize>,
    /// Expert groups for group-limited routing.
    pub n_group: usize,
    /// Groups kept per token.
    pub topk_group: usize,
    /// Whether the picked weights are normalised to sum to one.
    pub norm_topk_prob: bool,
    /// Factor applied to the routing weights.
    pub routed_scaling_factor: f32,
    /// Whether expert, shared-expert and latent projections have biases (`mlp_bias`).
    pub bias: bool,
}

impl MoeConfig {
    /// The width routed experts read and write: the latent size, else the hidden size.
    pub fn expert_width(&self, hidden_size: usize) -> usize {
        self.latent_size.unwrap_or(hidden_size)
    }

    /// How tokens are routed, as the routing op takes it.
    pub fn router(&self) -> RouterConfig {
        RouterConfig {
            top_k: self.top_k,
            n_group: self.n_group,
            topk_group: self.topk_group,
            norm_topk_prob: self.norm_topk_prob,
            routed_scaling_factor: self.routed_scaling_factor,
        }
    }
}

/// A validated NemotronH config.
#[derive(Clone, Debug, PartialEq)]
pub struct NemotronHConfig {
    /// Vocabulary size (rows of the embedding table).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// The mixer of each block, in order.
    pub blocks: Vec<BlockKind>,
    /// Epsilon of every RMSNorm.
    pub norm_eps: f32,
    /// Attention sizes.
    pub attention: AttentionConfig,
    /// Mamba sizes.
    pub mamba: MambaConfig,
    /// Dense MLP sizes.
    pub mlp: MlpConfig,
    /// MoE sizes and routing.
    pub moe: MoeConfig,
    /// What the checkpoint says about itself (no effect on the computation).
    pub description: ConfigDescription,
}

/// Descriptive keys of `config.json`, reported by the server's `Info`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigDescription {
    /// `_name_or_path`, if the file has it.
    pub name: Option<String>,
    /// The first of `architectures`, if any.
    pub architecture: Option<String>,
    /// `torch_dtype` (or transformers 5's `dtype`), if any.
    pub dtype: Option<String>,
}

impl NemotronHConfig {
    /// Number of blocks; hidden states are numbered `0..=num_layers`.
    pub fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    /// The block pattern as `hybrid_override_pattern` writes it.
    pub fn pattern(&self) -> String {
        self.blocks.iter().map(|b| b.pattern_char()).collect()
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses and validates config text; `path` only labels errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, LoadError> {
        let raw: RawConfig = json5::from_str(text).map_err(|e| LoadError::Json {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        raw.resolve(path)
    }
}

/// The keys we read, as they appear in the file. Unknown keys are ignored, as transformers does.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    #[serde(rename = "_name_or_path")]
    name_or_path: Option<String>,
    architectures: Option<Vec<String>>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    #[serde(alias = "layer_types")]
    layers_block_type: Option<Vec<String>>,
    hybrid_override_pattern: Option<String>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    intermediate_size: Option<usize>,
    mlp_hidden_act: Option<String>,
    mlp_bias: Option<bool>,
    ssm_state_size: Option<usize>,
    mamba_num_heads: Option<usize>,
    mamba_head_dim: Option<usize>,
    mamba_hidden_act: Option<String>,
    n_groups: Option<usize>,
    mamba_n_groups: Option<usize>,
    conv_kernel: Option<usize>,
    mamba_d_conv: Option<usize>,
    chunk_size: Option<usize>,
    mamba_chunk_size: Option<usize>,
    use_conv_bias: Option<bool>,
    mamba_conv_bias: Option<bool>,
    use_bias: Option<bool>,
    time_step_min: Option<f64>,
    mamba_dt_min: Option<f64>,
    n_routed_experts: Option<usize>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    moe_intermediate_size: Option<usize>,
    moe_shared_expert_intermediate_size: Option<usize>,
    moe_latent_size: Option<usize>,
    n_group: Option<usize>,
    topk_group: Option<usize>,
    norm_topk_prob: Option<bool>,
    routed_scaling_factor: Option<f64>,
    layer_norm_epsilon: Option<f64>,
}

/// Helper that builds config errors for one file.
struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn error(&self, key: &str, expected: impl Into<String>, found: impl ToString) -> LoadError {
        LoadError::Config {
            path: self.path.to_owned(),
            key: key.to_owned(),
            expected: expected.into(),
            found: found.to_string(),
        }
    }

    /// A dimension: positive and bounded.
    fn dim(&self, key: &str, value: usize) -> Result<usize, LoadError> {
        if value == 0 || value > MAX_DIM {
            return Err(self.error(key, format!("an integer in 1..={MAX_DIM}"), value));
        }
        Ok(value)
    }

    fn divides(&self, key: &str, divisor: usize, dividend: usize, what: &str) -> Result<(), LoadError> {
        if !dividend.is_multiple_of(divisor) {
            return Err(self.error(key, format!("a divisor of {what} ({dividend})"), divisor));
        }
        Ok(())
    }

    fn positive_finite(&self, key: &str, value: f64) -> Result<f32, LoadError> {
        if !(value.is_finite() && value > 0.0) {
            return Err(self.error(key, "a positive finite number", value));
        }
        Ok(value as f32)
    }
}

impl RawConfig {
    fn resolve(self, path: &Path) -> Result<NemotronHConfig, LoadError> {
        let check = Checker { path };
        if let Some(model_type) = &self.model_type
            && model_type != "nemotron_h"
        {
            return Err(check.error("model_type", "\"nemotron_h\"", format!("{model_type:?}")));
        }

        let blocks = self.blocks(&check)?;
        let hidden_size = check.dim("hidden_size", self.hidden_size.unwrap_or(4096))?;
        let vocab_size = check.dim("vocab_size", self.vocab_size.unwrap_or(131072))?;
        let norm_eps = check.positive_finite("layer_norm_epsilon", self.layer_norm_epsilon.unwrap_or(1e-5))?;
        let has = |kind| blocks.contains(&kind);

        let num_heads = check.dim("num_attention_heads", self.num_attention_heads.unwrap_or(32))?;
        let num_kv_heads = check.dim("num_key_value_heads", self.num_key_value_heads.unwrap_or(8))?;
        let attention = AttentionConfig {
            num_heads,
            num_kv_heads,
            head_dim: check.dim("head_dim", self.head_dim.unwrap_or(128))?,
        };
        if has(BlockKind::Attention) {
            check.divides("num_key_value_heads", num_kv_heads, num_heads, "num_attention_heads")?;
        }

        let mamba = MambaConfig {
            num_heads: check.dim("mamba_num_heads", self.mamba_num_heads.unwrap_or(128))?,
            head_dim: check.dim("mamba_head_dim", self.mamba_head_dim.unwrap_or(64))?,
            state_size: check.dim("ssm_state_size", self.ssm_state_size.unwrap_or(128))?,
            n_groups: check.dim("n_groups", self.mamba_n_groups.or(self.n_groups).unwrap_or(8))?,
            conv_kernel: check.dim("conv_kernel", self.mamba_d_conv.or(self.conv_kernel).unwrap_or(4))?,
            chunk_size: check.dim("chunk_size", self.mamba_chunk_size.or(self.chunk_size).unwrap_or(128))?,
            conv_bias: self.mamba_conv_bias.or(self.use_conv_bias).unwrap_or(true),
            proj_bias: self.use_bias.unwrap_or(false),
            dt_min: {
                let dt_min = self.mamba_dt_min.or(self.time_step_min).unwrap_or(0.001);
                if !(dt_min.is_finite() && dt_min >= 0.0) {
                    return Err(check.error("time_step_min", "a finite number >= 0", dt_min));
                }
                dt_min as f32
            },
        };
        if has(BlockKind::Mamba) {
            check.divides("n_groups", mamba.n_groups, mamba.num_heads, "mamba_num_heads")?;
            let act = self.mamba_hidden_act.as_deref().unwrap_or("silu");
            if act != "silu" {
                return Err(check.error("mamba_hidden_act", "\"silu\"", format!("{act:?}")));
            }
        }

        let mlp_bias = self.mlp_bias.unwrap_or(false);
        let mlp = MlpConfig {
            intermediate_size: check.dim("intermediate_size", self.intermediate_size.unwrap_or(21504))?,
            bias: mlp_bias,
        };
        if has(BlockKind::Mlp) || has(BlockKind::Moe) {
            let act = self.mlp_hidden_act.as_deref().unwrap_or("relu2");
            if act != "relu2" {
                return Err(check.error("mlp_hidden_act", "\"relu2\"", format!("{act:?}")));
            }
        }

        let moe = MoeConfig {
            num_experts: check.dim(
                "n_routed_experts",
                self.n_routed_experts.or(self.num_local_experts).unwrap_or(8),
            )?,
            top_k: check.dim("num_experts_per_tok", self.num_experts_per_tok.unwrap_or(2))?,
            expert_intermediate_size: check.dim("moe_intermediate_size", self.moe_intermediate_size.unwrap_or(7688))?,
            shared_intermediate_size: check.dim(
                "moe_shared_expert_intermediate_size",
                self.moe_shared_expert_intermediate_size.unwrap_or(7688),
            )?,
            latent_size: self
                .moe_latent_size
                .map(|v| check.dim("moe_latent_size", v))
                .transpose()?,
            n_group: check.dim("n_group", self.n_group.unwrap_or(1))?,
            topk_group: check.dim("topk_group", self.topk_group.unwrap_or(1))?,
            norm_topk_prob: self.norm_topk_prob.unwrap_or(true),
            routed_scaling_factor: {
                let f = self.routed_scaling_factor.unwrap_or(1.0);
                if !f.is_finite() {
                    return Err(check.error("routed_scaling_factor", "a finite number", f));
                }
                f as f32
            },
            bias: mlp_bias,
        };
        if has(BlockKind::Moe) {
            check.divides("n_group", moe.n_group, moe.num_experts, "n_routed_experts")?;
            let per_group = moe.num_experts / moe.n_group;
            // A group's score is the sum of its two best experts, so each group needs two.
            if per_group < 2 {
                return Err(check.error(
                    "n_group",
                    format!(
                        "at most n_routed_experts / 2 = {} (a group scores its two best experts)",
                        moe.num_experts / 2
                    ),
                    moe.n_group,
                ));
            }
            if moe.topk_group > moe.n_group {
                return Err(check.error(
                    "topk_group",
                    format!("at most n_group ({})", moe.n_group),
                    moe.topk_group,
                ));
            }
            let reachable = moe.topk_group * per_group;
            if moe.top_k > reachable {
                return Err(check.error(
                    "num_experts_per_tok",
                    format!("at most topk_group * experts per group ({reachable})"),
                    moe.top_k,
                ));
            }
        }

        Ok(NemotronHConfig {
            vocab_size,
            hidden_size,
            blocks,
            norm_eps,
            attention,
            mamba,
            mlp,
            moe,
            description: ConfigDescription {
                name: self.name_or_path,
                architecture: self.architectures.and_then(|a| a.into_iter().next()),
                dtype: self.torch_dtype.or(self.dtype),
            },
        })
    }

    /// The block list: `layers_block_type` (alias `layer_types`) wins, as in transformers; else
    /// `hybrid_override_pattern`; else transformers' default.
    fn blocks(&self, check: &Checker<'_>) -> Result<Vec<BlockKind>, LoadError> {
        let blocks = if let Some(list) = &self.layers_block_type {
            list.iter()
                .map(|name| {
                    BlockKind::from_name(name).ok_or_else(|| {
                        check.error(
                            "layers_block_type",
                            "only linear_attention (mamba), full_attention (attention), mlp, moe",
                            format!("{name:?}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        } else if let Some(pattern) = &self.hybrid_override_pattern {
            pattern
                .chars()
                .map(|c| {
                    BlockKind::from_pattern_char(c).ok_or_else(|| {
                        check.error(
                            "hybrid_override_pattern",
                            "only the block codes M (Mamba), * (attention), - (MLP), E (MoE)",
                            format!("{c:?} in {pattern:?}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![BlockKind::Mamba, BlockKind::Moe, BlockKind::Attention, BlockKind::Mlp]
        };
        if blocks.is_empty() {
            return Err(check.error("hybrid_override_pattern", "at least one block", "none"));
        }
        if blocks.len() > 4096 {
            return Err(check.error("hybrid_override_pattern", "at most 4096 blocks", blocks.len()));
        }
        Ok(blocks)
    }
}

/// The conventional path of a checkpoint's config.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NemotronHConfig, LoadError> {
        NemotronHConfig::from_json(text, Path::new("config.json"))
    }

    #[test]
    fn bench_config_parses_with_bare_infinity() {
        let text = include_str!("../configs/bench-150m.json");
        let config = parse(text).unwrap();
        assert_eq!(config.pattern(), "ME*M-EME*M-E");
        assert_eq!(config.mamba.in_proj_size(), 2048 + 2560 + 32);
        assert_eq!(config.moe.latent_size, Some(512));
        assert_eq!(config.description.architecture.as_deref(), Some("NemotronHForCausalLM"));
        assert_eq!(config.description.dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn legacy_keys_win_over_modern_ones() {
        let config = parse(
            r#"{"hybrid_override_pattern": "M", "n_groups": 8, "mamba_n_groups": 2,
                "mamba_num_heads": 4, "mamba_d_conv": 3, "mamba_chunk_size": 16, "mamba_dt_min": 0.01,
                "time_step_limit": [0.0, Infinity], "x": NaN}"#,
        )
        .unwrap();
        assert_eq!(config.mamba.n_groups, 2);
        assert_eq!(config.mamba.conv_kernel, 3);
        assert_eq!(config.mamba.chunk_size, 16);
        assert_eq!(config.mamba.dt_min, 0.01);
    }

    #[test]
    fn layer_list_accepts_legacy_names() {
        let config = parse(r#"{"layers_block_type": ["mamba", "attention", "mlp", "moe", "full_attention"]}"#).unwrap();
        assert_eq!(config.pattern(), "M*-E*");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{"hybrid_override_pattern": "MX"}"#, "hybrid_override_pattern"),
            (
                r#"{"hybrid_override_pattern": "*", "num_attention_heads": 6, "num_key_value_heads": 4}"#,
                "num_key_value_heads",
            ),
            (
                r#"{"hybrid_override_pattern": "E", "n_routed_experts": 8, "n_group": 3}"#,
                "n_group",
            ),
            (
                r#"{"hybrid_override_pattern": "-", "mlp_hidden_act": "gelu"}"#,
                "mlp_hidden_act",
            ),
            (r#"{"hybrid_override_pattern": "M", "hidden_size": 0}"#, "hidden_size"),
            (r#"{"model_type": "llama"}"#, "model_type"),
        ];
        for (text, key) in cases {
            let message = parse(text).unwrap_err().to_string();
            assert!(message.contains(&format!("`{key}`")), "{text}: {message}");
        }
        assert!(matches!(parse("{oops").unwrap_err(), LoadError::Json { .. }));
    }
}
