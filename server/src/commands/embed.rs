//! `marc embed`: JSONL in, one embedding (or token states) per item out, in input order.
//!
//! The whole input is parsed and checked before the model loads, and the output is written to
//! a temporary file renamed into place only when every item succeeded, so a bad line never
//! leaves a half-written output behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use marc_kernels::MatmulPrecision;
use marc_models::tokenizer::Tokenizer;
use marc_models::{LoadOptions, NemotronH, NemotronHConfig, PackedBatch, Pooling, pooling};
use serde::Serialize;

use crate::cli::{EmbedArgs, default_model_dir};
use crate::input::{Item, parse_items};

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

pub(crate) fn run(args: &EmbedArgs, precision: MatmulPrecision) -> anyhow::Result<()> {
    let dir = args.model.clone().unwrap_or_else(default_model_dir);
    let config = NemotronHConfig::from_file(&dir.join("config.json"))?;
    // No compression heads exist yet (they arrive with the server); `--no-head` is accepted so
    // scripts written against the full contract keep working, and the raw states are returned.
    let _ = args.no_head;
    let layer = args.layer.unwrap_or(config.num_layers());
    ensure!(
        layer <= config.num_layers(),
        "--layer {layer}: the model has hidden states 0..={} (0 = embeddings)",
        config.num_layers()
    );
    ensure!(args.max_batch_tokens > 0, "--max-batch-tokens must be at least 1");

    let text = std::fs::read_to_string(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    let mut tokenizer: Option<Rc<Tokenizer>> = None;
    let items = parse_items(&text, || {
        if let Some(loaded) = &tokenizer {
            return Ok(loaded.clone());
        }
        let loaded = Rc::new(Tokenizer::from_dir(&dir)?);
        tokenizer = Some(loaded.clone());
        Ok(loaded)
    })
    .with_context(|| format!("{}", args.input.display()))?;
    for item in &items {
        if let Some(&id) = item.tokens.iter().find(|&&id| id as usize >= config.vocab_size) {
            bail!(
                "{}: line {}: token id {id} is out of range: the vocabulary has {} tokens",
                args.input.display(),
                item.line,
                config.vocab_size
            );
        }
    }

    let model = load_model(&dir, layer, precision)?;
    let started = Instant::now();
    let total_tokens: usize = items.iter().map(|i| i.tokens.len()).sum();
    let bar = bar(
        total_tokens as u64,
        "{elapsed_precise} [{bar:40}] {pos}/{len} tokens ({per_sec}, eta {eta})",
    );

    let partial = partial_path(&args.output);
    let written = write_all(&model, &items, layer, args, &partial, &bar);
    bar.finish_and_clear();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &args.output)
        .with_context(|| format!("cannot move output into {}", args.output.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "embedded {} items ({total_tokens} tokens) at layer {layer} in {seconds:.2} s: {:.0} tokens/s, {:.1} items/s",
        items.len(),
        total_tokens as f64 / seconds,
        items.len() as f64 / seconds
    );
    Ok(())
}

fn load_model(dir: &Path, layer: usize, precision: MatmulPrecision) -> anyhow::Result<NemotronH> {
    let bar = bar(0, "loading {bar:40} {bytes}/{total_bytes}");
    let options = LoadOptions {
        max_layer: Some(layer),
        precision,
    };
    let model = NemotronH::load_with_progress(dir, options, &mut |p| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    });
    bar.finish_and_clear();
    model.with_context(|| format!("cannot load the model in {}", dir.display()))
}

fn bar(len: u64, template: &str) -> ProgressBar {
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

/// Runs the items in packed batches of at most `max_batch_tokens` (an item longer than that
/// runs alone) and writes one line per item, in order.
fn write_all(
    model: &NemotronH,
    items: &[Item],
    layer: usize,
    args: &EmbedArgs,
    path: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let hidden = model.hidden_size();
    let mut start = 0;
    while start < items.len() {
        let mut end = start + 1;
        let mut tokens = items[start].tokens.len();
        while end < items.len() && tokens + items[end].tokens.len() <= args.max_batch_tokens {
            tokens += items[end].tokens.len();
            end += 1;
        }
        let batch = PackedBatch::from_sequences(&items[start..end].iter().map(|i| &i.tokens[..]).collect::<Vec<_>>());
        let states = model.hidden_state(&batch, layer)?;
        for (i, item) in items[start..end].iter().enumerate() {
            let rows = &states[batch.range(i).start * hidden..batch.range(i).end * hidden];
            match args.pooling {
                Pooling::None => serde_json::to_writer(
                    &mut out,
                    &HiddenLine {
                        id: &item.id,
                        hidden: rows.chunks_exact(hidden).collect(),
                    },
                )?,
                pooling => {
                    let embedding = pooling::pool(rows, hidden, pooling).unwrap_or_default();
                    serde_json::to_writer(
                        &mut out,
                        &EmbeddingLine {
                            id: &item.id,
                            embedding: &embedding,
                        },
                    )?
                }
            }
            out.write_all(b"\n")?;
        }
        bar.inc(tokens as u64);
        start = end;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
