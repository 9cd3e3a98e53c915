//! The CUDA backend's host side: a context and one stream, the kernels compiled with NVRTC and
//! resolved once (`kernels.rs`), the device memory of a [`MemoryPlan`] (weights uploaded once, one
//! workspace arena for the activations) and the launches, with the launch configurations of
//! docs/gpu.md's kernel table.
//!
//! GEMMs run on `gemm_bf16_f32` / `grouped_gemm_bf16_f32`, whose operands are bf16. So that the
//! default precision stays exact (as on the CPU), an f32 activation is split exactly into three
//! bf16 parts (`hi + mid + lo`, as the CPU's AMX path does) and the three products, each exact in
//! the tensor cores, are summed in f32; `--precision bf16` rounds it to one bf16 part instead.
//! FP8 and NVFP4 Linear weights run on their own GEMMs as stored (`gemm_fp8_f32`,
//! `gemm_nvfp4_w4a16_f32`, and for W4A4 `nvfp4_quantize_f32` + `gemm_nvfp4_w4a4_f32`), which take
//! f32 activations directly; routed FP8 and NVFP4 experts on their grouped GEMMs likewise. f32 and
//! f16 weights are refused at load, naming the format.

mod gemm;
mod kernels;
mod launch;
mod memory;
mod moe;
mod ops;

pub use kernels::NEEDED as NEEDED_KERNELS;
pub use memory::{CudaBatch, CudaEmbedding, CudaExperts, CudaLinear, CudaTensor, CudaVector};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError};
use cudarc::nvrtc::Ptx;

use self::kernels::Kernels;
use self::memory::ArenaBuf;
use super::arena::StackArena;
use super::plan::{BlockShape, MemoryPlan, ModelShape};
use super::{nvrtc, ptx_cache};
use crate::device::{Device, DeviceError};
use crate::error::KernelError;

/// Where the CUDA toolkit's NVRTC and headers are, and where compiled PTX is cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaSetup {
    /// A folder with `include/cuda_bf16.h` and NVRTC under `lib/` or `lib64/` (a CUDA toolkit,
    /// or the PyPI wheels' `nvidia/cu13`).
    pub toolkit: PathBuf,
    /// The PTX cache folder (see [`ptx_cache`]).
    pub cache_dir: PathBuf,
}

impl CudaSetup {
    /// From the environment: `MARC_CUDA_HOME`, else `CUDA_HOME`, else `/usr/local/cuda`; the
    /// cache in `MARC_PTX_CACHE`, else `$HOME/.cache/marc/ptx`, else the temporary folder.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let toolkit = var("MARC_CUDA_HOME")
            .or_else(|| var("CUDA_HOME"))
            .unwrap_or_else(|| PathBuf::from("/usr/local/cuda"));
        let cache_dir = var("MARC_PTX_CACHE")
            .or_else(|| var("HOME").map(|home| home.join(".cache/marc/ptx")))
            .unwrap_or_else(|| std::env::temp_dir().join("marc-ptx"));
        Self { toolkit, cache_dir }
    }

    /// Loads the toolkit's NVRTC when it has one; otherwise NVRTC is looked up on the library path.
    fn load_nvrtc(&self) -> Result<(), nvrtc::NvrtcError> {
        let candidates = ["lib/libnvrtc.so.13", "lib64/libnvrtc.so", "lib/libnvrtc.so"];
        match candidates.iter().map(|c| self.toolkit.join(c)).find(|p| p.exists()) {
            Some(path) => nvrtc::load_library(&path),
            None => Ok(()),
        }
    }
}

/// The CUDA backend on one device. Ops are issued on one stream, in order.
pub struct Cuda {
    device: Device,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    /// `(major, minor)` as the driver reports it: picks the kernels that need an architecture
    /// (the tcgen05 W4A4 GEMM on 10.x).
    compute_capability: (i32, i32),
    plan: MemoryPlan,
    /// Keeps the workspace alive; tensors address it through `base`.
    _workspace: CudaSlice<u8>,
    base: u64,
    arena: Arc<Mutex<StackArena>>,
}

/// The largest dynamic shared memory a kernel gets without opting in.
const DEFAULT_DYNAMIC_SHARED: usize = 48 << 10;

/// The attention head widths `attention.cu` is instantiated for (`causal_attention_f32_d{D}`).
const ATTENTION_HEAD_DIMS: [usize; 6] = [8, 16, 24, 32, 64, 128];

/// Tokens per chunk of `ssd_scan_f32` (`SSD_CHUNK`).
const SSD_CHUNK: usize = 32;

/// Dynamic shared memory of `ssd_scan_f32` for one head: `(N P + Q P + 2 Q N + Q Q + 2 Q)` floats.
fn ssd_shared_bytes(head_dim: usize, state: usize) -> usize {
    let q = SSD_CHUNK;
    (state * head_dim + q * head_dim + 2 * q * state + q * q + 2 * q) * 4
}

