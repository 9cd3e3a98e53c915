// The MoE experts' epilogues around the grouped GEMMs (gemm_bf16.cu, gemm_nvfp4.cu). CPU twin:
// the experts' part of MoeBlock::forward (models/src/blocks/moe.rs) and Mlp::forward.
//
// * relu2_f32: relu(x)^2 in place, the experts' (and the MLP block's) activation between the up
//   and the down projection, for GEMMs whose epilogue does not fuse it (the bf16 ones; the NVFP4
//   grouped GEMM fuses it). Memory-bound: 8 bytes per element.
// * moe_unpermute_f32: each token's routed output, the routing-weighted sum of its top_k expert
//   rows. The grouped GEMM wrote row t * top_k + slot for every (token, slot), so this reads them
//   in slot order and needs no atomics: out[t] = ((0 + w0 y0) + w1 y1) + ..., each product rounded
//   and then added, exactly the CPU's sequence (products into `slots`, then add_in_place per slot),
//   so the result is bitwise the CPU's and independent of timing. __fmul_rn / __fadd_rn keep the
//   GPU compiler from fusing them into FMAs, which would change the bits.

#include "marc_cuda.cuh"

#define EPILOGUE_THREADS 256

// x: `count` floats, in place. Launch: grid ceil(count / 256) (any grid: grid-stride), 256.
extern "C" __global__ void __launch_bounds__(EPILOGUE_THREADS) relu2_f32(float* __restrict__ x, int count) {
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size_t(count);
         i += size_t(gridDim.x) * blockDim.x) {
        x[i] = marc::relu2(x[i]);
    }
}

// slots [tokens * top_k, width] (row t * top_k + slot: token t's expert output for that slot),
// weights [tokens * top_k] (the routing weights) -> out [tokens, width].
// Launch: grid (ceil(width / 256), tokens), 256 threads: consecutive threads, consecutive columns.
extern "C" __global__ void __launch_bounds__(EPILOGUE_THREADS)
    moe_unpermute_f32(const float* __restrict__ slots, const float* __restrict__ weights, int tokens, int top_k,
                      int width, float* __restrict__ out) {
    const int t = blockIdx.y, column = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= tokens || column >= width) return;
    float acc = 0.0f;
    for (int slot = 0; slot < top_k; ++slot) {
        const size_t entry = size_t(t) * top_k + slot;
        acc = __fadd_rn(acc, __fmul_rn(slots[entry * width + column], weights[entry]));
    }
    out[size_t(t) * width + column] = acc;
}
