//! NemotronH-family models for marc: config, checkpoint loading and the forward pass.
//!
//! - [`config`]: `config.json` (modern and legacy keys) resolved and validated.
//! - [`checkpoint`]: memory-mapped safetensors, single or sharded, NVIDIA's or transformers' names.
//! - [`weights`]: typed tensor access with shape/dtype checks; weights stay in their dtype.
//! - [`quant`]: NVFP4 / FP8 checkpoints (ModelOpt, compressed-tensors), recognised per tensor.
//! - `blocks`: the Mamba-2, attention, MLP and MoE mixers.
//! - [`model`]: [`NemotronH`], loaded only as deep as needed, run on a [`PackedBatch`].
//! - [`pooling`], [`tokenizer`]: from hidden states to vectors, from text to ids.
//! - [`cuda`]: loading onto a CUDA device (the backend's memory plan from the config).
//! - [`heads`]: compression heads (`heads/NAME/` in a model directory) and the PCA that fits one.

pub mod batch;
mod blocks;
pub mod checkpoint;
pub mod config;
pub mod cuda;
pub mod error;
pub mod heads;
pub mod model;
pub mod pooling;
pub mod quant;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

/// Reusable activation buffers (the CPU backend's tensors).
pub use marc_kernels::backend::cpu::scratch;

pub use batch::PackedBatch;
pub use blocks::moe::{Route, route};
pub use config::{BlockKind, NemotronHConfig};
pub use error::{ForwardError, LoadError};
pub use heads::{CompressionHead, default_head, load_heads};
pub use model::{BlockTimings, LoadOptions, LoadProgress, NemotronH};
pub use pooling::Pooling;
pub use quant::{CheckpointQuantization, QuantFormat, QuantMode};
