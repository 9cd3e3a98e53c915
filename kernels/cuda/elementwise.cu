// Element-wise kernels of the forward pass that the GEMMs and scans do not fuse (yet). One thread
// per element, grid-stride loops (any grid covers any n); launch: grid ceil(n / 256), 256 threads.
// Memory-bound: each reads and writes every element once.
//
// * split_bf16x3_f32: x = hi + mid + lo exactly, three bf16 parts, for the exact GEMMs on bf16
//   tensor cores (each part times a bf16 weight is exact in f32). hi is x truncated to bf16, mid
//   the remainder truncated, lo what is left, which has at most 8 significant bits: the CPU AMX
//   path's split (kernels/src/ops/matmul/amx.rs). Truncation, not rounding, so that hi never
//   overflows to infinity near the f32 maximum. Exact down to |x| ~ 2^-110; below, bits under
//   bf16's smallest subnormal (2^-133) are dropped, as on the CPU.
// * bf16_part_f32: one of those three parts (0: hi, 1: mid, 2: lo) as f32, for the GEMMs that read
//   f32 activations and round them to bf16 when staging (FP8, NVFP4 W4A16): a part rounds to
//   itself, so three launches on the parts give the exact product, one part buffer at a time.
// * round_bf16_f32: x rounded to bf16, nearest even, NaN kept quiet (--precision bf16).
// * add_f32: acc += x (the residual adds; CPU twin ops::activation::add_in_place).
// * softplus_dt_f32: Mamba's step sizes, dt = max(softplus(dt + bias[head]), dt_min) with
//   softplus linear above 20, as the CPU backend's softplus_dt (PyTorch's threshold). expf and
//   log1pf are the GPU's, within a few ulp of the CPU's libm.

#include "marc_cuda.cuh"

#define ELEMENTWISE_THREADS 256

namespace marc {

// The bf16 whose bits are the top half of x's (x truncated toward zero).
__device__ __forceinline__ unsigned short bf16_truncated_bits(float x) {
    return (unsigned short)(__float_as_uint(x) >> 16);
}

__device__ __forceinline__ float bf16_bits_to_float(unsigned short bits) {
    return __uint_as_float((unsigned)bits << 16);
}

// x rounded to the nearest bf16, ties to even; a NaN stays a (quiet) NaN.
__device__ __forceinline__ unsigned short bf16_rounded_bits(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// The three bf16 parts of v: hi = v truncated, mid = the remainder truncated, lo = what is left.
struct Bf16x3 {
    unsigned short part[3];
};

__device__ __forceinline__ Bf16x3 bf16x3_split(float v) {
    const unsigned short h = bf16_truncated_bits(v);
    const float rest = __fsub_rn(v, bf16_bits_to_float(h));  // exact: v's low 16 bits
    const unsigned short m = bf16_truncated_bits(rest);
    const float last = __fsub_rn(rest, bf16_bits_to_float(m));  // exact, <= 8 bits
    return Bf16x3{{h, m, bf16_truncated_bits(last)}};
}

}  // namespace marc

extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
    split_bf16x3_f32(const float* __restrict__ x, int n, unsigned short* __restrict__ hi,
                     unsigned short* __restrict__ mid, unsigned short* __restrict__ lo) {
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size_t(n);
         i += size_t(gridDim.x) * blockDim.x) {
        const marc::Bf16x3 s = marc::bf16x3_split(x[i]);
        hi[i] = s.part[0];
        mid[i] = s.part[1];
        lo[i] = s.part[2];
    }
}

extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
    bf16_part_f32(const float* __restrict__ x, int n, int part, float* __restrict__ out) {
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size_t(n);
         i += size_t(gridDim.x) * blockDim.x) {
        const marc::Bf16x3 s = marc::bf16x3_split(x[i]);
        // Selected, not indexed: a runtime index into the parts would put them in local memory.
        out[i] = marc::bf16_bits_to_float(part == 0 ? s.part[0] : part == 1 ? s.part[1] : s.part[2]);
    }
}

extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
    round_bf16_f32(const float* __restrict__ x, int n, unsigned short* __restrict__ out) {
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size_t(n);
         i += size_t(gridDim.x) * blockDim.x) {
        out[i] = marc::bf16_rounded_bits(x[i]);
    }
}

extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
    add_f32(float* __restrict__ acc, const float* __restrict__ x, int n) {
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size_t(n);
         i += size_t(gridDim.x) * blockDim.x) {
        acc[i] = __fadd_rn(acc[i], x[i]);
    }
}

// dt: [tokens, heads] in place; bias: [heads]; n = tokens * heads.
extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
    softplus_dt_f32(float* __restrict__ dt, const float* __restrict__ bias, int heads, int n, float dt_min) {
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size_t(n);
         i += size_t(gridDim.x) * blockDim.x) {
        const float v = __fadd_rn(dt[i], bias[i % size_t(heads)]);
        const float softplus = v > 20.0f ? v : log1pf(expf(v));
        dt[i] = fmaxf(softplus, dt_min);
    }
}
