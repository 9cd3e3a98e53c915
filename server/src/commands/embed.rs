//! `marc embed`: JSONL in, one embedding (or token states) per item out, in input order.
//!
//! The whole input is parsed and checked before the model loads, and the output is written to
//! a temporary file renamed into place only when every item succeeded, so a bad line never
//! leaves a half-written output behind.
//!
//! With a compression head (`--head NAME`, or the model's default head unless `--no-head`), the
//! layer and pooling are the head's, only blocks up to its source layer are loaded, and each batch's
//! pooled states go through the head in one call.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use marc_kernels::{Device, MatmulPrecision};
use marc_models::heads::HEADS_DIR;
use marc_models::{CompressionHead, LoadOptions, NemotronHConfig, PackedBatch, Pooling, QuantMode, load_heads};
use serde::Serialize;

use crate::cli::{EmbedArgs, default_model_dir};
use crate::input::{Item, read_items};
use crate::model::{self, Encoder, Model};
use crate::output::{self, Field, HeadChoice, OutputRequest, OutputSpec, Served, Source, plan};
use crate::quantization::Quantization;

#[derive(Serialize)]
struct EmbeddingLine<'a> {
    id: &'a serde_json::Value,
    embedding: &'a [f32],
}

#[derive(Serialize)]
struct HiddenLine<'a> {
    id: &'a serde_json::Value,
    hidden: Vec<&'a [f32]>,
}

/// The flag a planning error is about.
fn flag(field: Field) -> &'static str {
    match field {
        Field::Head => "--head",
        Field::Layer => "--layer",
        Field::Pooling => "--pooling",
        Field::Dimensions => "--dimensions",
    }
}

