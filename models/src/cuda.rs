//! Loading the model onto a CUDA device: the model's sizes as the backend's memory plan reads them,
//! the backend opened for them, then the weights uploaded through the usual loader.

use std::path::Path;

use marc_kernels::Device;
use marc_kernels::cuda::backend::{Cuda, CudaSetup};
use marc_kernels::cuda::plan::{BlockShape, LinearStorage, ModelShape};
use marc_kernels::ops::{AttentionShape, SsdShape};

use crate::checkpoint::Checkpoint;
use crate::config::{BlockKind, NemotronHConfig, config_path};
use crate::error::LoadError;
use crate::model::{LoadOptions, LoadProgress, NemotronH};
use crate::quant::{CheckpointQuantization, QuantFormat};

/// The sizes of `config`'s first `depth` blocks (all of them and `norm_f` when `depth` is the
/// model's depth), with an embedding table of `embedding_value_bytes` per value and Linear weights
/// stored as `linear_storage`.
pub fn model_shape(
    config: &NemotronHConfig,
    depth: usize,
    embedding_value_bytes: usize,
    linear_storage: LinearStorage,
) -> ModelShape {
    let m = &config.mamba;
    let blocks = config.blocks[..depth]
        .iter()
        .map(|kind| match kind {
            BlockKind::Mamba => BlockShape::Mamba {
                ssd: SsdShape::new(m.num_heads, m.head_dim, m.n_groups, m.state_size, m.chunk_size),
                conv_kernel: m.conv_kernel,
                proj_bias: m.proj_bias,
                conv_bias: m.conv_bias,
            },
            BlockKind::Attention => BlockShape::Attention(AttentionShape {
                num_heads: config.attention.num_heads,
                num_kv_heads: config.attention.num_kv_heads,
                head_dim: config.attention.head_dim,
            }),
            BlockKind::Mlp => BlockShape::Mlp {
                intermediate: config.mlp.intermediate_size,
                bias: config.mlp.bias,
            },
            BlockKind::Moe => BlockShape::Moe {
                experts: config.moe.num_experts,
                top_k: config.moe.top_k,
                expert_intermediate: config.moe.expert_intermediate_size,
                shared_intermediate: config.moe.shared_intermediate_size,
                latent: config.moe.latent_size,
                bias: config.moe.bias,
            },
        })
        .collect();
    ModelShape {
        hidden: config.hidden_size,
        vocab: config.vocab_size,
        embedding_value_bytes,
        linear_storage,
        blocks,
        norm_f: depth == config.num_layers(),
    }
}

