// Runs a few emulated kernels once each, for ThreadSanitizer: built with -fsanitize=thread by
// tests/tsan.rs, which checks that a clean run reports nothing and that removing any one
// `__syncthreads()` (SIMT_SKIP_SYNC=<file>:<line>) is reported as a data race. Correctness is the
// parity tests' job; here only the memory accesses matter, so the inputs are simple and fixed.
//
// Usage: tsan_driver <case>, case one of: rms_norm, gated_group_rms_norm, ssd_scan, attention, gemm,
// gemm_nvfp4, gemm_nvfp4_tcgen05, grouped_gemm_nvfp4_tcgen05.

#include <cstdio>
#include <cstring>
#include <vector>

extern "C" int simt_launch(const char* name, const unsigned grid[3], const unsigned block[3],
                           size_t shared_bytes, void** args);

namespace {

std::vector<float> ramp(size_t n, float scale) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = scale * float(int(i * 37 % 101) - 50) / 50.0f;
    return v;
}

int run(const char* name, unsigned gx, unsigned gy, unsigned threads, size_t shared, std::vector<void*> args,
        unsigned gz = 1) {
    const unsigned grid[3] = {gx, gy, gz}, block[3] = {threads, 1, 1};
    return simt_launch(name, grid, block, shared, args.data());
}

int rms_norm() {
    const int rows = 2, width = 300;
    auto x = ramp(rows * width, 2.0f), w = ramp(width, 1.0f), out = std::vector<float>(rows * width);
    const float* xp = x.data();
    const float* wp = w.data();
    float* op = out.data();
    float eps = 1e-5f;
    int wd = width;
    return run("rms_norm_f32", rows, 1, 256, 0, {&xp, &wp, &eps, &wd, &op});
}

int gated_group_rms_norm() {
    const int rows = 2, width = 128, group = 64;
    auto y = ramp(rows * width, 2.0f), z = ramp(rows * width, 3.0f), w = ramp(width, 1.0f);
    float* yp = y.data();
    const float* zp = z.data();
    const float* wp = w.data();
    int wd = width, gs = group;
    float eps = 1e-5f;
    return run("gated_group_rms_norm_f32", rows, width / group, 256, 0, {&yp, &zp, &wp, &wd, &gs, &eps});
}

int ssd_scan() {
    // Two sequences, the second three chunks long, so a chunk both reads the carried state and
    // carries one on: only then does every barrier of the chunk loop guard something.
    const int heads = 2, p = 8, groups = 1, n = 4, chunk = 32;
    std::vector<int> cu = {0, 3, 70};
    const int tokens = cu.back(), row = heads * p + 2 * groups * n;
    auto xbc = ramp(size_t(tokens) * row, 1.0f), dt = ramp(size_t(tokens) * heads, 0.05f);
    for (auto& v : dt) v += 0.1f;
    std::vector<float> a = {-1.0f, -0.5f}, d = {0.5f, -0.25f}, y(size_t(tokens) * heads * p);
    const float* xp = xbc.data();
    const float* bp = xbc.data() + heads * p;
    const float* cp = bp + groups * n;
    const float* dtp = dt.data();
    const float* ap = a.data();
    const float* dp = d.data();
    const int* cup = cu.data();
    float* yp = y.data();
    int stride = row, nh = heads, hd = p, ng = groups, ns = n;
    const size_t shared = size_t(n * p + chunk * p + 2 * chunk * n + chunk * chunk + 2 * chunk) * 4;
    return run("ssd_scan_f32", heads, 2, 256, shared,
               {&xp, &stride, &bp, &cp, &stride, &dtp, &ap, &dp, &cup, &nh, &hd, &ng, &ns, &yp});
}

int attention() {
    // Two query tiles and three key tiles in the second sequence: the tile loop's barriers guard
    // both the first load and every reload.
    const int heads = 2, kv_heads = 1, d = 64;
    std::vector<int> cu = {0, 5, 75};
    const int tokens = cu.back();
    auto q = ramp(size_t(tokens) * heads * d, 1.0f), k = ramp(size_t(tokens) * kv_heads * d, 1.0f);
    auto v = ramp(size_t(tokens) * kv_heads * d, 0.5f);
    std::vector<float> out(q.size());
    const float* qp = q.data();
    const float* kp = k.data();
    const float* vp = v.data();
    const int* cup = cu.data();
    float* op = out.data();
    int nh = heads, nkv = kv_heads;
    float scale = 0.125f;
    return run("causal_attention_f32_d64", 3, heads, 128, 0, {&qp, &kp, &vp, &cup, &nh, &nkv, &scale, &op}, 2);
}

int gemm() {
    // Two K steps, so the barrier before reloading the tiles matters too.
    const int m = 20, n = 24, k = 64;
    std::vector<unsigned short> a(size_t(m) * k), w(size_t(n) * k);
    for (size_t i = 0; i < a.size(); ++i) a[i] = 0x3f80 + (i % 7);  // bf16 around 1.0
    for (size_t i = 0; i < w.size(); ++i) w[i] = 0x3f00 + (i % 5);  // bf16 around 0.5
    std::vector<float> c(size_t(m) * n);
    const unsigned short* ap = a.data();
    const unsigned short* wp = w.data();
    const float* bias = nullptr;
    float* cp = c.data();
    int mm = m, nn = n, kk = k;
    return run("gemm_bf16_f32", 1, 1, 128, 0, {&ap, &wp, &bias, &mm, &nn, &kk, &cp});
}

