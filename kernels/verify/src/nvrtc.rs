//! Compiling a kernel source with NVRTC (`libnvrtc.so.13` from the `nvidia-cuda-nvrtc` wheel),
//! loaded at run time so nothing links against CUDA.
//!
//! Compiling for a real architecture (`sm_90a`) runs ptxas inside NVRTC; with `--ptxas-options=-v`
//! its resource report lands in the program log, which [`compile`] returns.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};

/// What went wrong compiling a source.
#[derive(Debug, thiserror::Error)]
pub enum NvrtcError {
    /// The library could not be loaded or lacks a symbol.
    #[error("cannot load NVRTC from {path}: {reason}")]
    Load {
        /// The library file tried.
        path: PathBuf,
        /// dlopen's or dlsym's message.
        reason: String,
    },
    /// The source file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The source file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// NVRTC rejected the source; the log says why.
    #[error("NVRTC failed to compile {path} for {arch} ({status}):\n{log}")]
    Compile {
        /// The source file.
        path: PathBuf,
        /// The target architecture.
        arch: String,
        /// NVRTC's error string.
        status: String,
        /// The compiler's log.
        log: String,
    },
}

type Program = *mut c_void;

/// The NVRTC entry points this crate uses.
struct Api {
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    log: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    destroy: unsafe extern "C" fn(*mut Program) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
}

/// An opened libnvrtc.
pub struct Nvrtc {
    api: Api,
}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a valid C string owned by libc.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown error".to_owned()
    } else {
        // SAFETY: non-null, NUL-terminated (see above).
        unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
    }
}

impl Nvrtc {
    /// Opens `libnvrtc.so.13` under `tools/lib` (`tools` as printed by `scripts/cuda_tools.sh`).
    pub fn open(tools: &Path) -> Result<Self, NvrtcError> {
        let path = tools.join("lib/libnvrtc.so.13");
        let load_error = |reason: String| NvrtcError::Load {
            path: path.clone(),
            reason,
        };
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| load_error(e.to_string()))?;
        // SAFETY: a valid C string; the handle is never closed, so symbols stay valid for the
        // process's life.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(load_error(dl_error()));
        }
        let symbol = |name: &CStr| -> Result<*mut c_void, NvrtcError> {
            // SAFETY: handle is a live library handle and name a valid C string.
            let ptr = unsafe { libc::dlsym(handle, name.as_ptr()) };
            if ptr.is_null() {
                Err(load_error(dl_error()))
            } else {
                Ok(ptr)
            }
        };
        // SAFETY: each symbol is the NVRTC function of that name, whose C signature (nvrtc.h) is
        // the function pointer type it is cast to.
        let api = unsafe {
            Api {
                create: std::mem::transmute::<*mut c_void, _>(symbol(c"nvrtcCreateProgram")?),
                compile: std::mem::transmute::<*mut c_void, _>(symbol(c"nvrtcCompileProgram")?),
                log_size: std::mem::transmute::<*mut c_void, _>(symbol(c"nvrtcGetProgramLogSize")?),
                log: std::mem::transmute::<*mut c_void, _>(symbol(c"nvrtcGetProgramLog")?),
                destroy: std::mem::transmute::<*mut c_void, _>(symbol(c"nvrtcDestroyProgram")?),
                error_string: std::mem::transmute::<*mut c_void, _>(symbol(c"nvrtcGetErrorString")?),
            }
        };
        Ok(Self { api })
    }

    /// Compiles `source` for `arch` (e.g. `sm_90a`) with `include_dirs` and ptxas' verbose report;
    /// returns the compiler log.
    pub fn compile(&self, source: &Path, arch: &str, include_dirs: &[&Path]) -> Result<String, NvrtcError> {
        let text = std::fs::read(source).map_err(|e| NvrtcError::Read {
            path: source.to_owned(),
            source: e,
        })?;
        let c_string = |bytes: Vec<u8>| CString::new(bytes).unwrap_or_default();
        let text = c_string(text);
        let name = c_string(source.as_os_str().as_encoded_bytes().to_vec());
        let mut options = vec![
            format!("--gpu-architecture={arch}"),
            "--ptxas-options=-v".to_owned(),
            "--std=c++17".to_owned(),
        ];
        options.extend(include_dirs.iter().map(|d| format!("--include-path={}", d.display())));
        let options: Vec<CString> = options.into_iter().map(|o| c_string(o.into_bytes())).collect();
        let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();

        let mut program: Program = std::ptr::null_mut();
        // SAFETY: valid C strings and a program slot; no embedded headers.
        let status = unsafe {
            (self.api.create)(
                &mut program,
                text.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if status != 0 {
            return Err(self.failure(source, arch, status, String::new()));
        }
        // SAFETY: a program just created, options valid for the call.
        let status = unsafe { (self.api.compile)(program, option_ptrs.len() as c_int, option_ptrs.as_ptr()) };
        let log = self.log(program);
        // SAFETY: the program is destroyed exactly once.
        unsafe { (self.api.destroy)(&mut program) };
        if status != 0 {
            return Err(self.failure(source, arch, status, log));
        }
        Ok(log)
    }

    fn log(&self, program: Program) -> String {
        let mut size = 0usize;
        // SAFETY: a live program; size is written by NVRTC.
        if unsafe { (self.api.log_size)(program, &mut size) } != 0 || size == 0 {
            return String::new();
        }
        let mut buf = vec![0u8; size];
        // SAFETY: buf has the size NVRTC asked for, terminator included.
        if unsafe { (self.api.log)(program, buf.as_mut_ptr().cast()) } != 0 {
            return String::new();
        }
        CStr::from_bytes_until_nul(&buf)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn failure(&self, source: &Path, arch: &str, status: c_int, log: String) -> NvrtcError {
        // SAFETY: nvrtcGetErrorString returns a static C string for any status.
        let status = unsafe { CStr::from_ptr((self.api.error_string)(status)) }
            .to_string_lossy()
            .into_owned();
        NvrtcError::Compile {
            path: source.to_owned(),
            arch: arch.to_owned(),
            status,
            log,
        }
    }
}
