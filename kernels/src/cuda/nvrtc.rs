//! Compiling a kernel file with NVRTC through cudarc, keeping the compiler's log (ptxas' resource
//! report when compiling for a real architecture with `--ptxas-options=-v`), which cudarc's
//! `compile_ptx_with_opts` drops on success.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

/// What went wrong compiling.
#[derive(Debug, thiserror::Error)]
pub enum NvrtcError {
    /// No NVRTC library could be loaded.
    #[error(
        "NVRTC (libnvrtc.so) is not installed or not on the library path; the CUDA backend compiles its \
         kernels with it"
    )]
    Missing,
    /// Loading a given NVRTC library file failed.
    #[error("cannot load NVRTC from {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// NVRTC refused the source.
    #[error("NVRTC failed to compile {name} for {arch}: {reason}\n{log}")]
    Compile {
        /// The kernel file.
        name: String,
        /// The target.
        arch: String,
        /// NVRTC's error.
        reason: String,
        /// The compiler's log.
        log: String,
    },
}

/// A compiled kernel file.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The PTX, when compiled for a virtual architecture (`compute_90a`); `None` for a real one
    /// (`sm_90a`), where NVRTC produces a cubin and the log is what matters.
    pub ptx: Option<String>,
    /// The compiler's log (ptxas' resource report with `--ptxas-options=-v`).
    pub log: String,
}

/// Loads NVRTC from an explicit file (e.g. the PyPI wheel's `lib/libnvrtc.so.13`) so that cudarc,
/// which opens it by its usual names, finds the already loaded library. Without this, NVRTC is
/// found on the normal library path.
pub fn load_library(path: &Path) -> Result<(), NvrtcError> {
    let load_error = |reason: String| NvrtcError::Load {
        path: path.to_owned(),
        reason,
    };
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| load_error(e.to_string()))?;
    // SAFETY: a valid C string; the handle is deliberately never closed (the library stays loaded
    // for the process's life, as cudarc expects).
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns null or a valid C string owned by libc.
        let msg = unsafe { libc::dlerror() };
        let reason = if msg.is_null() {
            "unknown error".to_owned()
        } else {
            // SAFETY: non-null and NUL-terminated (see above).
            unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
        };
        return Err(load_error(reason));
    }
    Ok(())
}

/// Whether an NVRTC library can be used (loaded by [`load_library`] or on the library path).
pub fn available() -> bool {
    // SAFETY: only tries to open the library by its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn c_text(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles `text` (the file `name`) for `arch` (`compute_90a` for PTX, `sm_90a` / `sm_100a` for a
/// cubin with ptxas' report) with `include_dirs` on the include path.
pub fn compile(name: &str, text: &str, arch: &str, include_dirs: &[&Path]) -> Result<Compiled, NvrtcError> {
    if !available() {
        return Err(NvrtcError::Missing);
    }
    let failure = |reason: String, log: String| NvrtcError::Compile {
        name: name.to_owned(),
        arch: arch.to_owned(),
        reason,
        log,
    };
    let src = CString::new(text).map_err(|e| failure(e.to_string(), String::new()))?;
    let c_name = CString::new(name).map_err(|e| failure(e.to_string(), String::new()))?;
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_owned(),
        "--ptxas-options=-v".to_owned(),
    ];
    options.extend(include_dirs.iter().map(|d| format!("--include-path={}", d.display())));
    let program = cudarc::nvrtc::result::create_program(&src, Some(&c_name))
        .map_err(|e| failure(e.to_string(), String::new()))?;
    // SAFETY: `program` was just created and is destroyed exactly once below; `src` and `c_name`
    // outlive it.
    unsafe {
        let compiled = cudarc::nvrtc::result::compile_program(program, &options);
        let log = cudarc::nvrtc::result::get_program_log(program)
            .map(|l| c_text(&l))
            .unwrap_or_default();
        let outcome = match compiled {
            Err(e) => Err(failure(e.to_string(), log)),
            Ok(()) if arch.starts_with("compute_") => match cudarc::nvrtc::result::get_ptx(program) {
                Ok(ptx) => Ok(Compiled {
                    ptx: Some(c_text(&ptx)),
                    log,
                }),
                Err(e) => Err(failure(e.to_string(), log)),
            },
            Ok(()) => Ok(Compiled { ptx: None, log }),
        };
        // Nothing useful to do if freeing fails.
        let _ = cudarc::nvrtc::result::destroy_program(program);
        outcome
    }
}

/// NVRTC's version as (major, minor), part of the PTX cache key.
pub fn version() -> Result<(i32, i32), NvrtcError> {
    if !available() {
        return Err(NvrtcError::Missing);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above) and both pointers are valid.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| NvrtcError::Load {
            path: PathBuf::from("libnvrtc"),
            reason: e.to_string(),
        })?;
    Ok((major, minor))
}
