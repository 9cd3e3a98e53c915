//! A packed batch: sequences' token ids concatenated, delimited by cumulative offsets. No padding.

use crate::error::ForwardError;

/// Token ids of several sequences, concatenated; sequence `i` is
/// `tokens[cu_seqlens[i]..cu_seqlens[i + 1]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedBatch {
    tokens: Vec<u32>,
    cu_seqlens: Vec<usize>,
}

impl PackedBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            tokens: Vec::new(),
            cu_seqlens: vec![0],
        }
    }

    /// Packs the given sequences in order.
    pub fn from_sequences<S: AsRef<[u32]>>(sequences: &[S]) -> Self {
        let mut batch = Self::new();
        for s in sequences {
            batch.push(s.as_ref());
        }
        batch
    }

    /// Appends one sequence.
    pub fn push(&mut self, sequence: &[u32]) {
        self.tokens.extend_from_slice(sequence);
        self.cu_seqlens.push(self.tokens.len());
    }

    /// All token ids.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The `num_sequences + 1` offsets.
    pub fn cu_seqlens(&self) -> &[usize] {
        &self.cu_seqlens
    }

    /// Number of sequences.
    pub fn num_sequences(&self) -> usize {
        self.cu_seqlens.len() - 1
    }

    /// Total tokens.
    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// The token range of sequence `i`.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.cu_seqlens[i]..self.cu_seqlens[i + 1]
    }

    /// Checks every id against the vocabulary.
    pub(crate) fn check_vocab(&self, vocab_size: usize) -> Result<(), ForwardError> {
        match self.tokens.iter().position(|&id| id as usize >= vocab_size) {
            Some(position) => Err(ForwardError::TokenOutOfRange {
                id: self.tokens[position],
                position,
                vocab_size,
            }),
            None => Ok(()),
        }
    }
}
