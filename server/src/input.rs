//! Parsing `marc embed`'s JSONL input.

use std::path::Path;
use std::rc::Rc;

use anyhow::{Context, bail};
use marc_models::tokenizer::Tokenizer;
use serde::Deserialize;

/// Longest accepted item, in tokens; longer items are rejected rather than allocated.
pub(crate) const MAX_ITEM_TOKENS: usize = 1 << 20;

/// One input line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    id: serde_json::Value,
    token_ids: Option<Vec<u32>>,
    text: Option<String>,
}

/// An item ready to embed.
pub(crate) struct Item {
    /// The caller's id, echoed verbatim.
    pub(crate) id: serde_json::Value,
    /// Its token ids.
    pub(crate) tokens: Vec<u32>,
    /// Its 1-based line in the input file, for error messages.
    pub(crate) line: usize,
}

/// Reads and parses the JSONL file `input`, tokenizing text items with `model_dir`'s tokenizer
/// (loaded only if a text item needs it), and checks every token id against `vocab_size`.
pub(crate) fn read_items(input: &Path, model_dir: &Path, vocab_size: usize) -> anyhow::Result<Vec<Item>> {
    let text = std::fs::read_to_string(input).with_context(|| format!("cannot read {}", input.display()))?;
    let mut tokenizer: Option<Rc<Tokenizer>> = None;
    let items = parse_items(&text, || {
        if let Some(loaded) = &tokenizer {
            return Ok(loaded.clone());
        }
        let loaded = Rc::new(Tokenizer::from_dir(model_dir)?);
        tokenizer = Some(loaded.clone());
        Ok(loaded)
    })
    .with_context(|| format!("{}", input.display()))?;
    for item in &items {
        if let Some(&id) = item.tokens.iter().find(|&&id| id as usize >= vocab_size) {
            bail!(
                "{}: line {}: token id {id} is out of range: the vocabulary has {vocab_size} tokens",
                input.display(),
                item.line,
            );
        }
    }
    Ok(items)
}

/// Parses every line of `text` (1-based line numbers in errors); blank lines are skipped.
/// `tokenizer` is loaded lazily on the first text item.
pub(crate) fn parse_items(
    text: &str,
    mut tokenizer: impl FnMut() -> anyhow::Result<std::rc::Rc<Tokenizer>>,
) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawItem = serde_json::from_str(line).map_err(|e| {
            // serde_json appends "at line 1 column C" (of this one line); say it in file terms.
            let message = e.to_string();
            let message = message.rsplit_once(" at line ").map_or(&message[..], |(m, _)| m);
            anyhow::anyhow!("line {line_no}, column {}: {message}", e.column())
        })?;
        if !(raw.id.is_string() || raw.id.is_number()) {
            bail!("line {line_no}: `id` must be a string or a number");
        }
        let tokens = match (raw.token_ids, raw.text) {
            (Some(ids), None) => ids,
            (None, Some(text)) => tokenizer()
                .and_then(|t| Ok(t.encode(&text)?))
                .with_context(|| format!("line {line_no}"))?,
            (Some(_), Some(_)) => bail!("line {line_no}: give either `token_ids` or `text`, not both"),
            (None, None) => bail!("line {line_no}: needs `token_ids` or `text`"),
        };
        if tokens.is_empty() {
            bail!("line {line_no}: the item has no tokens");
        }
        if tokens.len() > MAX_ITEM_TOKENS {
            bail!(
                "line {line_no}: {} tokens, more than the limit of {MAX_ITEM_TOKENS}",
                tokens.len()
            );
        }
        items.push(Item {
            id: raw.id,
            tokens,
            line: line_no,
        });
    }
    Ok(items)
}
