// Causal grouped-query attention for prefill over packed variable-length sequences, without
// positional embedding (NemotronH's attention blocks). CPU twin: kernels/src/ops/attention.
//
// Flash-attention style: a block owns ATTN_BQ query rows of one (sequence, query head) and streams
// the keys and values of its kv head through shared memory in tiles of ATTN_BK, keeping an online
// softmax (running max m, running sum l, unnormalised output o) in registers. Nothing of size L x L
// is ever stored, HBM traffic is Q + O once and K/V once per query tile, and tiles past the
// diagonal are never loaded (causality halves the work).
//
// Four threads share a query row, each holding a quarter of its channels (channel i belongs to
// thread i % 4, so the four read consecutive shared-memory words); a score is four partial dot
// products summed by two xor shuffles, so all four threads hold the same score and update the
// softmax state in lockstep without further communication.
//
// Query head h reads kv head h / (Hq / Hkv) (PyTorch's repeat_kv order); scores are scaled by
// `scale` (head_dim^-0.5, passed by the host so both backends use the same f32).
//
// This is the CUDA-core version (correct and spill-free); the tensor-core version tiles Q K^T and
// P V onto mma.sync m16n8k16 (gemm_bf16.cu) with the same online softmax.
//
// Launch: grid (ceil(max_len / ATTN_BQ), Hq, num_seqs), ATTN_THREADS threads, static shared memory
// 2 * ATTN_BK * D * 4 bytes. Instantiated for D = 8, 16, 24, 32, 64 and 128 (D a multiple of 4).

#include "marc_cuda.cuh"

#define ATTN_BQ 32
#define ATTN_BK 32
#define ATTN_LANES_PER_ROW 4
#define ATTN_THREADS (ATTN_BQ * ATTN_LANES_PER_ROW)

template <int D>
__device__ __forceinline__ void causal_attention(const float* __restrict__ q, const float* __restrict__ k,
                                                 const float* __restrict__ v, const int* __restrict__ cu_seqlens,
                                                 int num_heads, int num_kv_heads, float scale,
                                                 float* __restrict__ out) {
    constexpr int SLICE = D / ATTN_LANES_PER_ROW;
    __shared__ float k_tile[ATTN_BK][D];
    __shared__ float v_tile[ATTN_BK][D];

    const int start = cu_seqlens[blockIdx.z];
    const int len = cu_seqlens[blockIdx.z + 1] - start;
    const int first_query = blockIdx.x * ATTN_BQ;
    // Whole block leaves together, before any barrier.
    if (first_query >= len) return;

    const int h = blockIdx.y, kv = h / (num_heads / num_kv_heads);
    const int row = threadIdx.x / ATTN_LANES_PER_ROW, part = threadIdx.x % ATTN_LANES_PER_ROW;
    const int query = first_query + row;  // past the end: computed, never written
    const size_t q_stride = size_t(num_heads) * D, kv_stride = size_t(num_kv_heads) * D;

    float q_reg[SLICE], o[SLICE];
    const float* q_row = q + size_t(start + min(query, len - 1)) * q_stride + h * D;
    MARC_UNROLL
    for (int i = 0; i < SLICE; ++i) {
        q_reg[i] = q_row[part + ATTN_LANES_PER_ROW * i] * scale;
        o[i] = 0.0f;
    }
    float m = marc::neg_inf(), l = 0.0f;

    const int last_key = min(first_query + ATTN_BQ, len) - 1;
    for (int key0 = 0; key0 <= last_key; key0 += ATTN_BK) {
        // The previous tile's readers are done before it is overwritten.
        __syncthreads();
        for (int i = threadIdx.x; i < ATTN_BK * D; i += blockDim.x) {
            const int j = i / D, c = i % D, key = key0 + j;
            const size_t at = size_t(start + key) * kv_stride + kv * D + c;
            k_tile[j][c] = key < len ? k[at] : 0.0f;
            v_tile[j][c] = key < len ? v[at] : 0.0f;
        }
        __syncthreads();

        float s[ATTN_BK];
        float tile_max = marc::neg_inf();
        MARC_UNROLL
        for (int j = 0; j < ATTN_BK; ++j) {
            float partial = 0.0f;
            MARC_UNROLL
            for (int i = 0; i < SLICE; ++i) partial = fmaf(q_reg[i], k_tile[j][part + ATTN_LANES_PER_ROW * i], partial);
            partial += __shfl_xor_sync(marc::FULL_MASK, partial, 1);
            partial += __shfl_xor_sync(marc::FULL_MASK, partial, 2);
            const int key = key0 + j;
            s[j] = key <= query && key < len ? partial : marc::neg_inf();
            tile_max = fmaxf(tile_max, s[j]);
        }
        // Key 0 is in the first tile and visible to every row, so m is finite from then on.
        const float m_new = fmaxf(m, tile_max);
        const float correction = expf(m - m_new);
        l *= correction;
        MARC_UNROLL
        for (int i = 0; i < SLICE; ++i) o[i] *= correction;
        MARC_UNROLL
        for (int j = 0; j < ATTN_BK; ++j) {
            const float p = expf(s[j] - m_new);
            l += p;
            MARC_UNROLL
            for (int i = 0; i < SLICE; ++i) o[i] = fmaf(p, v_tile[j][part + ATTN_LANES_PER_ROW * i], o[i]);
        }
        m = m_new;
    }

    if (query < len) {
        float* dst = out + size_t(start + query) * q_stride + h * D;
        const float inv = 1.0f / l;
        MARC_UNROLL
        for (int i = 0; i < SLICE; ++i) dst[part + ATTN_LANES_PER_ROW * i] = o[i] * inv;
    }
}

// One entry point per head width: D sizes the registers and shared tiles at compile time. 64 and 128
// are the released models' widths; 8 to 32 are the small test models' (the fixtures), so that the
// whole model runs on CUDA against the same fixtures as the CPU.
#define MARC_CAUSAL_ATTENTION(D)                                                                                  \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS)                                                    \
        causal_attention_f32_d##D(const float* __restrict__ q, const float* __restrict__ k,                       \
                                  const float* __restrict__ v, const int* __restrict__ cu_seqlens, int num_heads, \
                                  int num_kv_heads, float scale, float* __restrict__ out) {                       \
        causal_attention<D>(q, k, v, cu_seqlens, num_heads, num_kv_heads, scale, out);                            \
    }

MARC_CAUSAL_ATTENTION(8)
MARC_CAUSAL_ATTENTION(16)
MARC_CAUSAL_ATTENTION(24)
MARC_CAUSAL_ATTENTION(32)
MARC_CAUSAL_ATTENTION(64)
MARC_CAUSAL_ATTENTION(128)
