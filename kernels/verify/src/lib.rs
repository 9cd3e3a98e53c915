//! Checks marc's CUDA kernels (`kernels/cuda/*.cu`) on machines without a GPU.
//!
//! * [`emulated`] runs the very same sources on the CPU: `build.rs` compiles them as C++ through the
//!   SIMT emulation header `kernels/cuda/include/simt_cpu.h`, and [`emulated::launch`] drives them with
//!   `cuLaunchKernel`'s argument convention. The tests in `tests/` compare each kernel with its
//!   `marc_kernels` CPU op.
//! * `tests/compile.rs` compiles the sources with NVIDIA's runtime compiler (from the PyPI wheels
//!   that `scripts/cuda_tools.sh` installs, see [`sources::cuda_tools`]) through the same
//!   `marc_kernels::cuda::nvrtc` the server uses, and [`ptxas`] reads the resource usage the
//!   compiler reports, so the test can fail on spills and register budgets.

pub mod emulated;
pub mod ptxas;
pub mod sources;
