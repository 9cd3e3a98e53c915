//! An on-disk cache of the kernels' PTX: at start-up the server compiles each kernel file with the
//! serving machine's own NVRTC (PTX from a newer NVRTC cannot be loaded by an older driver) for the
//! device's architecture, once per source version.
//!
//! Layout under the cache folder: `include/` holds the embedded headers (NVRTC reads includes from
//! disk), and `ptx/<file>-<arch>-<key>.ptx` the results, where the key hashes the kernel file, every
//! header, the architecture and the NVRTC version, so any change compiles afresh and stale entries
//! are simply never read. Writes go through a temporary file and a rename, so a crash or a second
//! server sharing the folder never sees half a file.

use std::path::{Path, PathBuf};

use super::nvrtc::{self, NvrtcError};
use super::sources::{HEADERS, KERNELS};

/// What went wrong filling or reading the cache.
#[derive(Debug, thiserror::Error)]
pub enum PtxCacheError {
    /// Reading or writing a cache file failed.
    #[error("PTX cache: {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Compiling failed.
    #[error(transparent)]
    Nvrtc(#[from] NvrtcError),
}

/// One kernel file's PTX.
#[derive(Debug, Clone)]
pub struct KernelPtx {
    /// The kernel file (`norm.cu`).
    pub file: &'static str,
    /// Its PTX.
    pub ptx: String,
    /// Whether it came from the cache (false: compiled now).
    pub cached: bool,
}

/// FNV-1a, 64-bit: stable across Rust versions and platforms, unlike `DefaultHasher`.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        for &byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PtxCacheError {
    let path = path.to_owned();
    move |source| PtxCacheError::Io { action, path, source }
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PtxCacheError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io_error("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error("renaming into", path))
}

/// PTX for every kernel file for `arch` (e.g. `compute_90a`), compiled with NVRTC into `cache_dir`
/// or read from it. `cuda_include` is the CUDA toolkit's include folder (for `cuda_bf16.h`).
pub fn kernels_ptx(cache_dir: &Path, arch: &str, cuda_include: &Path) -> Result<Vec<KernelPtx>, PtxCacheError> {
    let include = cache_dir.join("include");
    let ptx_dir = cache_dir.join("ptx");
    std::fs::create_dir_all(&include).map_err(io_error("creating", &include))?;
    std::fs::create_dir_all(&ptx_dir).map_err(io_error("creating", &ptx_dir))?;
    for header in HEADERS {
        let path = cache_dir.join(header.name);
        if std::fs::read(&path).ok().as_deref() != Some(header.text.as_bytes()) {
            write_atomic(&path, header.text.as_bytes())?;
        }
    }
    let (major, minor) = nvrtc::version()?;
    let version = format!("nvrtc {major}.{minor}");
    KERNELS
        .iter()
        .map(|kernel| {
            let mut parts: Vec<&[u8]> = vec![kernel.text.as_bytes(), arch.as_bytes(), version.as_bytes()];
            parts.extend(HEADERS.iter().map(|h| h.text.as_bytes()));
            let stem = kernel.name.trim_end_matches(".cu");
            let path = ptx_dir.join(format!("{stem}-{arch}-{:016x}.ptx", fnv1a(&parts)));
            if let Ok(ptx) = std::fs::read_to_string(&path) {
                return Ok(KernelPtx {
                    file: kernel.name,
                    ptx,
                    cached: true,
                });
            }
            let compiled = nvrtc::compile(kernel.name, kernel.text, arch, &[&include, cuda_include])?;
            let ptx = compiled.ptx.unwrap_or_default();
            write_atomic(&path, ptx.as_bytes())?;
            Ok(KernelPtx {
                file: kernel.name,
                ptx,
                cached: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_vectors_and_separates_parts() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c; ours appends a 0xff separator per part.
        let mut plain = 0xcbf2_9ce4_8422_2325u64;
        for &b in b"a" {
            plain ^= u64::from(b);
            plain = plain.wrapping_mul(0x0100_0000_01b3);
        }
        assert_eq!(plain, 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