/// Loads the model in `dir` onto CUDA `device` for batches of up to `max_tokens` tokens (the
/// backend's workspace is planned for them; a larger batch is refused).
pub fn load(
    dir: &Path,
    options: LoadOptions,
    device: Device,
    max_tokens: usize,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<NemotronH<Cuda>, LoadError> {
    let config = NemotronHConfig::from_file(&config_path(dir))?;
    let depth = options
        .max_layer
        .unwrap_or(config.num_layers())
        .min(config.num_layers());
    let embeddings = Checkpoint::open(dir)?
        .require("embeddings.weight", "the embedding table")?
        .dtype;
    let float_storage = match embeddings {
        safetensors::Dtype::F32 => LinearStorage::F32,
        _ => LinearStorage::Bf16,
    };
    let value_bytes = float_storage.bytes(1);
    let shape = model_shape(&config, depth, value_bytes, linear_storage(dir, float_storage)?);
    let backend = Cuda::open(device, &CudaSetup::from_env(), &shape, max_tokens)?;
    NemotronH::load_on(backend, dir, options, progress)
}

/// How the checkpoint in `dir` stores its Linear weights, as its quantisation config declares; an
/// unquantised one as `float` (the embedding table's width: an unquantised export stores every
/// tensor in its one dtype). A ModelOpt `MIXED_PRECISION` checkpoint counts as FP8, the widest of
/// its quantised formats: its unquantised layers (few, by ModelOpt's defaults) are counted short.
fn linear_storage(dir: &Path, float: LinearStorage) -> Result<LinearStorage, LoadError> {
    Ok(match CheckpointQuantization::detect(dir)?.map(|q| q.format) {
        None => float,
        Some(QuantFormat::ModelOptFp8 | QuantFormat::ModelOptMixed) => LinearStorage::Fp8,
        Some(QuantFormat::ModelOptNvfp4 | QuantFormat::CompressedTensorsNvfp4) => LinearStorage::Nvfp4,
    })
}

#[cfg(test)]
mod tests {
    use marc_kernels::cuda::plan::MemoryPlan;

    use super::*;

    fn bench_config() -> NemotronHConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/bench-150m.json");
        NemotronHConfig::from_file(&path).unwrap()
    }

    /// An NVFP4 checkpoint of the benchmark config is planned at its stored size: `marc quantize`
    /// writes 135.6 MB of tensors for it (BENCHMARKS.md; the bf16 embedding table is 65.5 MB of
    /// that), against 314 MB in bf16. The plan counts the small bf16 router gates as NVFP4 and
    /// the norms as f32, so it may differ by a few MB, not by the 3.5x of counting Linears as bf16.
    #[test]
    fn an_nvfp4_model_is_planned_at_its_stored_size() {
        let config = bench_config();
        let layers = config.num_layers();
        let nvfp4 = MemoryPlan::new(&model_shape(&config, layers, 2, LinearStorage::Nvfp4), 2048);
        let mb = nvfp4.weight_bytes() as f64 / 1e6;
        assert!(
            (130.0..140.0).contains(&mb),
            "{mb:.1} MB of NVFP4 weights, the checkpoint holds 135.6"
        );
        assert_eq!(LinearStorage::Nvfp4.bytes(1024 * 1024), 1024 * 512 + 1024 * 64);
        assert_eq!(LinearStorage::Fp8.bytes(1000), 1000);
    }

    /// docs/gpu.md's memory table: the benchmark config is 314 MB of bf16 weights; in_proj's
    /// output is 4,640 floats per token; serving fewer blocks scales the weights down, the
    /// embedding table always stays.
    #[test]
    fn the_benchmark_configs_plan_matches_the_memory_table() {
        let config = bench_config();
        let layers = config.num_layers();
        let full = MemoryPlan::new(&model_shape(&config, layers, 2, LinearStorage::Bf16), 2048);
        let mb = full.weight_bytes() as f64 / 1e6;
        assert!((mb - 314.0).abs() < 1.0, "{mb:.1} MB of weights, the table says 314");

        let first_mamba = MemoryPlan::new(&model_shape(&config, 1, 2, LinearStorage::Bf16), 1);
        let in_proj: usize = first_mamba
            .largest_block
            .regions
            .iter()
            .filter(|r| ["mamba.z", "mamba.xbc", "mamba.dt"].contains(&r.name.as_str()))
            .map(|r| r.bytes)
            .sum();
        assert_eq!(in_proj, 4640 * 4);

        let half = MemoryPlan::new(&model_shape(&config, layers / 2, 2, LinearStorage::Bf16), 2048);
        let embeddings = (config.vocab_size * config.hidden_size * 2) as f64 / 1e6;
        let half_mb = half.weight_bytes() as f64 / 1e6;
        assert!(half_mb < mb && half_mb > embeddings, "{half_mb:.1} MB at half depth");
        assert!(!half.weights.regions.iter().any(|r| r.name == "norm_f"));
        eprintln!(
            "benchmark config at T = 2048: weights {mb:.1} MB, workspace {:.1} MB (largest block: {:.1} MB)",
            full.workspace_bytes() as f64 / 1e6,
            full.largest_block.total() as f64 / 1e6
        );
    }
}
