//! Launching kernels: grid sizes, `int` arguments and the element-wise launches ops share.

use cudarc::driver::{CudaFunction, LaunchArgs, LaunchConfig, PushKernelArg};

use super::{Cuda, failed};
use crate::error::KernelError;

/// Threads of the element-wise kernels (the ones docs/gpu.md lists as not written yet).
pub(super) const ELEMENTWISE_THREADS: u32 = 256;
/// `GEMM_BM` / `GEMM_BN` of gemm_bf16.cu.
pub(super) const GEMM_TILE: usize = 64;

/// gemm_nvfp4.cu's `gemm_nvfp4_w4a4_tcgen05_f32`: its output tile (`TC_BM` x `TC_BN`), threads
/// (`TC_THREADS`) and dynamic shared memory (`TC_SHARED_BYTES`: the 256-deep K stage of both
/// packed operands, under the 48 KiB that needs no opt-in).
pub(super) const TCGEN05_TILE_M: usize = 128;
/// See [`TCGEN05_TILE_M`].
pub(super) const TCGEN05_TILE_N: usize = 64;
/// See [`TCGEN05_TILE_M`].
pub(super) const TCGEN05_THREADS: u32 = 128;
/// See [`TCGEN05_TILE_M`].
pub(super) const TCGEN05_SHARED_BYTES: u32 = (128 + 64) * 256 / 2;

/// A launch size or an `int` kernel argument out of range.
pub(super) fn int<T: TryFrom<usize>>(op: &'static str, what: &str, value: usize) -> Result<T, KernelError> {
    T::try_from(value).map_err(|_| KernelError::InvalidShape {
        op,
        reason: format!("{what} = {value} is beyond what a kernel argument holds"),
    })
}

/// A launch of `threads`-thread blocks over the grid `(x, y, z)` with `shared` bytes of dynamic shared memory.
pub(super) fn grid(x: u32, y: u32, z: u32, threads: u32, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x, y, z),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: shared,
    }
}

/// A null device pointer, for optional arguments.
pub(super) const NULL: u64 = 0;

impl Cuda {
    /// Launches `f` with the arguments `push` adds.
    pub(super) fn launch<'a>(
        &'a self,
        op: &'static str,
        f: &'a CudaFunction,
        cfg: LaunchConfig,
        push: impl FnOnce(&mut LaunchArgs<'a>),
    ) -> Result<(), KernelError> {
        if cfg.grid_dim.0 == 0 || cfg.grid_dim.1 == 0 || cfg.grid_dim.2 == 0 {
            return Ok(());
        }
        let mut args = self.stream.launch_builder(f);
        push(&mut args);
        // SAFETY: every pointer argument is a live weight or workspace range whose size the op
        // checked against the kernel's contract (its header comment); integer arguments match the
        // kernel's parameter types; the stream orders this launch after the writes it reads.
        unsafe { args.launch(cfg) }.map(drop).map_err(failed(op))
    }

    /// One launch per `ELEMENTWISE_THREADS` elements of `n`.
    pub(super) fn elementwise(&self, n: usize) -> Result<LaunchConfig, KernelError> {
        let blocks = n.div_ceil(ELEMENTWISE_THREADS as usize);
        Ok(grid(
            int("elementwise", "blocks", blocks)?,
            1,
            1,
            ELEMENTWISE_THREADS,
            0,
        ))
    }

    /// `acc += x` over `n` floats at device addresses.
    pub(super) fn add_raw(&self, acc: u64, x: u64, n: usize) -> Result<(), KernelError> {
        let n32: i32 = int("add_f32", "n", n)?;
        self.launch("add_f32", &self.kernels.add_f32, self.elementwise(n)?, |a| {
            a.arg(&acc).arg(&x).arg(&n32);
        })
    }
}