int gemm_nvfp4() {
    // The W4A16 GEMM: its own shared tiles (bf16 activations, packed NVFP4 weights) behind the
    // same barriers; two K steps, as for gemm.
    const int m = 20, n = 24, k = 64;
    auto x = ramp(size_t(m) * k, 1.0f);
    std::vector<unsigned> packed_words(size_t(n) * k / 8);  // 4-byte aligned, as the kernel reads it
    for (size_t i = 0; i < packed_words.size(); ++i) packed_words[i] = 0x9a3c51e7u * unsigned(i + 1);
    std::vector<unsigned char> scales(size_t(n) * k / 16, 0x38);  // E4M3 1.0
    std::vector<float> y(size_t(m) * n);
    const float* xp = x.data();
    const unsigned char* wp = reinterpret_cast<const unsigned char*>(packed_words.data());
    const unsigned char* sp = scales.data();
    float tensor_scale = 0.5f;
    const float* bias = nullptr;
    float* yp = y.data();
    int mm = m, nn = n, kk = k;
    return run("gemm_nvfp4_w4a16_f32", 1, 1, 128, 0, {&xp, &wp, &sp, &tensor_scale, &bias, &mm, &nn, &kk, &yp});
}

int gemm_nvfp4_tcgen05() {
    // The Blackwell W4A4 GEMM through the tcgen05 model: shared tiles written by every thread and
    // read by the one that issues the MMA, scales in tensor memory, the allocator's bookkeeping;
    // two K stages, so the stage barrier also guards the second stage's overwrite.
    const int m = 20, n = 24, k = 320;
    std::vector<unsigned> x_words(size_t(m) * k / 8), w_words(size_t(n) * k / 8);
    for (size_t i = 0; i < x_words.size(); ++i) x_words[i] = 0x7b1d35c9u * unsigned(i + 1);
    for (size_t i = 0; i < w_words.size(); ++i) w_words[i] = 0x9a3c51e7u * unsigned(i + 1);
    std::vector<unsigned char> x_scales(size_t(m) * k / 16, 0x38), w_scales(size_t(n) * k / 16, 0x30);
    std::vector<float> y(size_t(m) * n);
    const unsigned char* xp = reinterpret_cast<const unsigned char*>(x_words.data());
    const unsigned char* xs = x_scales.data();
    const unsigned char* wp = reinterpret_cast<const unsigned char*>(w_words.data());
    const unsigned char* ws = w_scales.data();
    float input_scale = 0.25f, tensor_scale = 0.5f;
    const float* bias = nullptr;
    float* yp = y.data();
    int mm = m, nn = n, kk = k;
    return run("gemm_nvfp4_w4a4_tcgen05_f32", 1, 1, 128, 24 * 1024,
               {&xp, &xs, &input_scale, &wp, &ws, &tensor_scale, &bias, &mm, &nn, &kk, &yp});
}

int grouped_gemm_nvfp4_tcgen05() {
    // The grouped W4A4 GEMM on tcgen05: each block gathers and quantises its expert's rows, every
    // thread its own 16-blocks, and every warp then writes all the rows' scales to tensor memory
    // (the barrier between them); two experts (two blocks, one 64-row tile each, mostly padding)
    // and two K stages, as for gemm_nvfp4_tcgen05.
    const int tokens = 3, top_k = 2, experts = 2, n = 24, k = 320;
    auto a = ramp(size_t(tokens) * k, 2.0f);
    std::vector<int> offsets = {0, 64, 128}, sorted(128, -1);
    for (int i = 0; i < tokens; ++i) {
        sorted[i] = 2 * i;           // slot 0 of token i: expert 0
        sorted[64 + i] = 2 * i + 1;  // slot 1: expert 1
    }
    std::vector<unsigned> w_words(size_t(experts) * n * k / 8);
    for (size_t i = 0; i < w_words.size(); ++i) w_words[i] = 0x9a3c51e7u * unsigned(i + 1);
    std::vector<unsigned char> w_scales(size_t(experts) * n * k / 16, 0x30);
    std::vector<float> tensor_scales = {0.5f, 0.25f}, input_scales = {0.25f, 0.125f};
    std::vector<float> out(size_t(tokens) * top_k * n);
    const float* ap = a.data();
    const int* sp = sorted.data();
    const int* op = offsets.data();
    const unsigned char* wp = reinterpret_cast<const unsigned char*>(w_words.data());
    const unsigned char* ws = w_scales.data();
    const float* ts = tensor_scales.data();
    const float* is = input_scales.data();
    float* outp = out.data();
    int ee = experts, tk = top_k, nn = n, kk = k, relu2 = 1;
    return run("grouped_gemm_nvfp4_w4a4_tcgen05_f32", 1, 2, 128, 24 * 1024,
               {&ap, &sp, &op, &ee, &tk, &wp, &ws, &ts, &is, &nn, &kk, &relu2, &outp});
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr,
                     "usage: %s rms_norm|gated_group_rms_norm|ssd_scan|attention|gemm|gemm_nvfp4|gemm_nvfp4_tcgen05|"
                     "grouped_gemm_nvfp4_tcgen05\n",
                     argv[0]);
        return 2;
    }
    const char* which = argv[1];
    if (std::strcmp(which, "rms_norm") == 0) return rms_norm();
    if (std::strcmp(which, "gated_group_rms_norm") == 0) return gated_group_rms_norm();
    if (std::strcmp(which, "ssd_scan") == 0) return ssd_scan();
    if (std::strcmp(which, "attention") == 0) return attention();
    if (std::strcmp(which, "gemm") == 0) return gemm();
    if (std::strcmp(which, "gemm_nvfp4") == 0) return gemm_nvfp4();
    if (std::strcmp(which, "gemm_nvfp4_tcgen05") == 0) return gemm_nvfp4_tcgen05();
    if (std::strcmp(which, "grouped_gemm_nvfp4_tcgen05") == 0) return grouped_gemm_nvfp4_tcgen05();
    std::fprintf(stderr, "unknown case %s\n", which);
    return 2;
}
