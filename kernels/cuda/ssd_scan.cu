// The Mamba-2 selective state-space scan in its chunked (SSD) form, over packed variable-length
// sequences, with the state zero at every sequence start. CPU twin: kernels/src/ops/ssd_scan.
//
// Per head h (group g = h / (H / G)), channel p, state n:
//   s_t[n, p] = exp(dt_t A_h) s_{t-1}[n, p] + dt_t B_t[g, n] x_t[h, p]
//   y_t[h, p] = sum_n C_t[g, n] s_t[n, p] + D_h x_t[h, p]
// In chunks of Q tokens (from the sequence's own start), with cum[t] = sum_{r <= t} dt_r A_h:
//   Y = exp(cum) * (C S_in) + M X,  M[t, s] = (C B^T)[t, s] exp(cum[t] - cum[s]) dt_s for s <= t
//   S_out = exp(cum[Q-1]) S_in + B^T (w * X),  w_s = exp(cum[Q-1] - cum[s]) dt_s
// which is mamba_ssm's chunk_cumsum + bmm_chunk + chunk_scan + chunk_state + state_passing, fused
// into one kernel: one block walks one (sequence, head) chunk by chunk and keeps the carried state
// S [N, P] in shared memory, so it never goes to HBM between the five steps. The price is that the
// chunks of one sequence run in order; parallelism comes from sequences x heads (32-128 heads x a
// batch), which fills an H100's 132 SMs at serving batch sizes.
//
// Q is the kernel's own tile (SSD_CHUNK), not the model's chunk_size: the chunked form is exact
// algebra, the chunk length changes rounding only. Decays are exp of differences of the running
// cumsum, as mamba_ssm's Triton kernels compute them; inside a 32-token chunk the cumsum stays small
// enough that the difference costs no accuracy that matters at f32 (the CPU op uses running segment
// sums; the tests compare the two at 1e-5 relative L2).
//
// This is the correctness-first version: the three small matrix products (C B^T, C S, B^T X) run on
// CUDA cores from shared memory. Moving them to mma.sync (gemm_bf16.cu's fragment code) and sharing
// C B^T between the heads of a group are the next steps; docs/gpu.md has the arithmetic.
//
// Launch: grid (H, num_seqs), SSD_THREADS threads, dynamic shared memory
// (N*P + Q*P + 2*Q*N + Q*Q + 2*Q) * 4 bytes (44 KiB at P = N = 64; above 48 KiB the host must raise
// cudaFuncAttributeMaxDynamicSharedMemorySize).

#include "marc_cuda.cuh"

#define SSD_CHUNK 32
#define SSD_THREADS 256

extern "C" __global__ void __launch_bounds__(SSD_THREADS)
    ssd_scan_f32(const float* __restrict__ x, int x_stride, const float* __restrict__ b,
                 const float* __restrict__ c, int bc_stride, const float* __restrict__ dt,
                 const float* __restrict__ a, const float* __restrict__ d, const int* __restrict__ cu_seqlens,
                 int num_heads, int head_dim, int n_groups, int state_size, float* __restrict__ y) {
    const int h = blockIdx.x;
    const int start = cu_seqlens[blockIdx.y];
    const int len = cu_seqlens[blockIdx.y + 1] - start;
    const int P = head_dim, N = state_size, Q = SSD_CHUNK;
    const int g = h / (num_heads / n_groups);
    const float a_h = a[h], d_h = d[h];
    const int tid = threadIdx.x, threads = blockDim.x;

    MARC_DYNAMIC_SHARED_FLOATS(smem);
    float* state = smem;        // [N, P], carried between chunks
    float* xs = state + N * P;  // [Q, P]
    float* bs = xs + Q * P;     // [Q, N]
    float* cs = bs + Q * N;     // [Q, N]
    float* m = cs + Q * N;      // [Q, Q], lower triangle
    float* dts = m + Q * Q;     // [Q]
    float* cum = dts + Q;       // [Q]

    for (int c0 = 0; c0 < len; c0 += Q) {
        const int l = min(Q, len - c0);
        const int t0 = start + c0;
        const bool has_state = c0 > 0;
        const bool carries = c0 + l < len;

        // 1. Stage the chunk: x of head h, B and C of group g, dt of head h.
        for (int i = tid; i < l * P; i += threads) {
            xs[i] = x[size_t(t0 + i / P) * x_stride + h * P + i % P];
        }
        for (int i = tid; i < l * N; i += threads) {
            const size_t at = size_t(t0 + i / N) * bc_stride + g * N + i % N;
            bs[i] = b[at];
            cs[i] = c[at];
        }
        for (int i = tid; i < l; i += threads) dts[i] = dt[size_t(t0 + i) * num_heads + h];
        __syncthreads();

        // 2. The decay cumsum, in token order as the CPU op sums it (32 adds: one thread suffices).
        if (tid == 0) {
            float run = 0.0f;
            for (int t = 0; t < l; ++t) {
                run += dts[t] * a_h;
                cum[t] = run;
            }
        }
        __syncthreads();

        // 3. M = (C B^T) o decay o dt, lower triangle.
        for (int i = tid; i < l * l; i += threads) {
            const int t = i / l, s = i % l;
            if (s > t) continue;
            float cb = 0.0f;
            for (int n = 0; n < N; ++n) cb = fmaf(cs[t * N + n], bs[s * N + n], cb);
            m[t * Q + s] = cb * expf(cum[t] - cum[s]) * dts[s];
        }
        __syncthreads();

        // 4. Y = exp(cum) (C S_in) + M X, and y = D x + Y.
        for (int i = tid; i < l * P; i += threads) {
            const int t = i / P, p = i % P;
            float acc = 0.0f;
            if (has_state) {
                float cs_in = 0.0f;
                for (int n = 0; n < N; ++n) cs_in = fmaf(cs[t * N + n], state[n * P + p], cs_in);
                acc = cs_in * expf(cum[t]);
            }
            for (int s = 0; s <= t; ++s) acc = fmaf(m[t * Q + s], xs[s * P + p], acc);
            y[size_t(t0 + t) * (num_heads * P) + h * P + p] = fmaf(d_h, xs[t * P + p], acc);
        }
        // Step 5 overwrites the state step 4 has just read.
        __syncthreads();

        // 5. S_out = exp(cum[l-1]) S_in + B^T (w * X).
        if (carries) {
            const float last = cum[l - 1];
            for (int i = tid; i < N * P; i += threads) {
                const int n = i / P, p = i % P;
                float acc = has_state ? state[i] * expf(last) : 0.0f;
                for (int s = 0; s < l; ++s) {
                    const float w = expf(last - cum[s]) * dts[s];
                    acc = fmaf(bs[s * N + n] * w, xs[s * P + p], acc);
                }
                state[i] = acc;
            }
        }
        // The next chunk's staging overwrites what step 5 reads.
        __syncthreads();
    }
}
