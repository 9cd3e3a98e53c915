//! The NemotronH model: embeddings, the blocks (`h = h + mixer(rmsnorm(h))`), and `norm_f`,
//! loaded only as deep as the deepest layer that will be asked for.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marc_kernels::MatmulPrecision;
use marc_kernels::backend::cpu::Cpu;
use marc_kernels::backend::{Backend, Resident};

use crate::batch::PackedBatch;
use crate::blocks::Mixer;
use crate::checkpoint::{Checkpoint, layer_of};
use crate::config::{BlockKind, NemotronHConfig, config_path};
use crate::error::{ForwardError, LoadError};
use crate::quant::{ActivationAmax, QuantMode};
use crate::weights::WeightLoader;

/// What to load.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// The deepest hidden state that will be asked for (transformers' `hidden_states[L]`
    /// numbering: 0 = embeddings, `num_layers` = after `norm_f`). `None` loads every block.
    pub max_layer: Option<usize>,
    /// How GEMMs treat activations: exact f32 (the default), or the opt-in bf16 mode (see
    /// [`MatmulPrecision::Bf16Activations`]; only AMX machines run it faster).
    pub precision: MatmulPrecision,
    /// How NVFP4 layers of a quantised checkpoint run (no effect on other layers).
    pub quant: QuantMode,
}

/// Progress of a load: bytes of weights read so far and in all.
#[derive(Clone, Copy, Debug)]
pub struct LoadProgress {
    /// Bytes consumed.
    pub done: u64,
    /// Bytes to consume.
    pub total: u64,
}

/// Wall time spent per block kind, summed over calls.
#[derive(Clone, Debug, Default)]
pub struct BlockTimings {
    /// `(kind, total time, blocks run)` for each kind seen, in first-seen order.
    pub by_kind: Vec<(BlockKind, Duration, usize)>,
}

impl BlockTimings {
    fn add(&mut self, kind: BlockKind, elapsed: Duration) {
        match self.by_kind.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, total, count)) => {
                *total += elapsed;
                *count += 1;
            }
            None => self.by_kind.push((kind, elapsed, 1)),
        }
    }
}

struct Block<B: Backend> {
    norm: B::Vector,
    mixer: Mixer<B>,
}

/// A loaded NemotronH model (possibly cut after a middle block), its weights held by backend `B`
/// (the CPU by default), which runs its forward pass.
pub struct NemotronH<B: Backend = Cpu> {
    backend: B,
    config: NemotronHConfig,
    embeddings: B::Embedding,
    blocks: Vec<Block<B>>,
    /// Present only when every block is loaded.
    norm_f: Option<B::Vector>,
}

impl NemotronH<Cpu> {
    /// Loads the model in `dir` (`config.json` + safetensors) on the CPU.
    pub fn load(dir: &Path, options: LoadOptions) -> Result<Self, LoadError> {
        Self::load_with_progress(dir, options, &mut |_| {})
    }

