// LatentMoE routing and the token permutation for the grouped expert GEMM.
// CPU twin: marc_models::route (models/src/blocks/moe.rs), which follows transformers'
// NemotronHTopkRouter.
//
// Routing (moe_route_f32), one warp per token: expert e lives in lane e % 32, slot e / 32, so a
// 512-expert router row is 16 registers per lane and every selection is a warp argmax (butterfly of
// xor shuffles over (value, index) pairs; ties to the lower index, as the CPU's stable sort). Steps:
//   s = sigmoid(logit); choice = s + correction_bias
//   group score = sum of the two best choices in the group; keep the best topk_group groups
//   pick top_k experts among them by choice; weight = s (uncorrected), / (sum + 1e-20) if
//   norm_topk_prob, * routed_scaling_factor.
// It is latency-bound (a few KB per token); one warp per token keeps the whole decision in
// registers with no shared memory and no block barrier.
//
// Permutation (moe_count_by_expert, moe_align_offsets, moe_scatter_by_expert), vLLM's
// moe_align_block_size made deterministic: each expert's (token, slot) pairs, in token order, in a
// segment padded to a multiple of the GEMM's M tile, so the grouped GEMM can give every tile one
// expert. Order within a segment is token order (ballot + popc ranks, no atomics), which keeps
// results independent of timing, as the CPU path is.

#include "marc_cuda.cuh"

// Experts per lane: 16 covers 512 experts (Nemotron 3 Super).
#define ROUTE_MAX_PER_LANE 16
#define ROUTE_THREADS 128
#define PERMUTE_THREADS 32

namespace {

// The better of two candidates: higher value, then lower index. Non-candidates carry index
// 0x7fffffff and lose to everything, including a -inf candidate.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }

struct Pick {
    float value;
    int index;
    float score;  // the uncorrected sigmoid score that travels with the pick
};

__device__ __forceinline__ Pick warp_argmax(Pick p) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float v = __shfl_xor_sync(marc::FULL_MASK, p.value, offset);
        const int i = __shfl_xor_sync(marc::FULL_MASK, p.index, offset);
        const float s = __shfl_xor_sync(marc::FULL_MASK, p.score, offset);
        if (better(v, i, p.value, p.index)) p = {v, i, s};
    }
    return p;
}

constexpr int NONE = 0x7fffffff;

}  // namespace

