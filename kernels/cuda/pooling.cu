// Pooling a layer's hidden states per sequence, and the compression head's tail (activation and
// L2 normalisation). CPU twins: marc_models::pooling::{pool, l2_normalize_rows} and
// CompressionHead::apply (models/src/heads.rs); the head's linear layers are GEMMs (gemm_bf16.cu
// or cuBLAS), run between pool_f32 and head_activation_normalize_f32.
//
// pool_f32: grid (ceil(W / 128), num_seqs); a thread owns one channel of one sequence and adds the
// tokens in order, exactly as the CPU does, so mean pooling is bitwise the CPU's result (one f32
// add chain, then one division). Consecutive threads read consecutive channels of a token row:
// coalesced, and each state is read once.
//
// head_activation_normalize_f32: a block per row; the activation, then the row's norm by a block
// reduction (f32, a fixed tree), then the division. The CPU sums the norm in f64; the difference is
// rounding of one reduction over at most a few thousand values.

#include "varlen.cuh"

#define POOL_THREADS 128
#define HEAD_THREADS 256

// mode 0: mean, 1: last. Empty sequences produce a zero row (the host reports them as errors).
extern "C" __global__ void __launch_bounds__(POOL_THREADS)
    pool_f32(const float* __restrict__ states, const int* __restrict__ cu_seqlens, int width, int mode,
             float* __restrict__ out) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= width) return;
    const int start = cu_seqlens[blockIdx.y], end = cu_seqlens[blockIdx.y + 1];
    float value = 0.0f;
    if (end > start) {
        if (mode == 1) {
            value = states[size_t(end - 1) * width + c];
        } else {
            float sum = 0.0f;
            for (int t = start; t < end; ++t) sum += states[size_t(t) * width + c];
            value = sum / float(end - start);
        }
    }
    out[size_t(blockIdx.y) * width + c] = value;
}

// Activation codes, as marc_models::heads::Activation: 0 none, 1 relu, 2 tanh, 3 silu, 4 gelu (erf).
__device__ __forceinline__ float head_activation(int kind, float x) {
    switch (kind) {
        case 1:
            return fmaxf(x, 0.0f);
        case 2:
            return tanhf(x);
        case 3:
            return marc::silu(x);
        case 4:
            return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
        default:
            return x;
    }
}

// In place on x [rows, width]: the activation, then (if normalize) each row divided by its L2 norm;
// a zero row stays zero. Grid: rows.
extern "C" __global__ void __launch_bounds__(HEAD_THREADS)
    head_activation_normalize_f32(float* __restrict__ x, int width, int activation, int normalize) {
    __shared__ float scratch[32];
    float* row = x + size_t(blockIdx.x) * width;
    float squares = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        const float v = head_activation(activation, row[i]);
        row[i] = v;
        squares = fmaf(v, v, squares);
    }
    if (!normalize) return;  // uniform across the block: no barrier is skipped by some threads only
    const float norm = sqrtf(marc::block_sum(squares, scratch));
    if (norm > 0.0f) {
        for (int i = threadIdx.x; i < width; i += blockDim.x) row[i] = row[i] / norm;
    }
}
