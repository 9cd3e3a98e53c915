//! `marc head init`: embed a corpus at one layer, fit a PCA (`marc_models::heads::pca`) and write
//! it as a one-layer compression head. Plumbing only; the math lives in the library.

use std::time::Instant;

use anyhow::{Context, bail, ensure};
use marc_kernels::{Device, MatmulPrecision};
use marc_models::heads::{self, HeadInfo, pca};
use marc_models::{NemotronHConfig, Pooling, QuantMode};

use crate::cli::HeadInitArgs;
use crate::commands::embed::{bar, for_each_batch, largest_batch_tokens, load_model};
use crate::input::read_items;
use crate::output::{pool_ranges, pooling_name};

pub(crate) fn init(args: &HeadInitArgs, precision: MatmulPrecision, device: Device) -> anyhow::Result<()> {
    let dir = &args.model;
    let config = NemotronHConfig::from_file(&dir.join("config.json"))?;
    let hidden = config.hidden_size;
    let pooling: Pooling = args.pooling.parse().map_err(anyhow::Error::msg)?;
    ensure!(
        heads::valid_head_name(&args.name),
        "--name {:?}: use letters, digits, `-`, `_` or `.`, not starting with `.`",
        args.name
    );
    ensure!(
        args.layer <= config.num_layers(),
        "--layer {}: the model has hidden states 0..={} (0 = embeddings)",
        args.layer,
        config.num_layers()
    );
    ensure!(args.dim > 0, "--dim must be at least 1");
    ensure!(
        args.dim <= hidden,
        "--dim {}: more than the model's hidden size {hidden}",
        args.dim
    );
    ensure!(args.max_batch_tokens > 0, "--max-batch-tokens must be at least 1");
    let target = heads::head_dir(dir, &args.name);
    if target.exists() && !args.force {
        bail!("{} already exists (overwrite it with --force)", target.display());
    }

    let items = read_items(&args.corpus, dir, config.vocab_size)?;
    if args.dim + 1 > items.len() {
        bail!(
            "--dim {}: a corpus of {} items determines at most {} components (items - 1): add items or lower --dim",
            args.dim,
            items.len(),
            items.len().saturating_sub(1)
        );
    }

    let max_tokens = largest_batch_tokens(&items, args.max_batch_tokens);
    let model = load_model(dir, args.layer, precision, QuantMode::default(), device, max_tokens)?;
    let started = Instant::now();
    let total_tokens: usize = items.iter().map(|i| i.tokens.len()).sum();
    let bar = bar(
        total_tokens as u64,
        "embedding the corpus {elapsed_precise} [{bar:40}] {pos}/{len} tokens (eta {eta})",
    );
    let mut pooled = Vec::with_capacity(items.len() * hidden);
    let embedded = for_each_batch(
        model.as_ref(),
        &items,
        args.layer,
        args.max_batch_tokens,
        &bar,
        |batch_items, batch, states| {
            let ranges: Vec<_> = (0..batch_items.len()).map(|i| batch.range(i)).collect();
            pooled.extend(pool_ranges(states, &ranges, hidden, pooling));
            Ok(())
        },
    );
    bar.finish_and_clear();
    embedded?;
    let embed_seconds = started.elapsed().as_secs_f64();

    eprintln!(
        "fitting a {}-component PCA on {} x {hidden} pooled states...",
        args.dim,
        items.len()
    );
    let fit = pca::fit(&pooled, items.len(), hidden, args.dim)?;
    let description = format!(
        "PCA of {} items of {} at layer {}, {} pooling: {} of {hidden} dimensions, {:.4} of the variance",
        items.len(),
        args.corpus.file_name().map_or_else(
            || args.corpus.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        ),
        args.layer,
        pooling_name(pooling),
        args.dim,
        fit.explained_variance
    );
    let info = HeadInfo {
        source_layer: args.layer,
        pooling,
        normalize: !args.no_normalize,
        description: &description,
    };
    let written = heads::save_head(dir, &args.name, &info, &[fit.head_layer()], args.force)?;
    // Read it back as `marc embed` will, so a head that cannot be served is never left behind.
    let check = heads::load_head(&written, &args.name, hidden, config.num_layers(), precision);
    if let Err(e) = check {
        let _ = std::fs::remove_dir_all(&written);
        return Err(e).context("the written head does not load back");
    }
    eprintln!(
        "head `{}`: {} items ({total_tokens} tokens, embedded in {embed_seconds:.1} s), layer {}, {} pooling, \
         {hidden} -> {} dims, explained variance {:.4}, normalize {}; wrote {}",
        args.name,
        items.len(),
        args.layer,
        pooling_name(pooling),
        args.dim,
        fit.explained_variance,
        !args.no_normalize,
        written.display()
    );
    Ok(())
}