pub(crate) fn run(args: &EmbedArgs, precision: MatmulPrecision, device: Device) -> anyhow::Result<()> {
    let dir = args.model.clone().unwrap_or_else(default_model_dir);
    let config = NemotronHConfig::from_file(&dir.join("config.json"))?;
    ensure!(args.max_batch_tokens > 0, "--max-batch-tokens must be at least 1");
    let heads = if args.no_head {
        Vec::new()
    } else {
        load_heads(&dir, config.hidden_size, config.num_layers(), precision).with_context(|| {
            format!(
                "cannot load the compression heads in {} (--no-head returns raw states without them)",
                dir.join(HEADS_DIR).display()
            )
        })?
    };
    let request = OutputRequest {
        head: match (&args.head, args.no_head) {
            (Some(name), _) => HeadChoice::Named(name),
            (None, true) => HeadChoice::Raw,
            (None, false) => HeadChoice::DefaultOrRaw,
        },
        layer: args.layer,
        pooling: args.pooling,
        dimensions: args.dimensions,
        normalize: args.normalize(),
    };
    let served = Served {
        heads: &heads,
        hidden_size: config.hidden_size,
        num_layers: config.num_layers(),
        max_raw_layer: config.num_layers(),
        raw_pooling: Pooling::Mean,
    };
    let spec = plan(&request, &served).map_err(|e| {
        let hint = match e.field {
            Field::Head if args.head.is_some() => {
                format!(" (in {}; `marc head init` fits one)", dir.join(HEADS_DIR).display())
            }
            Field::Layer | Field::Pooling if !args.no_head => " (--no-head for raw states)".to_owned(),
            _ => String::new(),
        };
        anyhow!("{}: {e}{hint}", flag(e.field))
    })?;
    if matches!(spec.source, Source::Raw(_)) && !heads.is_empty() && args.head.is_none() && !args.no_head {
        eprintln!(
            "note: the model has heads ({}) but none is the default; returning raw states (choose one with --head)",
            heads.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let layer = spec.layer(&heads);

    let quantization = Quantization::resolve(&dir, args.quant.quant)?;
    let items = read_items(&args.input, &dir, config.vocab_size)?;
    let max_tokens = largest_batch_tokens(&items, args.max_batch_tokens);
    let model = load_model(&dir, layer, precision, quantization.mode, device, max_tokens)?;
    let started = Instant::now();
    let total_tokens: usize = items.iter().map(|i| i.tokens.len()).sum();
    let bar = bar(
        total_tokens as u64,
        "{elapsed_precise} [{bar:40}] {pos}/{len} tokens ({per_sec}, eta {eta})",
    );

    let partial = partial_path(&args.output);
    let written = write_all(
        model.as_ref(),
        &items,
        &spec,
        &heads,
        args.max_batch_tokens,
        &partial,
        &bar,
    );
    bar.finish_and_clear();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &args.output)
        .with_context(|| format!("cannot move output into {}", args.output.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let through = match spec.source {
        Source::Head(i) => format!(" through head `{}` ({} dims)", heads[i].name, heads[i].output_dim),
        Source::Raw(_) => String::new(),
    };
    eprintln!(
        "embedded {} items ({total_tokens} tokens) at layer {layer}{through} in {seconds:.2} s: {:.0} tokens/s, {:.1} items/s",
        items.len(),
        total_tokens as f64 / seconds,
        items.len() as f64 / seconds
    );
    Ok(())
}

/// Loads the model up to `layer` on `device` for forward passes of at most `max_tokens` tokens,
/// with a progress bar.
pub(crate) fn load_model(
    dir: &Path,
    layer: usize,
    precision: MatmulPrecision,
    quant: QuantMode,
    device: Device,
    max_tokens: usize,
) -> anyhow::Result<Model> {
    let bar = bar(0, "loading {bar:40} {bytes}/{total_bytes}");
    let options = LoadOptions {
        max_layer: Some(layer),
        precision,
        quant,
    };
    let model = model::load(dir, options, device, max_tokens, &mut |p| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    });
    bar.finish_and_clear();
    model
}

pub(crate) fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

/// The most tokens [`for_each_batch`] puts in one forward pass: a full batch, or an item longer
/// than that on its own.
pub(crate) fn largest_batch_tokens(items: &[Item], max_batch_tokens: usize) -> usize {
    items.iter().map(|i| i.tokens.len()).fold(max_batch_tokens, usize::max)
}

/// Runs the items in packed batches of at most `max_batch_tokens` (an item longer than that
/// runs alone), calling `each` with a batch's items, the packed batch and its states at `layer`.
pub(crate) fn for_each_batch(
    model: &dyn Encoder,
    items: &[Item],
    layer: usize,
    max_batch_tokens: usize,
    bar: &ProgressBar,
    mut each: impl FnMut(&[Item], &PackedBatch, &[f32]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut start = 0;
    while start < items.len() {
        let mut end = start + 1;
        let mut tokens = items[start].tokens.len();
        while end < items.len() && tokens + items[end].tokens.len() <= max_batch_tokens {
            tokens += items[end].tokens.len();
            end += 1;
        }
        let batch = PackedBatch::from_sequences(&items[start..end].iter().map(|i| &i.tokens[..]).collect::<Vec<_>>());
        let states = model.hidden_state(&batch, layer)?;
        each(&items[start..end], &batch, &states)?;
        bar.inc(tokens as u64);
        start = end;
    }
    Ok(())
}

/// Embeds every item and writes one line per item, in order.
fn write_all(
    model: &dyn Encoder,
    items: &[Item],
    spec: &OutputSpec,
    heads: &[CompressionHead],
    max_batch_tokens: usize,
    path: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let hidden = model.hidden_size();
    for_each_batch(
        model,
        items,
        spec.layer(heads),
        max_batch_tokens,
        bar,
        |batch_items, batch, states| {
            let ranges: Vec<_> = (0..batch_items.len()).map(|i| batch.range(i)).collect();
            let outputs = output::compute(states, &ranges, hidden, spec, heads)?;
            for (item, o) in batch_items.iter().zip(&outputs) {
                if spec.pooling == Pooling::None {
                    let hidden = o.values.chunks_exact(o.width).collect();
                    serde_json::to_writer(&mut out, &HiddenLine { id: &item.id, hidden })?;
                } else {
                    serde_json::to_writer(
                        &mut out,
                        &EmbeddingLine {
                            id: &item.id,
                            embedding: &o.values,
                        },
                    )?;
                }
                out.write_all(b"\n")?;
            }
            Ok(())
        },
    )?;
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
