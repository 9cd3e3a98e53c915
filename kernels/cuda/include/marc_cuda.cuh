// What every marc kernel file includes: the CPU emulation when compiled as C++, and the small
// device helpers the kernels share (warp and block reductions, activations).
//
// The same text is compiled three ways: by NVRTC for the GPU (at server start-up, and by the compile
// check for sm_90a / sm_100a), and by g++ through simt_cpu.h for the emulated tests. So kernels
// include no host headers on the device path (NVRTC has none) and use only what simt_cpu.h maps.
#pragma once

#if !defined(__CUDACC__)
#include "simt_cpu.h"
#endif

// A kernel's dynamic shared memory as floats (size given at launch). CUDA spells it `extern
// __shared__`, which has no C++ equivalent, hence the macro.
#if defined(__CUDACC__)
#define MARC_DYNAMIC_SHARED_FLOATS(name) extern __shared__ __align__(16) float name[]
#else
#define MARC_DYNAMIC_SHARED_FLOATS(name) float* name = reinterpret_cast<float*>(::simt::dynamic_shared())
#endif

// Fully unroll the next loop (fixed trip count): keeps per-thread arrays indexed by the loop in
// registers instead of local memory. A no-op in the CPU build.
// MARC_UNROLL_4: unroll by 4, for a long loop whose full unrolling makes ptxas spill.
#if defined(__CUDACC__)
#define MARC_UNROLL _Pragma("unroll")
#define MARC_UNROLL_4 _Pragma("unroll 4")
#else
#define MARC_UNROLL
#define MARC_UNROLL_4
#endif

namespace marc {

constexpr unsigned FULL_MASK = 0xffffffffu;

// -infinity without <cmath>'s INFINITY, which NVRTC does not provide.
__device__ __forceinline__ float neg_inf() { return __int_as_float(int(0xff800000u)); }

// Sum over the 32 lanes, every lane gets the result. The butterfly fixes the association order, so
// the result does not depend on timing.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` is 32 floats of shared memory the caller owns. Two barriers: one before the warp totals
// are read, one so that a following call can reuse `scratch` safely.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < warps ? scratch[lane] : 0.0f;
    total = warp_sum(total);
    __syncthreads();
    return total;
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// relu(x)^2, the MLP and MoE experts' activation: max then square, as relu2_in_place (fmaxf
// turns NaN into 0, as f32::max does).
__device__ __forceinline__ float relu2(float x) {
    const float r = fmaxf(x, 0.0f);
    return r * r;
}

}  // namespace marc
