// Embedding gather: out[t] = table[ids[t]], widened to f32. CPU twin: EmbeddingTable::row_into
// (models/src/weights.rs).
//
// Pure data movement (width * 2 bytes read, width * 4 written per token), so the only goal is
// coalescing: a block per token, consecutive threads on consecutive channels. bf16 -> f32 is exact
// (the bf16 bits are the top half of the f32). Token ids are validated against the vocabulary on
// the host before the launch, as the CPU path does; the kernel only refuses to read out of bounds
// (an out-of-range id leaves its row untouched).
//
// Launch: grid T, EMBED_THREADS threads.

#include "bf16.cuh"

#define EMBED_THREADS 256

extern "C" __global__ void __launch_bounds__(EMBED_THREADS)
    embedding_gather_bf16(const __nv_bfloat16* __restrict__ table, const int* __restrict__ ids, int vocab,
                          int width, float* __restrict__ out) {
    const int id = ids[blockIdx.x];
    if (id < 0 || id >= vocab) return;
    const __nv_bfloat16* row = table + size_t(id) * width;
    float* dst = out + size_t(blockIdx.x) * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) dst[i] = __bfloat162float(row[i]);
}

extern "C" __global__ void __launch_bounds__(EMBED_THREADS)
    embedding_gather_f32(const float* __restrict__ table, const int* __restrict__ ids, int vocab, int width,
                         float* __restrict__ out) {
    const int id = ids[blockIdx.x];
    if (id < 0 || id >= vocab) return;
    const float* row = table + size_t(id) * width;
    float* dst = out + size_t(blockIdx.x) * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) dst[i] = row[i];
}
