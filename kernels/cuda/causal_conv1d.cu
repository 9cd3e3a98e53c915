// Depthwise causal conv1d + SiLU over packed variable-length sequences (Mamba-2's conv on xBC).
// CPU twin: kernels/src/ops/causal_conv1d.
//
// out[t, c] = silu(bias[c] + sum_{j < K, t-(K-1)+j >= start} w[c, j] * x[t-(K-1)+j, c]), with zero
// history at every sequence start. Memory-bound: K = 4 taps per output read from x rows that the
// neighbouring tokens' threads read too, so each x element comes from DRAM once and from L1/L2 the
// other K-1 times; no shared-memory staging is needed for K this small.
//
// Grid: (ceil(C / 128), T). One thread per (token, channel); a warp covers 32 consecutive channels
// of one token, so every x load and out store is a coalesced 128-byte row segment. The taps are
// accumulated in the CPU op's order (bias first, then j ascending, one fma each), so the two agree
// to the rounding of silu's exp.

#include "varlen.cuh"

#define CONV_THREADS 128

extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    causal_conv1d_silu_f32(const float* __restrict__ x, const int* __restrict__ cu_seqlens, int num_seqs,
                           const float* __restrict__ weight, const float* __restrict__ bias, int kernel_size,
                           int channels, float* __restrict__ out) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (c >= channels) return;
    const int start = marc::sequence_start(cu_seqlens, num_seqs, t);
    const int history = min(t - start, kernel_size - 1);
    const int first_tap = (kernel_size - 1) - history;
    const float* w = weight + size_t(c) * kernel_size;
    float acc = bias != nullptr ? bias[c] : 0.0f;
    for (int j = first_tap; j < kernel_size; ++j) {
        const int src = t + j + 1 - kernel_size;
        acc = fmaf(w[j], x[size_t(src) * channels + c], acc);
    }
    out[size_t(t) * channels + c] = marc::silu(acc);
}