// logits [T, E] (router GEMM output, before the sigmoid), bias [E] -> experts [T, top_k] (int),
// weights [T, top_k]. Grid: ceil(T / 4) blocks of 128 threads, one warp per token.
extern "C" __global__ void __launch_bounds__(ROUTE_THREADS)
    moe_route_f32(const float* __restrict__ logits, const float* __restrict__ bias, int tokens, int num_experts,
                  int n_group, int topk_group, int top_k, int norm_topk_prob, float routed_scaling_factor,
                  int* __restrict__ experts, float* __restrict__ weights) {
    const int t = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (t >= tokens) return;  // whole warps leave together: tokens are per warp
    const float* row = logits + size_t(t) * num_experts;
    const int per_group = num_experts / n_group;

    float score[ROUTE_MAX_PER_LANE], choice[ROUTE_MAX_PER_LANE];
    MARC_UNROLL
    for (int i = 0; i < ROUTE_MAX_PER_LANE; ++i) {
        const int e = lane + 32 * i;
        score[i] = e < num_experts ? marc::sigmoid(row[e]) : 0.0f;
        choice[i] = e < num_experts ? score[i] + bias[e] : 0.0f;
    }

    // Group scores: lane g ends up holding group g's (n_group <= 32).
    float my_group_score = marc::neg_inf();
    for (int g = 0; g < n_group; ++g) {
        int first = NONE;
        float sum = 0.0f;
        for (int round = 0; round < 2 && round < per_group; ++round) {
            Pick p = {marc::neg_inf(), NONE, 0.0f};
            MARC_UNROLL
            for (int i = 0; i < ROUTE_MAX_PER_LANE; ++i) {
                const int e = lane + 32 * i;
                const bool candidate = e < num_experts && e / per_group == g && e != first;
                if (candidate && better(choice[i], e, p.value, p.index)) p = {choice[i], e, score[i]};
            }
            p = warp_argmax(p);
            first = p.index;
            sum += p.value;
        }
        if (lane == g) my_group_score = sum;
    }
    unsigned allowed_groups = 0;
    for (int round = 0; round < topk_group; ++round) {
        const bool candidate = lane < n_group && !(allowed_groups >> lane & 1u);
        Pick p = candidate ? Pick{my_group_score, lane, 0.0f} : Pick{marc::neg_inf(), NONE, 0.0f};
        p = warp_argmax(p);
        allowed_groups |= 1u << p.index;
    }

    // Top-k experts: experts outside the kept groups compete at -inf, as the CPU's masked scores do.
    unsigned taken = 0;  // bit i: this lane's slot i was picked
    float total = 0.0f;
    int* out_experts = experts + size_t(t) * top_k;
    float* out_weights = weights + size_t(t) * top_k;
    for (int k = 0; k < top_k; ++k) {
        Pick p = {marc::neg_inf(), NONE, 0.0f};
        MARC_UNROLL
        for (int i = 0; i < ROUTE_MAX_PER_LANE; ++i) {
            const int e = lane + 32 * i;
            if (e >= num_experts || (taken >> i & 1u)) continue;
            const float v = (allowed_groups >> (e / per_group) & 1u) ? choice[i] : marc::neg_inf();
            if (better(v, e, p.value, p.index)) p = {v, e, score[i]};
        }
        p = warp_argmax(p);
        if (p.index % 32 == lane) taken |= 1u << (p.index / 32);
        total += p.score;
        if (lane == 0) {
            out_experts[k] = p.index;
            out_weights[k] = p.score;
        }
    }
    if (lane == 0) {
        const float denominator = total + 1e-20f;
        for (int k = 0; k < top_k; ++k) {
            float w = out_weights[k];
            if (norm_topk_prob) w /= denominator;
            out_weights[k] = w * routed_scaling_factor;
        }
    }
}

// How many of the `pairs` = tokens * top_k routing entries picked each expert. Grid: one warp per
// expert (num_experts blocks of 32).
extern "C" __global__ void __launch_bounds__(PERMUTE_THREADS)
    moe_count_by_expert(const int* __restrict__ experts, int pairs, int* __restrict__ counts) {
    const int e = blockIdx.x, lane = threadIdx.x;
    int count = 0;
    for (int base = 0; base < pairs; base += 32) {
        const int i = base + lane;
        count += __popc(__ballot_sync(marc::FULL_MASK, i < pairs && experts[i] == e));
    }
    if (lane == 0) counts[e] = count;
}

// offsets[e] = sum over earlier experts of counts rounded up to `tile`; offsets[E] = padded total.
// One thread: E <= 512 additions, once per batch.
extern "C" __global__ void moe_align_offsets(const int* __restrict__ counts, int num_experts, int tile,
                                             int* __restrict__ offsets) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    int run = 0;
    for (int e = 0; e < num_experts; ++e) {
        offsets[e] = run;
        run += (counts[e] + tile - 1) / tile * tile;
    }
    offsets[num_experts] = run;
}

// sorted[offsets[e] + r] = the r-th routing entry (t * top_k + slot, in token order) that picked
// expert e; the padding up to the next segment is -1. Grid: one warp per expert.
extern "C" __global__ void __launch_bounds__(PERMUTE_THREADS)
    moe_scatter_by_expert(const int* __restrict__ experts, int pairs, const int* __restrict__ offsets,
                          int* __restrict__ sorted) {
    const int e = blockIdx.x, lane = threadIdx.x;
    const unsigned lanes_below = (1u << lane) - 1u;
    int* segment = sorted + offsets[e];
    int rank = 0;
    for (int base = 0; base < pairs; base += 32) {
        const int i = base + lane;
        const bool mine = i < pairs && experts[i] == e;
        const unsigned ballot = __ballot_sync(marc::FULL_MASK, mine);
        if (mine) segment[rank + __popc(ballot & lanes_below)] = i;
        rank += __popc(ballot);
    }
    const int end = offsets[e + 1] - offsets[e];
    for (int r = rank + lane; r < end; r += 32) segment[r] = -1;
}
