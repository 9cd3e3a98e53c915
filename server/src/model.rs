//! The model as `marc embed`, `marc head init` and the server's engine hold it: loaded on the device
//! `--device` names, and used through [`Encoder`], so that none of them knows which backend runs it.

use std::path::Path;

use anyhow::Context;
use marc_kernels::Device;
use marc_kernels::backend::Backend;
use marc_models::{ForwardError, LoadOptions, LoadProgress, NemotronH, PackedBatch};

/// What the commands and the engine ask of a loaded model.
pub(crate) trait Encoder {
    /// The hidden states at `layers` (sorted, at most [`Self::max_layer`]) of every token of `batch`,
    /// one `[tokens, hidden]` buffer per layer.
    fn hidden_states(&self, batch: &PackedBatch, layers: &[usize]) -> Result<Vec<Vec<f32>>, ForwardError>;
    /// The deepest hidden state the loaded blocks reach.
    fn max_layer(&self) -> usize;
    /// The width of a hidden state.
    fn hidden_size(&self) -> usize;
    /// The hidden states at one layer.
    fn hidden_state(&self, batch: &PackedBatch, layer: usize) -> Result<Vec<f32>, ForwardError>;
}

impl<B: Backend> Encoder for NemotronH<B> {
    fn hidden_states(&self, batch: &PackedBatch, layers: &[usize]) -> Result<Vec<Vec<f32>>, ForwardError> {
        NemotronH::hidden_states(self, batch, layers)
    }

    fn hidden_state(&self, batch: &PackedBatch, layer: usize) -> Result<Vec<f32>, ForwardError> {
        NemotronH::hidden_state(self, batch, layer)
    }

    fn max_layer(&self) -> usize {
        NemotronH::max_layer(self)
    }

    fn hidden_size(&self) -> usize {
        NemotronH::hidden_size(self)
    }
}

/// A loaded model on its device.
pub(crate) type Model = Box<dyn Encoder>;

/// Loads the model in `dir` on `device`. `max_tokens` bounds the tokens of one forward pass: a GPU
/// plans its workspace for it up front (no allocation per batch) and refuses larger batches; the
/// CPU needs no plan.
pub(crate) fn load(
    dir: &Path,
    options: LoadOptions,
    device: Device,
    max_tokens: usize,
    progress: &mut dyn FnMut(LoadProgress),
) -> anyhow::Result<Model> {
    let model: Result<Model, _> = match device {
        Device::Cpu => NemotronH::load_with_progress(dir, options, progress).map(|m| Box::new(m) as Model),
        Device::Cuda(_) => {
            marc_models::cuda::load(dir, options, device, max_tokens, progress).map(|m| Box::new(m) as Model)
        }
    };
    model.with_context(|| format!("cannot load the model in {} on {device}", dir.display()))
}