    /// Like [`NemotronH::load`], reporting progress as weights are read.
    pub fn load_with_progress(
        dir: &Path,
        options: LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, LoadError> {
        Self::load_with(Cpu, dir, options, progress, None)
    }

    /// Like [`NemotronH::load`], with every Linear reporting its inputs to `amax` when it runs:
    /// the model `marc quantize --calibrate` runs a corpus through (see
    /// [`crate::quant::calibration`]).
    pub fn load_observed(dir: &Path, options: LoadOptions, amax: Arc<ActivationAmax>) -> Result<Self, LoadError> {
        Self::load_with(Cpu, dir, options, &mut |_| {}, Some(amax))
    }
}

impl<B: Backend> NemotronH<B> {
    /// Loads the model in `dir` onto `backend`, reporting progress as weights are read.
    pub fn load_on(
        backend: B,
        dir: &Path,
        options: LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, LoadError> {
        Self::load_with(backend, dir, options, progress, None)
    }

    fn load_with(
        backend: B,
        dir: &Path,
        options: LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
        observer: Option<Arc<ActivationAmax>>,
    ) -> Result<Self, LoadError> {
        let config = NemotronHConfig::from_file(&config_path(dir))?;
        let num_layers = config.num_layers();
        let depth = options.max_layer.unwrap_or(num_layers);
        if depth > num_layers {
            return Err(LoadError::LayerOutOfRange {
                requested: depth,
                available: num_layers,
            });
        }
        let full = depth == num_layers;
        let checkpoint = Checkpoint::open(dir)?;
        let total = checkpoint.total_bytes(|name| match layer_of(name) {
            Some(layer) => layer < depth,
            None => name == "embeddings.weight" || (full && name == "norm_f.weight"),
        })?;
        progress(LoadProgress { done: 0, total });
        let mut report = |done: u64| progress(LoadProgress { done, total });
        let mut w = WeightLoader::new(&backend, &checkpoint, options.precision, options.quant, &mut report);
        if let Some(amax) = observer {
            w.observe_into(amax);
        }

        let hidden = config.hidden_size;
        let embeddings = w.embedding("embeddings.weight", config.vocab_size, hidden)?;
        let blocks = (0..depth)
            .map(|layer| {
                Ok(Block {
                    norm: w.param(&format!("layers.{layer}.norm.weight"), &[hidden])?,
                    mixer: Mixer::load(&mut w, &config, layer)?,
                })
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        let norm_f = full.then(|| w.param("norm_f.weight", &[hidden])).transpose()?;
        Ok(Self {
            backend,
            config,
            embeddings,
            blocks,
            norm_f,
        })
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The model's config.
    pub fn config(&self) -> &NemotronHConfig {
        &self.config
    }

    /// The deepest hidden state this instance can compute.
    pub fn max_layer(&self) -> usize {
        self.blocks.len()
    }

    /// Width of every hidden state.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        // Norm and SSM vectors are negligible next to the matrices; count the big parts.
        self.embeddings.size_in_bytes() + self.blocks.iter().map(|b| b.mixer.size_in_bytes()).sum::<usize>()
    }

    /// Hidden states `[tokens, hidden]` of the packed batch at each requested layer, in the
    /// order asked. Layer numbering is transformers' `hidden_states`: 0 = embeddings, `L` = output
    /// of block `L`, `num_layers` = after `norm_f`. Only blocks up to the deepest layer asked run.
    pub fn hidden_states(&self, batch: &PackedBatch, layers: &[usize]) -> Result<Vec<Vec<f32>>, ForwardError> {
        self.hidden_states_timed(batch, layers, None)
    }

    /// Like [`NemotronH::hidden_states`], adding each block's wall time to `timings` by block kind
    /// (for `marc bench --profile`).
    pub fn hidden_states_timed(
        &self,
        batch: &PackedBatch,
        layers: &[usize],
        timings: Option<&mut BlockTimings>,
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        self.backend.run_forward(|| self.forward(batch, layers, timings))
    }

    /// The forward pass of [`NemotronH::hidden_states_timed`], run where the backend wants it.
    fn forward(
        &self,
        batch: &PackedBatch,
        layers: &[usize],
        mut timings: Option<&mut BlockTimings>,
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        let deepest = layers.iter().copied().max().unwrap_or(0);
        if deepest > self.max_layer() {
            return Err(ForwardError::LayerNotLoaded {
                requested: deepest,
                loaded: self.max_layer(),
            });
        }
        batch.check_vocab(self.config.vocab_size)?;
        let backend = &self.backend;
        let on_backend = backend.batch(batch.tokens(), batch.cu_seqlens())?;

        let mut h = backend.embed(&self.embeddings, &on_backend)?;
        let mut outputs: Vec<Option<Vec<f32>>> = vec![None; layers.len()];
        for layer in 0..=deepest {
            if layer > 0 {
                let started = Instant::now();
                let block = &self.blocks[layer - 1];
                let normed = backend.rms_norm(&h, &block.norm, self.config.norm_eps)?;
                let mixed = block.mixer.forward(backend, &normed, &on_backend)?;
                backend.add_assign(&mut h, &mixed)?;
                if let Some(t) = timings.as_deref_mut() {
                    backend.synchronize()?;
                    t.add(self.config.blocks[layer - 1], started.elapsed());
                }
            }
            if !layers.contains(&layer) {
                continue;
            }
            let state = match (&self.norm_f, layer == self.config.num_layers()) {
                (Some(norm_f), true) => backend.download(&backend.rms_norm(&h, norm_f, self.config.norm_eps)?)?,
                _ => backend.download(&h)?,
            };
            for (slot, _) in outputs.iter_mut().zip(layers).filter(|(_, l)| **l == layer) {
                *slot = Some(state.clone());
            }
        }
        Ok(outputs.into_iter().map(|o| o.unwrap_or_default()).collect())
    }

    /// The hidden state at one layer; see [`NemotronH::hidden_states`].
    pub fn hidden_state(&self, batch: &PackedBatch, layer: usize) -> Result<Vec<f32>, ForwardError> {
        Ok(self.hidden_states(batch, &[layer])?.pop().unwrap_or_default())
    }
}
