//! Random checkpoints in NVIDIA's on-disk layout for a given config: what benchmarks run on
//! (no weights can be downloaded here) and what the malformed-checkpoint tests start from.
//! Values are scaled like a trained model's (uniform with variance `1 / fan_in`), so
//! activations stay in range through many layers.

use std::path::Path;

use half::bf16;
use safetensors::Dtype;

use crate::config::{BlockKind, NemotronHConfig};
use crate::error::LoadError;

/// How a tensor is initialised.
#[derive(Clone, Copy, Debug)]
enum Init {
    /// Uniform with variance `1 / fan_in` (the last dimension).
    FanIn,
    /// `1 + 0.1 * u`, `u` uniform in [-1, 1) (norm weights).
    NearOne,
    /// Uniform in [lo, hi).
    Uniform(f32, f32),
    /// `ln(1..=n)` along the tensor (Mamba's `A_log`).
    LogRange,
}

/// Names (NVIDIA layout, `backbone.` prefix) and shapes of every tensor the config needs.
fn tensor_specs(config: &NemotronHConfig) -> Vec<(String, Vec<usize>, Init)> {
    let h = config.hidden_size;
    let mut specs = vec![(
        "backbone.embeddings.weight".to_owned(),
        vec![config.vocab_size, h],
        Init::Uniform(-1.0, 1.0),
    )];
    let linear = |specs: &mut Vec<_>, name: String, rows: usize, cols: usize, bias: bool| {
        specs.push((format!("{name}.weight"), vec![rows, cols], Init::FanIn));
        if bias {
            specs.push((format!("{name}.bias"), vec![rows], Init::Uniform(-0.1, 0.1)));
        }
    };
    for (layer, kind) in config.blocks.iter().enumerate() {
        let p = format!("backbone.layers.{layer}");
        specs.push((format!("{p}.norm.weight"), vec![h], Init::NearOne));
        let p = format!("{p}.mixer");
        match kind {
            BlockKind::Mamba => {
                let m = &config.mamba;
                let (inner, conv, heads) = (m.intermediate_size(), m.conv_dim(), m.num_heads);
                linear(&mut specs, format!("{p}.in_proj"), m.in_proj_size(), h, m.proj_bias);
                specs.push((
                    format!("{p}.conv1d.weight"),
                    vec![conv, 1, m.conv_kernel],
                    Init::Uniform(-0.5, 0.5),
                ));
                if m.conv_bias {
                    specs.push((format!("{p}.conv1d.bias"), vec![conv], Init::Uniform(-0.1, 0.1)));
                }
                specs.push((format!("{p}.A_log"), vec![heads], Init::LogRange));
                specs.push((format!("{p}.D"), vec![heads], Init::NearOne));
                specs.push((format!("{p}.dt_bias"), vec![heads], Init::Uniform(-4.0, -2.0)));
                specs.push((format!("{p}.norm.weight"), vec![inner], Init::NearOne));
                linear(&mut specs, format!("{p}.out_proj"), h, inner, m.proj_bias);
            }
            BlockKind::Attention => {
                let a = &config.attention;
                let (q, kv) = (a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim);
                linear(&mut specs, format!("{p}.q_proj"), q, h, false);
                linear(&mut specs, format!("{p}.k_proj"), kv, h, false);
                linear(&mut specs, format!("{p}.v_proj"), kv, h, false);
                linear(&mut specs, format!("{p}.o_proj"), h, q, false);
            }
            BlockKind::Mlp => {
                let (i, bias) = (config.mlp.intermediate_size, config.mlp.bias);
                linear(&mut specs, format!("{p}.up_proj"), i, h, bias);
                linear(&mut specs, format!("{p}.down_proj"), h, i, bias);
            }
            BlockKind::Moe => {
                let m = &config.moe;
                let w = m.expert_width(h);
                specs.push((format!("{p}.gate.weight"), vec![m.num_experts, h], Init::FanIn));
                specs.push((
                    format!("{p}.gate.e_score_correction_bias"),
                    vec![m.num_experts],
                    Init::Uniform(-0.05, 0.05),
                ));
                for e in 0..m.num_experts {
                    linear(
                        &mut specs,
                        format!("{p}.experts.{e}.up_proj"),
                        m.expert_intermediate_size,
                        w,
                        false,
                    );
                    linear(
                        &mut specs,
                        format!("{p}.experts.{e}.down_proj"),
                        w,
                        m.expert_intermediate_size,
                        false,
                    );
                }
                linear(
                    &mut specs,
                    format!("{p}.shared_experts.up_proj"),
                    m.shared_intermediate_size,
                    h,
                    m.bias,
                );
                linear(
                    &mut specs,
                    format!("{p}.shared_experts.down_proj"),
                    h,
                    m.shared_intermediate_size,
                    m.bias,
                );
                if let Some(latent) = m.latent_size {
                    linear(&mut specs, format!("{p}.fc1_latent_proj"), latent, h, m.bias);
                    linear(&mut specs, format!("{p}.fc2_latent_proj"), h, latent, m.bias);
                }
            }
        }
    }
    specs.push(("backbone.norm_f.weight".to_owned(), vec![h], Init::NearOne));
    specs
}

/// A small deterministic generator (SplitMix64); quality is ample for weights.
struct SplitMix(u64);

impl SplitMix {
    fn next_unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // 24 random bits -> [-1, 1).
        ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

fn values(shape: &[usize], init: Init, rng: &mut SplitMix) -> Vec<f32> {
    let n: usize = shape.iter().product();
    match init {
        Init::FanIn => {
            let bound = (3.0 / *shape.last().unwrap_or(&1) as f32).sqrt();
            (0..n).map(|_| bound * rng.next_unit()).collect()
        }
        Init::NearOne => (0..n).map(|_| 1.0 + 0.1 * rng.next_unit()).collect(),
        Init::Uniform(lo, hi) => (0..n).map(|_| lo + (hi - lo) * (rng.next_unit() + 1.0) / 2.0).collect(),
        Init::LogRange => (1..=n).map(|i| (i as f32).ln()).collect(),
    }
}

/// The element type of a synthetic checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticDType {
    /// 32-bit floats.
    F32,
    /// bfloat16.
    BF16,
}

/// Writes `config_json` and a random `model.safetensors` for it into `dir`.
pub fn write_random_checkpoint(
    config_json: &str,
    dir: &Path,
    dtype: SyntheticDType,
    seed: u64,
) -> Result<(), LoadError> {
    let config_path = dir.join("config.json");
    let config = NemotronHConfig::from_json(config_json, &config_path)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| LoadError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::write(&config_path, config_json).map_err(io(&config_path))?;

    let mut rng = SplitMix(seed);
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = tensor_specs(&config)
        .into_iter()
        .map(|(name, shape, init)| {
            let v = values(&shape, init, &mut rng);
            let bytes = match dtype {
                SyntheticDType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                SyntheticDType::BF16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(),
            };
            (name, shape, bytes)
        })
        .collect();
    let st_dtype = match dtype {
        SyntheticDType::F32 => Dtype::F32,
        SyntheticDType::BF16 => Dtype::BF16,
    };
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(st_dtype, shape.clone(), bytes)
                .expect("shape and byte length agree by construction");
            (name.clone(), view)
        })
        .collect::<Vec<_>>();
    let path = dir.join(crate::checkpoint::SINGLE_FILE);
    safetensors::serialize_to_file(views, None, &path).map_err(|e| LoadError::Safetensors {
        path: path.clone(),
        message: e.to_string(),
    })
}
