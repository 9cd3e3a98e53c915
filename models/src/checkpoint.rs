//! Safetensors checkpoints as published: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`; memory-mapped, headers validated, files opened only when a
//! tensor in them is asked for (so a model cut at layer 20 never touches shards of layers 21+).
//!
//! Tensor names are looked up by their *canonical* form, without the `backbone.` (NVIDIA's files)
//! or `model.` (transformers' in-memory names) prefix. Routed experts are found either one 2-D
//! tensor per expert (`experts.K.up_proj.weight`, NVIDIA) or stacked (`experts.up_proj`
//! `[E, out, in]`, transformers).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::LoadError;

/// Name of an unsharded checkpoint's weights file.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Prefixes stripped to form canonical names, in the order they are tried.
const PREFIXES: [&str; 2] = ["backbone.", "model."];

/// One tensor, borrowed from its memory-mapped file.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// The name as stored in the file.
    pub name: &'a str,
    /// The file holding it.
    pub path: &'a Path,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: &'a [usize],
    /// Its raw little-endian bytes (not necessarily aligned).
    pub bytes: &'a [u8],
}

/// Where a tensor lives: which file, and its header entry there.
#[derive(Clone, Debug)]
struct Entry {
    /// Index into `Checkpoint::files`.
    file: usize,
    /// The name as stored.
    stored_name: String,
}

/// A memory-mapped file and its parsed header, opened on first use.
struct LazyFile {
    path: PathBuf,
    opened: OnceLock<Result<MappedFile, String>>,
}

struct MappedFile {
    mmap: Mmap,
    /// Stored name -> (dtype, shape, byte range within the mmap).
    tensors: HashMap<String, (Dtype, Vec<usize>, std::ops::Range<usize>)>,
}

