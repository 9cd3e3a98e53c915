// RMS normalisation: the pre-norm of every block, `norm_f`, and Mamba-2's gated group norm.
// CPU twin: kernels/src/ops/norm.
//
// Both are memory-bound (a few FLOPs per byte), so the design goal is one read and one write of
// each element: a block owns a row (or one group of a row), keeps nothing but a running sum of
// squares per thread, reduces it across the block, and rereads the row from L1/L2 to scale it. A row
// of 1024-4096 floats is 4-16 KiB, well inside L1, so the second read does not reach HBM.

#include "marc_cuda.cuh"

// Threads per block for both kernels: 256 covers a 1024-wide row in four strided steps and keeps
// enough blocks in flight per SM for the small batches serving sees.
#define NORM_THREADS 256

// out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * weight. Grid: one block per row.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    rms_norm_f32(const float* __restrict__ x, const float* __restrict__ weight, float eps, int width,
                 float* __restrict__ out) {
    __shared__ float scratch[32];
    const float* row = x + size_t(blockIdx.x) * width;
    float squares = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) squares = fmaf(row[i], row[i], squares);
    const float scale = rsqrtf(marc::block_sum(squares, scratch) / float(width) + eps);
    float* dst = out + size_t(blockIdx.x) * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) dst[i] = weight[i] * (row[i] * scale);
}

// Mamba-2's gated norm, in place on y: y = y * silu(z), then RMS-normalised over each group of
// `group_size` channels, times weight. Grid: (rows, width / group_size); a block owns one group, so
// small groups still spread over many SMs. The gated value is written back in the first pass and
// reread (from L1) in the second, instead of recomputing silu(z).
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    gated_group_rms_norm_f32(float* __restrict__ y, const float* __restrict__ z,
                             const float* __restrict__ weight, int width, int group_size, float eps) {
    __shared__ float scratch[32];
    const size_t offset = size_t(blockIdx.x) * width + size_t(blockIdx.y) * group_size;
    float* group = y + offset;
    const float* gate = z + offset;
    const float* w = weight + size_t(blockIdx.y) * group_size;
    float squares = 0.0f;
    for (int i = threadIdx.x; i < group_size; i += blockDim.x) {
        const float v = group[i] * marc::silu(gate[i]);
        group[i] = v;
        squares = fmaf(v, v, squares);
    }
    // Each thread rereads only the elements it wrote itself, so no barrier is needed beyond the
    // ones inside block_sum.
    const float scale = rsqrtf(marc::block_sum(squares, scratch) / float(group_size) + eps);
    for (int i = threadIdx.x; i < group_size; i += blockDim.x) group[i] = w[i] * (group[i] * scale);
}
