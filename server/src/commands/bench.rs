//! `marc bench`: latency and throughput of the full forward pass (every block, `norm_f`, no
//! lm_head) at fixed batch shapes. Without `--model` it runs random weights for `--config`
//! (by default the 150M benchmark configuration), written to a temporary checkpoint and loaded
//! through the normal loader.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use marc_kernels::backend::Backend;
use marc_kernels::{Device, MatmulPrecision};
use marc_models::synthetic::{SyntheticDType, write_random_checkpoint};
use marc_models::{BlockTimings, LoadOptions, NemotronH, PackedBatch};
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::quantization::Quantization;

/// Untimed runs before measuring, to fault in weights and warm caches.
const WARMUP: usize = 2;

#[derive(Serialize)]
struct ShapeResult {
    sequences: usize,
    tokens_per_sequence: usize,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    tokens_per_second: f64,
}

/// Where the random checkpoint goes: a temporary directory, or one the user keeps (`--save-model`).
enum Scratch {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Scratch {
    fn path(&self) -> &std::path::Path {
        match self {
            Scratch::Temp(dir) => dir.path(),
            Scratch::Kept(dir) => dir,
        }
    }
}

pub(crate) fn run(args: &BenchArgs, precision: MatmulPrecision, device: Device) -> anyhow::Result<()> {
    let shapes = args
        .shapes
        .iter()
        .map(|s| parse_shape(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let scratch;
    let dir: PathBuf = match &args.model {
        Some(dir) => dir.clone(),
        None => {
            let config = std::fs::read_to_string(&args.config)
                .with_context(|| format!("cannot read {}", args.config.display()))?;
            scratch = match &args.save_model {
                Some(dir) => {
                    if dir.join("config.json").exists() {
                        bail!("--save-model {}: already holds a model", dir.display());
                    }
                    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                    Scratch::Kept(dir.clone())
                }
                None => Scratch::Temp(tempfile::tempdir().context("cannot create a temporary directory")?),
            };
            let dtype = if args.dtype == "f32" {
                SyntheticDType::F32
            } else {
                SyntheticDType::BF16
            };
            eprintln!(
                "writing random {} weights for {} ...",
                args.dtype,
                args.config.display()
            );
            write_random_checkpoint(&config, scratch.path(), dtype, 0x6d61_7263)?;
            if let Scratch::Kept(dir) = &scratch {
                eprintln!(
                    "kept the random checkpoint in {} (serve it with marc serve --model)",
                    dir.display()
                );
            }
            scratch.path().to_owned()
        }
    };
    let quantization = Quantization::resolve(&dir, args.quant.quant)?;
    let options = LoadOptions {
        precision,
        quant: quantization.mode,
        ..Default::default()
    };
    let numerics = format!(
        "precision: {precision:?}; quantization: {}",
        quantization.describe(precision)
    );
    let results = match device {
        Device::Cpu => {
            let model = NemotronH::load(&dir, options).with_context(|| format!("cannot load {}", dir.display()))?;
            let threads = rayon::current_num_threads();
            measure(&model, &shapes, args, &format!("threads: {threads}; {numerics}"))?
        }
        Device::Cuda(_) => {
            // The workspace is planned for the largest shape measured.
            let max_tokens = shapes.iter().map(|(s, l)| s * l).max().unwrap_or(1);
            let model = marc_models::cuda::load(&dir, options, device, max_tokens, &mut |_| {})
                .with_context(|| format!("cannot load {} on {device}", dir.display()))?;
            measure(&model, &shapes, args, &format!("device: {device}; {numerics}"))?
        }
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Times the forward pass of `model` at each shape; prints a line per shape (and the profile)
/// under a header naming the model and `runs_on`.
fn measure<B: Backend>(
    model: &NemotronH<B>,
    shapes: &[(usize, usize)],
    args: &BenchArgs,
    runs_on: &str,
) -> anyhow::Result<Vec<ShapeResult>> {
    let config = model.config();
    println!(
        "model: pattern {} hidden {} ({:.0} MB of weights); {runs_on}",
        config.pattern(),
        config.hidden_size,
        model.weight_bytes() as f64 / 1e6
    );
    println!(
        "{:>12} {:>11} {:>11} {:>11} {:>12}",
        "batch", "median ms", "min ms", "max ms", "tokens/s"
    );

    let layer = config.num_layers();
    let mut results = Vec::new();
    for &(sequences, length) in shapes {
        let batch = synthetic_batch(sequences, length, config.vocab_size);
        let mut times = Vec::with_capacity(args.iterations);
        let mut timings = BlockTimings::default();
        for i in 0..WARMUP + args.iterations.max(1) {
            let started = Instant::now();
            let profile = (args.profile && i >= WARMUP).then_some(&mut timings);
            let states = model.hidden_states_timed(&batch, &[layer], profile)?;
            std::hint::black_box(states);
            if i >= WARMUP {
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let result = ShapeResult {
            sequences,
            tokens_per_sequence: length,
            median_ms: median,
            min_ms: times[0],
            max_ms: times[times.len() - 1],
            tokens_per_second: (sequences * length) as f64 / (median / 1e3),
        };
        println!(
            "{:>12} {:>11.2} {:>11.2} {:>11.2} {:>12.0}",
            format!("{sequences} x {length}"),
            result.median_ms,
            result.min_ms,
            result.max_ms,
            result.tokens_per_second
        );
        for (kind, total, count) in &timings.by_kind {
            println!(
                "{:>12} {:>11.2} ms per forward in {} {kind:?} blocks",
                "",
                total.as_secs_f64() * 1e3 / times.len() as f64,
                count / times.len()
            );
        }
        results.push(result);
    }
    Ok(results)
}

fn parse_shape(s: &str) -> anyhow::Result<(usize, usize)> {
    let Some((a, b)) = s.split_once('x') else {
        bail!("batch shape {s:?}: expected SEQUENCESxTOKENS, e.g. 16x128");
    };
    let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
    if a == 0 || b == 0 {
        bail!("batch shape {s:?}: both numbers must be at least 1");
    }
    Ok((a, b))
}

/// Deterministic token ids spread over the vocabulary.
fn synthetic_batch(sequences: usize, length: usize, vocab: usize) -> PackedBatch {
    let mut batch = PackedBatch::new();
    for s in 0..sequences {
        let ids: Vec<u32> = (0..length)
            .map(|t| ((s * 7919 + t * 104_729 + 13) % vocab) as u32)
            .collect();
        batch.push(&ids);
    }
    batch
}