impl Cuda {
    /// Opens `device` for `model`, for batches of up to `max_tokens` tokens: compiles (or reads
    /// from the cache) the kernels, resolves every one the backend launches, checks that the model's
    /// shapes are ones the kernels handle and that the plan fits in the device's free memory, and
    /// allocates the workspace.
    pub fn open(device: Device, setup: &CudaSetup, model: &ModelShape, max_tokens: usize) -> Result<Self, DeviceError> {
        let Device::Cuda(ordinal) = device else {
            return Err(DeviceError::Unsupported {
                device,
                reason: "the CUDA backend runs on a CUDA device".into(),
            });
        };
        if !crate::device::cuda_driver_present() {
            return Err(DeviceError::NoDriver { device });
        }
        let driver = |e: DriverError| DeviceError::Driver {
            device,
            reason: e.to_string(),
        };
        let ctx = CudaContext::new(ordinal).map_err(driver)?;
        // SAFETY: everything runs on the one stream made below, so stream order alone keeps
        // reads after writes; no allocation has been made yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        check_supported(device, model)?;

        let (major, minor) = ctx.compute_capability().map_err(driver)?;
        // The `a` targets enable the architecture-specific instructions the sm_90 / sm_100 kernels
        // were checked with.
        let suffix = if major >= 9 { "a" } else { "" };
        let arch = format!("compute_{major}{minor}{suffix}");
        let compile = |reason: String| DeviceError::Compile { device, reason };
        setup.load_nvrtc().map_err(|e| compile(e.to_string()))?;
        let ptx = ptx_cache::kernels_ptx(&setup.cache_dir, &arch, &setup.toolkit.join("include"))
            .map_err(|e| compile(e.to_string()))?;
        let modules = ptx
            .into_iter()
            .map(|k| ctx.load_module(Ptx::from_src(k.ptx)))
            .collect::<Result<Vec<Arc<CudaModule>>, _>>()
            .map_err(driver)?;
        let kernels = Kernels::resolve(&modules).map_err(|missing| DeviceError::MissingKernels { device, missing })?;
        let widest_scan = model
            .blocks
            .iter()
            .filter_map(|b| match b {
                BlockShape::Mamba { ssd, .. } => Some(ssd_shared_bytes(ssd.head_dim, ssd.state_size)),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        if widest_scan > DEFAULT_DYNAMIC_SHARED {
            let attribute = cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            let bytes = i32::try_from(widest_scan).unwrap_or(i32::MAX);
            kernels.ssd_scan_f32.set_attribute(attribute, bytes).map_err(driver)?;
        }

        let plan = MemoryPlan::new(model, max_tokens);
        let (free, _) = ctx.mem_get_info().map_err(driver)?;
        let needed = plan.weight_bytes() + plan.workspace_bytes();
        if needed > free {
            return Err(DeviceError::OutOfMemory { device, needed, free });
        }
        // SAFETY: u8 has no invalid bit patterns, and every tensor carved from it is written by
        // an op before it is read.
        let workspace = unsafe { stream.alloc::<u8>(plan.workspace_bytes()) }.map_err(driver)?;
        let base = workspace.device_ptr(&stream).0;
        Ok(Self {
            device,
            arena: Arc::new(Mutex::new(StackArena::new(plan.workspace_bytes()))),
            stream,
            kernels,
            compute_capability: (major, minor),
            plan,
            _workspace: workspace,
            base,
        })
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Whether the device has Blackwell's 5th-generation tensor cores (`tcgen05`, FP4 MMAs with
    /// block scales): compute capability 10.x (sm_100a B200, sm_103a B300), for which the kernels
    /// were compiled as `compute_10Xa`.
    fn has_tcgen05(&self) -> bool {
        self.compute_capability.0 == 10
    }

    /// The memory plan the backend allocated.
    pub fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// Carves `bytes` from the workspace.
    fn scratch(&self, op: &'static str, bytes: usize) -> Result<ArenaBuf, KernelError> {
        ArenaBuf::take(&self.arena, self.base, bytes).map_err(|e| KernelError::Device {
            op,
            reason: e.to_string(),
        })
    }

    /// An f32 tensor of `len` elements from the workspace (contents unspecified).
    fn tensor(&self, op: &'static str, len: usize) -> Result<CudaTensor, KernelError> {
        Ok(CudaTensor {
            buf: self.scratch(op, len * 4)?,
            len,
        })
    }
}

/// Refuses, before anything is loaded, a model whose shapes the kernels do not handle.
fn check_supported(device: Device, model: &ModelShape) -> Result<(), DeviceError> {
    let refuse = |reason: String| Err(DeviceError::Unsupported { device, reason });
    for (i, block) in model.blocks.iter().enumerate() {
        match block {
            BlockShape::Attention(a) if !ATTENTION_HEAD_DIMS.contains(&a.head_dim) => {
                return refuse(format!(
                    "layer {i}: attention head_dim {} (the kernels exist for {ATTENTION_HEAD_DIMS:?})",
                    a.head_dim
                ));
            }
            BlockShape::Moe { experts, top_k, .. } if *experts > 512 || *top_k > 32 => {
                return refuse(format!(
                    "layer {i}: {experts} experts, top {top_k} (moe_route_f32 handles up to 512 experts, top 32)"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A driver error of `op` as the ops report it.
fn failed(op: &'static str) -> impl FnOnce(DriverError) -> KernelError {
    move |e| KernelError::Device {
        op,
        reason: e.to_string(),
    }
}
