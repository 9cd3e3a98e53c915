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

use anyhow::{Context, anyhow, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use marc_kernels::MatmulPrecision;
use marc_models::heads::HEADS_DIR;
use marc_models::{
    CompressionHead, LoadOptions, NemotronH, NemotronHConfig, PackedBatch, Pooling, default_head, load_heads, pooling,
};
use serde::Serialize;

use crate::cli::{EmbedArgs, default_model_dir};
use crate::input::{Item, read_items};

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

/// What each output line holds.
#[derive(Clone, Copy)]
enum Output<'a> {
    /// Every token's state.
    Hidden,
    /// The pooled raw state.
    Pooled(Pooling),
    /// The pooled state through a compression head.
    Head(&'a CompressionHead),
}

/// `mean`, `last` or `none`, as on the command line.
pub(crate) fn pooling_name(pooling: Pooling) -> &'static str {
    match pooling {
        Pooling::None => "none",
        Pooling::Mean => "mean",
        Pooling::Last => "last",
    }
}

pub(crate) fn run(args: &EmbedArgs, precision: MatmulPrecision) -> anyhow::Result<()> {
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
    let head = select_head(&heads, args.head.as_deref(), &dir)?;
    let (layer, output) = match head {
        Some(head) => {
            if let Some(layer) = args.layer {
                bail!(
                    "--layer {layer} cannot be used with a compression head: head `{}` reads layer {}; \
                     use --no-head for raw states at another layer",
                    head.name,
                    head.source_layer
                );
            }
            match args.pooling {
                Some(Pooling::None) => bail!(
                    "--pooling none cannot be used with a compression head (head `{}` pools with {}); \
                     use --no-head for token states",
                    head.name,
                    pooling_name(head.pooling)
                ),
                Some(p) if p != head.pooling => bail!(
                    "--pooling {} differs from head `{}`'s {} pooling: drop --pooling, or use --no-head for raw states",
                    pooling_name(p),
                    head.name,
                    pooling_name(head.pooling)
                ),
                _ => {}
            }
            (head.source_layer, Output::Head(head))
        }
        None => {
            if !heads.is_empty() && args.head.is_none() && !args.no_head {
                eprintln!(
                    "note: the model has heads ({}) but none is the default; returning raw states (choose one with --head)",
                    names(&heads)
                );
            }
            let layer = args.layer.unwrap_or(config.num_layers());
            ensure!(
                layer <= config.num_layers(),
                "--layer {layer}: the model has hidden states 0..={} (0 = embeddings)",
                config.num_layers()
            );
            match args.pooling.unwrap_or_default() {
                Pooling::None => (layer, Output::Hidden),
                pooling => (layer, Output::Pooled(pooling)),
            }
        }
    };

    let items = read_items(&args.input, &dir, config.vocab_size)?;
    let model = load_model(&dir, layer, precision)?;
    let started = Instant::now();
    let total_tokens: usize = items.iter().map(|i| i.tokens.len()).sum();
    let bar = bar(
        total_tokens as u64,
        "{elapsed_precise} [{bar:40}] {pos}/{len} tokens ({per_sec}, eta {eta})",
    );

    let partial = partial_path(&args.output);
    let written = write_all(&model, &items, layer, output, args.max_batch_tokens, &partial, &bar);
    bar.finish_and_clear();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &args.output)
        .with_context(|| format!("cannot move output into {}", args.output.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let through = match output {
        Output::Head(head) => format!(" through head `{}` ({} dims)", head.name, head.output_dim),
        _ => String::new(),
    };
    eprintln!(
        "embedded {} items ({total_tokens} tokens) at layer {layer}{through} in {seconds:.2} s: {:.0} tokens/s, {:.1} items/s",
        items.len(),
        total_tokens as f64 / seconds,
        items.len() as f64 / seconds
    );
    Ok(())
}

fn names(heads: &[CompressionHead]) -> String {
    heads.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// The head `--head` names, else the default head (see [`default_head`]).
fn select_head<'a>(
    heads: &'a [CompressionHead],
    name: Option<&str>,
    dir: &Path,
) -> anyhow::Result<Option<&'a CompressionHead>> {
    let Some(name) = name else {
        return Ok(default_head(heads));
    };
    heads.iter().find(|h| h.name == name).map(Some).ok_or_else(|| {
        let available = if heads.is_empty() {
            "the model has no heads (fit one with `marc head init`)".to_owned()
        } else {
            format!("available heads: {}", names(heads))
        };
        anyhow!(
            "--head {name}: no such head in {}; {available}",
            dir.join(HEADS_DIR).display()
        )
    })
}

pub(crate) fn load_model(dir: &Path, layer: usize, precision: MatmulPrecision) -> anyhow::Result<NemotronH> {
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

/// Runs the items in packed batches of at most `max_batch_tokens` (an item longer than that
/// runs alone), calling `each` with a batch's items, the packed batch and its states at `layer`.
pub(crate) fn for_each_batch(
    model: &NemotronH,
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

/// Pools each sequence of `batch` (`states`: `[tokens, hidden]`) into `[sequences, hidden]`.
pub(crate) fn pool_batch(
    states: &[f32],
    batch: &PackedBatch,
    count: usize,
    hidden: usize,
    pooling: Pooling,
) -> Vec<f32> {
    let mut pooled = Vec::with_capacity(count * hidden);
    for i in 0..count {
        let rows = &states[batch.range(i).start * hidden..batch.range(i).end * hidden];
        pooled.extend(pooling::pool(rows, hidden, pooling).unwrap_or_else(|| vec![0.0; hidden]));
    }
    pooled
}

/// Embeds every item and writes one line per item, in order.
fn write_all(
    model: &NemotronH,
    items: &[Item],
    layer: usize,
    output: Output<'_>,
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
        layer,
        max_batch_tokens,
        bar,
        |batch_items, batch, states| {
            let vectors = match output {
                Output::Hidden => None,
                Output::Pooled(pooling) => {
                    Some((pool_batch(states, batch, batch_items.len(), hidden, pooling), hidden))
                }
                Output::Head(head) => {
                    let pooled = pool_batch(states, batch, batch_items.len(), hidden, head.pooling);
                    Some((head.apply(&pooled, batch_items.len())?, head.output_dim))
                }
            };
            for (i, item) in batch_items.iter().enumerate() {
                match &vectors {
                    None => {
                        let rows = &states[batch.range(i).start * hidden..batch.range(i).end * hidden];
                        serde_json::to_writer(
                            &mut out,
                            &HiddenLine {
                                id: &item.id,
                                hidden: rows.chunks_exact(hidden).collect(),
                            },
                        )?
                    }
                    Some((vectors, width)) => serde_json::to_writer(
                        &mut out,
                        &EmbeddingLine {
                            id: &item.id,
                            embedding: &vectors[i * width..(i + 1) * width],
                        },
                    )?,
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
