//! Launching kernels: grid sizes, `int` arguments and the element-wise launches ops share.

use cudarc::driver::{CudaFunction, LaunchArgs, LaunchConfig, PushKernelArg};

use super::{Cuda, failed};
use crate::error::KernelError;

/// Threads of the element-wise kernels (`ELEMENTWISE_THREADS` of elementwise.cu).
pub(super) const ELEMENTWISE_THREADS: u32 = 256;
/// The square output tile of the GEMMs on gemm_tile.cuh (`BM` = `BN`).
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
/// gemm_nvfp4.cu's `grouped_gemm_nvfp4_w4a4_tcgen05_f32`: routed rows per block
/// (`TC_GROUPED_ROWS`, the routing's expert tile, half the MMA's M); its columns, threads and
/// dynamic shared memory are the dense tcgen05 kernel's.
pub(super) const TCGEN05_GROUPED_ROWS: usize = 64;

/// The launch of a tcgen05 GEMM (dense or grouped): `n` output columns in `TCGEN05_TILE_N` tiles,
/// `row_tiles` blocks down, the kernels' threads and dynamic shared memory.
pub(super) fn tcgen05_grid(op: &'static str, n: usize, row_tiles: usize) -> Result<LaunchConfig, KernelError> {
    Ok(grid(
        int(op, "column tiles", n.div_ceil(TCGEN05_TILE_N))?,
        int(op, "row tiles", row_tiles)?,
        1,
        TCGEN05_THREADS,
        TCGEN05_SHARED_BYTES,
    ))
}

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

#[cfg(test)]
mod tests {
    use super::super::SSD_CHUNK;
    use super::super::ops::NVFP4_QUANTIZE_THREADS;
    use super::*;
    use crate::cuda::sources::{HEADERS, KERNELS};

    /// The value of `#define NAME v` or `constexpr int NAME = v;` in the embedded source `file`.
    fn defined(file: &str, name: &str) -> usize {
        let source = KERNELS.iter().chain(HEADERS).find(|s| s.name == file).unwrap();
        source
            .text
            .lines()
            .find_map(|line| {
                let line = line.trim();
                let value = line
                    .strip_prefix(&format!("#define {name} "))
                    .or_else(|| line.strip_prefix(&format!("constexpr int {name} = ")))?;
                value.split([' ', ';']).next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("{file} defines no integer {name}"))
    }

    /// The host's launch sizes are the ones the kernels were written for: a mismatch would launch
    /// a grid that misses outputs or overruns shared memory, which nothing here can run to see.
    #[test]
    fn launch_constants_match_the_kernel_sources() {
        assert_eq!(
            defined("elementwise.cu", "ELEMENTWISE_THREADS"),
            ELEMENTWISE_THREADS as usize
        );
        assert_eq!(defined("include/gemm_tile.cuh", "BM"), GEMM_TILE);
        assert_eq!(defined("include/gemm_tile.cuh", "BN"), GEMM_TILE);
        assert_eq!(defined("gemm_nvfp4.cu", "TC_BM"), TCGEN05_TILE_M);
        assert_eq!(defined("gemm_nvfp4.cu", "TC_BN"), TCGEN05_TILE_N);
        assert_eq!(defined("gemm_nvfp4.cu", "TC_THREADS"), TCGEN05_THREADS as usize);
        assert_eq!(defined("gemm_nvfp4.cu", "TC_GROUPED_ROWS"), TCGEN05_GROUPED_ROWS);
        // One routing tile (every expert's segment padded to it) per grouped tcgen05 block.
        assert_eq!(crate::cuda::plan::EXPERT_TILE, TCGEN05_GROUPED_ROWS);
        let stage = defined("gemm_nvfp4.cu", "TC_BK");
        assert_eq!(
            (TCGEN05_TILE_M + TCGEN05_TILE_N) * stage / 2,
            TCGEN05_SHARED_BYTES as usize
        );
        assert_eq!(
            defined("gemm_nvfp4.cu", "QUANTIZE_THREADS"),
            NVFP4_QUANTIZE_THREADS as usize
        );
        assert_eq!(defined("ssd_scan.cu", "SSD_CHUNK"), SSD_CHUNK);
    }
}
