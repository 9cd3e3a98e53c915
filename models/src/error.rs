//! Errors of model loading and of the forward pass.
//!
//! Every load error names the file it came from and, where there is one, the config key or
//! tensor, what was expected and what was found: an operator reading the message alone must be
//! able to tell which artefact is broken and how.

use std::path::PathBuf;

use marc_kernels::KernelError;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` (or the shard index) is not valid JSON.
    #[error("{path}: not valid JSON: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A config key holds a value the model cannot use.
    #[error("{path}: config key `{key}`: expected {expected}, found {found}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The key (or keys) at fault.
        key: String,
        /// What a usable value looks like.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// A safetensors file is truncated, corrupt or otherwise unreadable.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor the config requires is in none of the checkpoint's files.
    #[error("{path}: tensor `{tensor}` is missing (expected {expected})")]
    MissingTensor {
        /// The checkpoint directory.
        path: PathBuf,
        /// The tensor's name as the checkpoint would spell it.
        tensor: String,
        /// Its expected dtype and shape.
        expected: String,
    },
    /// A tensor has the wrong shape for the config.
    #[error("{path}: tensor `{tensor}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype the engine cannot use there.
    #[error("{path}: tensor `{tensor}`: expected dtype {expected}, found {found}")]
    DType {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The dtypes accepted.
        expected: String,
        /// The dtype in the file.
        found: String,
    },
    /// A tensor holds values (or a layout) the format forbids: a NaN, infinite, negative or zero
    /// scale, an NVFP4 row length that is not a multiple of 16, ...
    #[error("{path}: tensor `{tensor}`: expected {expected}, found {found}")]
    Invalid {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What the format requires.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// The load options ask for something this checkpoint cannot do (e.g. W4A4 on an NVFP4
    /// layer stored without an activation scale).
    #[error("{path}: tensor `{tensor}`: {message}")]
    Unsupported {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is missing and what to do instead.
        message: String,
    },
    /// A kernel rejected a weight (for example while packing it).
    #[error("{path}: tensor `{tensor}`: {source}")]
    Kernel {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The kernel's error.
        #[source]
        source: KernelError,
    },
    /// The caller asked for a layer the model does not have.
    #[error("layer {requested} requested but the model has layers 0..={available}")]
    LayerOutOfRange {
        /// The layer asked for.
        requested: usize,
        /// The deepest layer the model has.
        available: usize,
    },
    /// The device to load onto cannot be used.
    #[error(transparent)]
    Device(#[from] marc_kernels::device::DeviceError),
}

/// Why a forward pass was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A token id is not below the vocabulary size.
    #[error("token id {id} at position {position} is out of range: the vocabulary has {vocab_size} tokens")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// Its index in the packed batch.
        position: usize,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// The batch's sequence offsets are inconsistent.
    #[error("invalid batch: {0}")]
    Batch(String),
    /// The layer asked for was not loaded (or does not exist).
    #[error("layer {requested} requested but only layers 0..={loaded} are loaded")]
    LayerNotLoaded {
        /// The layer asked for.
        requested: usize,
        /// The deepest loaded layer.
        loaded: usize,
    },
    /// A kernel failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}
