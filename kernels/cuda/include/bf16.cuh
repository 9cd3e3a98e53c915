// bf16 for the kernels that read it. On the GPU it is cuda_bf16.h (from the nvidia-cuda-runtime
// wheel's include/, on NVRTC's include path); it is a heavy header, so only files that need bf16
// include this one. On the CPU, simt_cpu.h defines __nv_bfloat16 with the same conversions.
#pragma once

#include "marc_cuda.cuh"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#endif
