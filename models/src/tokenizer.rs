//! Text to token ids with a checkpoint's `tokenizer.json` (Hugging Face `tokenizers`).

use std::path::{Path, PathBuf};

/// Why text could not be tokenised.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The model directory has no `tokenizer.json`.
    #[error("text input needs a tokenizer, but {0} does not exist (send token ids instead, or add tokenizer.json)")]
    Missing(PathBuf),
    /// The file exists but could not be parsed.
    #[error("{path}: cannot load tokenizer: {message}")]
    Load {
        /// The file.
        path: PathBuf,
        /// The library's message.
        message: String,
    },
    /// Encoding failed.
    #[error("cannot tokenise text: {0}")]
    Encode(String),
}

/// A loaded tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// The tokenizer file name in a model directory.
    pub const FILE: &'static str = "tokenizer.json";

    /// Loads `dir/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join(Self::FILE);
        if !path.is_file() {
            return Err(TokenizerError::Missing(path));
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| TokenizerError::Load {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { inner })
    }

    /// Token ids of `text`, with the special tokens the tokenizer's post-processor adds.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Like [`Tokenizer::encode`], also returning how many of the ids at the start and at the end are special
    /// tokens the post-processor added (so truncation can keep them).
    pub fn encode_with_specials(&self, text: &str) -> Result<(Vec<u32>, usize, usize), TokenizerError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mask = encoding.get_special_tokens_mask();
        let lead = mask.iter().take_while(|&&m| m == 1).count();
        let trail = mask[lead..].iter().rev().take_while(|&&m| m == 1).count();
        Ok((encoding.get_ids().to_vec(), lead, trail))
    }
}