/// A checkpoint directory's tensors.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<LazyFile>,
    /// Canonical name -> entry.
    entries: HashMap<String, Entry>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Opens `dir`: reads the shard index if there is one, else maps `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let index_path = dir.join(INDEX_FILE);
        let single_path = dir.join(SINGLE_FILE);
        let mut checkpoint = Self {
            dir: dir.to_owned(),
            files: Vec::new(),
            entries: HashMap::new(),
        };
        if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(|source| LoadError::Io {
                path: index_path.clone(),
                source,
            })?;
            let index: ShardIndex = serde_json::from_str(&text).map_err(|e| LoadError::Json {
                path: index_path.clone(),
                message: e.to_string(),
            })?;
            let mut file_ids: HashMap<String, usize> = HashMap::new();
            for (name, file_name) in index.weight_map {
                // Shard names are plain file names in the same directory; refuse anything else.
                if file_name.contains('/') || file_name.contains('\\') || file_name.starts_with('.') {
                    return Err(LoadError::Json {
                        path: index_path.clone(),
                        message: format!(
                            "weight_map[{name:?}] names {file_name:?}, not a file in {}",
                            dir.display()
                        ),
                    });
                }
                let next_id = file_ids.len();
                let file = *file_ids.entry(file_name.clone()).or_insert_with(|| {
                    checkpoint.files.push(LazyFile::new(dir.join(&file_name)));
                    next_id
                });
                checkpoint.insert(name, file);
            }
        } else if single_path.is_file() {
            checkpoint.files.push(LazyFile::new(single_path));
            let names: Vec<String> = checkpoint.files[0].get()?.tensors.keys().cloned().collect();
            for name in names {
                checkpoint.insert(name, 0);
            }
        } else {
            return Err(LoadError::Io {
                path: single_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("neither {SINGLE_FILE} nor {INDEX_FILE} is in {}", dir.display()),
                ),
            });
        }
        Ok(checkpoint)
    }

    fn insert(&mut self, stored_name: String, file: usize) {
        let canonical = canonical_name(&stored_name).to_owned();
        self.entries.insert(canonical, Entry { file, stored_name });
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a tensor with this canonical name exists (opens no file).
    pub fn contains(&self, canonical: &str) -> bool {
        self.entries.contains_key(canonical)
    }

    /// Canonical names of all tensors (opens no file).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The tensor with this canonical name, if the checkpoint has it.
    pub fn get(&self, canonical: &str) -> Result<Option<TensorRef<'_>>, LoadError> {
        let Some(entry) = self.entries.get(canonical) else {
            return Ok(None);
        };
        let lazy = &self.files[entry.file];
        let file = lazy.get()?;
        let Some((dtype, shape, range)) = file.tensors.get(&entry.stored_name) else {
            return Err(LoadError::Safetensors {
                path: lazy.path.clone(),
                message: format!(
                    "{INDEX_FILE} places tensor `{}` in this file, but the file does not hold it",
                    entry.stored_name
                ),
            });
        };
        Ok(Some(TensorRef {
            name: &entry.stored_name,
            path: &lazy.path,
            dtype: *dtype,
            shape,
            bytes: &file.mmap[range.clone()],
        }))
    }

    /// The tensor with this canonical name, or an error naming it and what was expected.
    pub fn require(&self, canonical: &str, expected: &str) -> Result<TensorRef<'_>, LoadError> {
        self.get(canonical)?.ok_or_else(|| LoadError::MissingTensor {
            path: self.dir.clone(),
            tensor: self.display_name(canonical),
            expected: expected.to_owned(),
        })
    }

    /// How a missing canonical name would be spelled in this checkpoint's files.
    fn display_name(&self, canonical: &str) -> String {
        let prefix = self
            .entries
            .values()
            .find_map(|e| PREFIXES.iter().find(|p| e.stored_name.starts_with(**p)))
            .copied()
            .unwrap_or("");
        format!("{prefix}{canonical}")
    }

    /// The checkpoint's files, each with the canonical names of the tensors it holds (sorted), in
    /// the order the files were first named (opens no file).
    pub fn files(&self) -> Vec<(&Path, Vec<&str>)> {
        let mut files: Vec<(&Path, Vec<&str>)> = self.files.iter().map(|f| (f.path.as_path(), Vec::new())).collect();
        for (canonical, entry) in &self.entries {
            files[entry.file].1.push(canonical);
        }
        for (_, names) in &mut files {
            names.sort_unstable();
        }
        files
    }

    /// Whether the tensors come from a shard index (`model.safetensors.index.json`).
    pub fn is_sharded(&self) -> bool {
        self.dir.join(INDEX_FILE).is_file()
    }

    /// Bytes of all tensors whose canonical name satisfies `wanted`; opens the files that hold them.
    pub fn total_bytes(&self, wanted: impl Fn(&str) -> bool) -> Result<u64, LoadError> {
        let mut total = 0u64;
        for (canonical, _) in self.entries.iter().filter(|(name, _)| wanted(name)) {
            if let Some(t) = self.get(canonical)? {
                total += t.bytes.len() as u64;
            }
        }
        Ok(total)
    }
}

impl LazyFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            opened: OnceLock::new(),
        }
    }

    fn get(&self) -> Result<&MappedFile, LoadError> {
        match self.opened.get_or_init(|| MappedFile::open(&self.path)) {
            Ok(file) => Ok(file),
            Err(message) => Err(LoadError::Safetensors {
                path: self.path.clone(),
                message: message.clone(),
            }),
        }
    }
}

impl MappedFile {
    /// Maps and validates one safetensors file. Errors are strings so the result can be cached
    /// in a `OnceLock` and reported with the path by the caller.
    fn open(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        // SAFETY: the mapping is read-only and private to this process. Another process
        // truncating the file while it is mapped would make reads fault; that is the accepted
        // contract of serving weights from memory-mapped files (every engine does the same).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| format!("cannot memory-map: {e}"))?;
        // `read_metadata` checks the header length, the JSON, and that every tensor's byte range
        // matches its dtype and shape and lies inside the file (a truncated file fails here).
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| e.to_string())?;
        let data_start = 8 + header_len;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (start, end) = info.data_offsets;
                (
                    name,
                    (info.dtype, info.shape.clone(), data_start + start..data_start + end),
                )
            })
            .collect();
        Ok(Self { mmap, tensors })
    }
}

/// Strips the `backbone.` / `model.` prefix.
pub fn canonical_name(stored: &str) -> &str {
    PREFIXES.iter().find_map(|p| stored.strip_prefix(p)).unwrap_or(stored)
}

/// The block index of a canonical `layers.N.*` name.
pub fn layer_of(canonical: &str) -> Option<usize> {
    canonical.strip_prefix("layers.")?.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_drop_either_prefix() {
        assert_eq!(canonical_name("backbone.layers.3.mixer.A_log"), "layers.3.mixer.A_log");
        assert_eq!(canonical_name("model.norm_f.weight"), "norm_f.weight");
        assert_eq!(canonical_name("lm_head.weight"), "lm_head.weight");
        assert_eq!(layer_of("layers.12.mixer.D"), Some(12));
        assert_eq!(layer_of("norm_f.weight"), None);
    }
}
