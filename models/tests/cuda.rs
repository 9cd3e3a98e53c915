//! The full model on CUDA against the CPU backend (the oracle), every layer, at the fixture
//! tolerance. Runs only where a CUDA driver is; elsewhere it says why it is skipped, so CI shows it.
//!
//! Cases: every committed fixture (f32, bf16, and the NVFP4 / FP8 ones under `nvfp4/`, W4A16), the
//! demo model, and a random bf16 model of the benchmark pattern with 64-wide attention heads; the
//! backend must load and run them all. Batches pack several sequences, so the varlen kernels see
//! sequence boundaries.

use std::path::{Path, PathBuf};

use common::relative_l2;
use marc_kernels::Device;
use marc_kernels::backend::Backend;
use marc_models::synthetic::{SyntheticDType, write_random_checkpoint};
use marc_models::{LoadError, LoadOptions, NemotronH, PackedBatch};

mod common;

/// The fixtures' contract (tests/reference.rs).
const TOLERANCE: f64 = 1e-5;

/// The model folders (those with a config.json) directly in `dir`, sorted.
fn models_in(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("config.json").is_file())
        .collect();
    cases.sort();
    cases
}

fn fixture_cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut cases = models_in(&root);
    cases.extend(models_in(&root.join("nvfp4")));
    cases.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("demo"));
    cases
}

/// A batch of three sequences (1, 17 and 40 tokens) over the vocabulary.
fn batch(vocab: usize) -> PackedBatch {
    let sequences: Vec<Vec<u32>> = [1usize, 17, 40]
        .iter()
        .enumerate()
        .map(|(s, &len)| {
            (0..len)
                .map(|t| ((s * 7919 + t * 104_729 + 3) % vocab) as u32)
                .collect()
        })
        .collect();
    PackedBatch::from_sequences(&sequences)
}

/// Every layer of `cuda` against `cpu` on one batch; returns the worst relative L2 error.
fn compare<B: Backend>(name: &str, cpu: &NemotronH, cuda: &NemotronH<B>) -> f64 {
    let layers: Vec<usize> = (0..=cpu.max_layer()).collect();
    let batch = batch(cpu.config().vocab_size);
    let want = cpu.hidden_states(&batch, &layers).unwrap();
    let got = cuda
        .hidden_states(&batch, &layers)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut worst = 0.0f64;
    for (layer, (g, w)) in got.iter().zip(&want).enumerate() {
        let error = relative_l2(g, w);
        assert!(error <= TOLERANCE, "{name}: layer {layer}: relative L2 {error:.2e}");
        worst = worst.max(error);
    }
    worst
}

fn load_cuda(dir: &Path) -> Result<NemotronH<marc_kernels::cuda::backend::Cuda>, LoadError> {
    marc_models::cuda::load(dir, LoadOptions::default(), Device::Cuda(0), 64, &mut |_| {})
}

#[test]
fn the_model_on_cuda_matches_the_cpu_at_every_layer() {
    if !marc_kernels::device::cuda_driver_present() {
        eprintln!("SKIPPED: no CUDA driver on this machine; the CUDA backend is checked where one is");
        return;
    }
    // The benchmark pattern, small, bf16, with attention heads of 64: a model the backend must run.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let config = std::fs::read_to_string(fixtures.join("bench_shape_small/config.json"))
        .unwrap()
        .replace("\"head_dim\": 8,", "\"head_dim\": 64,");
    let random = tempfile::tempdir().unwrap();
    write_random_checkpoint(&config, random.path(), SyntheticDType::BF16, 7).unwrap();
    let cpu = NemotronH::load(random.path(), LoadOptions::default()).unwrap();
    let cuda = load_cuda(random.path()).unwrap_or_else(|e| panic!("the random bf16 model: {e}"));
    let worst = compare("random bf16", &cpu, &cuda);
    eprintln!("random bf16 model: worst relative L2 {worst:.2e}");

    for case in fixture_cases() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let cuda = load_cuda(&case).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cpu = NemotronH::load(&case, LoadOptions::default()).unwrap();
        let worst = compare(&name, &cpu, &cuda);
        eprintln!("{name}: worst relative L2 {worst:.2e}");
    }
}
