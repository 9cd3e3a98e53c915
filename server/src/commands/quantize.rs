//! `marc quantize`: an NVFP4 checkpoint from an unquantised one (ModelOpt's two-level weight
//! scales; see `marc_models::quant::writer`), in ModelOpt's or compressed-tensors' layout, with
//! the tokenizer files and compression heads copied along. With `--calibrate CORPUS`, the
//! activations are calibrated too (max calibration over the corpus), so the layers carry static
//! input scales and the checkpoint runs `--quant w4a4`.
//!
//! An output directory that already holds anything is replaced only with `--force`, and then
//! only if it holds a model (a `config.json`), so a mistyped path never deletes unrelated files.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use marc_models::heads::HEADS_DIR;
use marc_models::quant::{ActivationAmax, OutputFormat, QuantizeOptions, quantize_checkpoint};
use marc_models::{LoadOptions, NemotronH};

use crate::cli::QuantizeArgs;
use crate::commands::embed::{bar, for_each_batch};
use crate::input::read_items;

/// Files beside the weights that travel with the model unchanged.
const COPIED_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

pub(crate) fn run(args: &QuantizeArgs) -> anyhow::Result<()> {
    let format = match args.format.as_str() {
        "compressed-tensors" => OutputFormat::CompressedTensors,
        _ => OutputFormat::ModelOpt,
    };
    prepare_output(&args.model, &args.output, args.force)?;
    let started = Instant::now();
    let progress = bar(0, "quantising {bar:40} {bytes}/{total_bytes} ({eta})");
    let input_amax = match &args.calibrate {
        Some(corpus) => Some(calibrate(&args.model, corpus, args.calibration_batch_tokens)?),
        None => None,
    };
    let options = QuantizeOptions {
        format,
        exclude: args.exclude.clone(),
        input_amax,
    };
    let summary = quantize_checkpoint(&args.model, &args.output, &options, &mut |done, total| {
        progress.set_length(total);
        progress.set_position(done);
    });
    progress.finish_and_clear();
    let summary = summary.with_context(|| format!("cannot quantise the model in {}", args.model.display()))?;
    copy_extras(&args.model, &args.output)?;
    let mode = if summary.calibrated > 0 {
        "with calibrated input scales: runs w4a16 and w4a4"
    } else {
        "weight-only: runs w4a16"
    };
    eprintln!(
        "wrote {} ({}, {mode}): {} Linear weights in NVFP4, {} matrices kept as stored, {:.1} MB of tensors in {:.1} s",
        args.output.display(),
        args.format,
        summary.quantized.len(),
        summary.kept.len(),
        summary.bytes_written as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    for (module, reason) in &summary.kept {
        eprintln!("  kept {module}: {reason}");
    }
    Ok(())
}

/// Runs the corpus through the unquantised model (every block, exact f32 activations) and returns
/// each Linear's largest |input| (see `marc_models::quant::calibration`).
fn calibrate(model: &Path, corpus: &Path, batch_tokens: usize) -> anyhow::Result<HashMap<String, f32>> {
    let amax = Arc::new(ActivationAmax::default());
    let loaded = NemotronH::load_observed(model, LoadOptions::default(), amax.clone())
        .with_context(|| format!("cannot load the model in {} to calibrate it", model.display()))?;
    let items = read_items(corpus, model, loaded.config().vocab_size)
        .with_context(|| format!("cannot read the calibration corpus {}", corpus.display()))?;
    let total: usize = items.iter().map(|i| i.tokens.len()).sum();
    let progress = bar(total as u64, "calibrating {bar:40} {pos}/{len} tokens ({eta})");
    for_each_batch(
        &loaded,
        &items,
        loaded.max_layer(),
        batch_tokens,
        &progress,
        |_, _, _| Ok(()),
    )?;
    progress.finish_and_clear();
    eprintln!(
        "calibrated on {} items ({total} tokens) of {}",
        items.len(),
        corpus.display()
    );
    Ok(amax.snapshot())
}

/// Creates `output`, or empties it when `--force` allows and it holds a model.
fn prepare_output(model: &Path, output: &Path, force: bool) -> anyhow::Result<()> {
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if same(model, output) {
        bail!("--output {} is the input model directory", output.display());
    }
    if output.exists() {
        let occupied = std::fs::read_dir(output)
            .with_context(|| format!("cannot read --output {}", output.display()))?
            .next()
            .is_some();
        if occupied && !force {
            bail!(
                "--output {} already exists and is not empty: --force replaces it",
                output.display()
            );
        }
        if occupied {
            if !output.join("config.json").is_file() {
                bail!(
                    "--output {} holds files but no model (no config.json): refusing to delete it, even with --force",
                    output.display()
                );
            }
            std::fs::remove_dir_all(output).with_context(|| format!("cannot remove {}", output.display()))?;
        }
    }
    std::fs::create_dir_all(output).with_context(|| format!("cannot create {}", output.display()))
}

/// Copies the tokenizer files and the compression heads.
fn copy_extras(model: &Path, output: &Path) -> anyhow::Result<()> {
    for name in COPIED_FILES {
        let from = model.join(name);
        if from.is_file() {
            std::fs::copy(&from, output.join(name)).with_context(|| format!("cannot copy {}", from.display()))?;
        }
    }
    let heads = model.join(HEADS_DIR);
    if heads.is_dir() {
        copy_dir(&heads, &output.join(HEADS_DIR))?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let path = entry?.path();
        let target = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target).with_context(|| format!("cannot copy {}", path.display()))?;
        }
    }
    Ok(())
}
