// SIMT emulation: lets marc's .cu kernels compile as plain C++20 and run on the CPU, so their logic
// can be tested against the CPU backend on machines without a GPU (none of ours has one).
//
// The model, and why it is faithful enough:
// - A launch runs the blocks of the grid one after another. One OS thread stands for each CUDA
//   thread of a block; the same threads run every block in turn, with a barrier between blocks.
//   Only one block is live at a time, so `__shared__` can be `static` storage.
// - `__syncthreads()` is a real barrier across the block's threads. Warp collectives
//   (`__shfl_*_sync`, `__ballot_sync`, `__any_sync`, `__all_sync`) go through a per-warp exchange
//   buffer between two warp barriers, so every lane sees every other lane's value as on hardware.
//   Only full-warp masks are supported: a partial mask aborts with a message rather than guess.
// - Because every thread is a real thread, a missing barrier is a real data race, which
//   ThreadSanitizer reports at the kernel's line (see kernels/verify/tests/tsan.rs). Barriers are
//   mutex + condition variable so TSan sees their happens-before edges exactly.
// - Atomics are `std::atomic_ref`. Floating-point math is the host's (`expf` is libm's, `rsqrtf` is
//   `1 / sqrtf`): results agree with the GPU to rounding, not bit for bit.
// - A thread that returns early leaves the block's barriers (as exited threads do on sm_70+), but a
//   warp collective with exited lanes aborts, because the emulation only knows full warps.
// - Test aid: `SIMT_SKIP_SYNC=<file>:<line>` turns the `__syncthreads()` written at that line of the
//   file whose path ends in <file> into a no-op, so a test can show that TSan catches that barrier
//   missing, without keeping a broken copy of the kernel.
//
// Not emulated: inline PTX (each use sits in a device function with a C++ fallback that follows
// the PTX ISA fragment layout), clusters, cooperative launches, async copies, texture memory.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
// Static storage is safe: only one block runs at a time (see above).
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

constexpr int warpSize = 32;

namespace simt {

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "simt_cpu: %s\n", what);
    std::abort();
}

// A reusable barrier whose party count shrinks when a thread leaves (returns from the kernel).
class Barrier {
   public:
    explicit Barrier(unsigned parties) : parties_(parties) {}

    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        const uint64_t phase = phase_;
        if (++arrived_ == parties_) {
            advance();
        } else {
            cv_.wait(lock, [&] { return phase_ != phase; });
        }
    }

    // The calling thread stops taking part until `reset`.
    void leave() {
        std::lock_guard<std::mutex> lock(mutex_);
        --parties_;
        if (arrived_ > 0 && arrived_ == parties_) advance();
    }

    // Only while no thread is waiting on this barrier.
    void reset(unsigned parties) {
        std::lock_guard<std::mutex> lock(mutex_);
        parties_ = parties;
        arrived_ = 0;
    }

    unsigned parties() {
        std::lock_guard<std::mutex> lock(mutex_);
        return parties_;
    }

   private:
    void advance() {
        arrived_ = 0;
        ++phase_;
        cv_.notify_all();
    }

    std::mutex mutex_;
    std::condition_variable cv_;
    unsigned parties_;
    unsigned arrived_ = 0;
    uint64_t phase_ = 0;
};

struct Warp {
    explicit Warp(unsigned lanes) : lanes(lanes), barrier(lanes) {}
    unsigned lanes;
    Barrier barrier;
    uint64_t slots[32] = {};
};

inline uint64_t next_serial() {
    static std::atomic<uint64_t> serial{0};
    return ++serial;
}

// Everything one launch shares between its threads.
struct Launch {
    dim3 grid, block;
    unsigned threads;
    Barrier block_barrier;
    Barrier block_end;
    std::vector<std::unique_ptr<Warp>> warps;
    std::vector<unsigned char> dynamic_shared;
    // Distinguishes launches (two may share an address): per-CTA state kept outside the launch,
    // such as tcgen05.cuh's tensor memory, resets when this or the block changes.
    uint64_t serial;
    // SIMT_SKIP_SYNC, split: the file name suffix and the line (-1: skip nothing).
    std::string skip_sync_file;
    int skip_sync_line = -1;

    Launch(dim3 g, dim3 b, size_t shared_bytes)
        : grid(g),
          block(b),
          threads(b.x * b.y * b.z),
          block_barrier(threads),
          block_end(threads),
          dynamic_shared(shared_bytes),
          serial(next_serial()) {
        for (unsigned first = 0; first < threads; first += 32) {
            warps.push_back(std::make_unique<Warp>(std::min(32u, threads - first)));
        }
        if (const char* skip = std::getenv("SIMT_SKIP_SYNC")) {
            const std::string spec(skip);
            const size_t colon = spec.rfind(':');
            if (colon == std::string::npos) fail("SIMT_SKIP_SYNC must be <file>:<line>");
            skip_sync_file = spec.substr(0, colon);
            skip_sync_line = std::atoi(spec.c_str() + colon + 1);
        }
    }
};

// The calling thread's place in the launch.
struct Lane {
    Launch* launch = nullptr;
    uint3 thread_idx{0, 0, 0};
    uint3 block_idx{0, 0, 0};
    unsigned linear = 0;
    Warp* warp = nullptr;
    unsigned lane = 0;
};

inline thread_local Lane this_lane;

inline void syncthreads(const char* file, int line) {
    Launch& l = *this_lane.launch;
    if (line == l.skip_sync_line) {
        const std::string_view f(file), suffix(l.skip_sync_file);
        if (f.size() >= suffix.size() && f.substr(f.size() - suffix.size()) == suffix) return;
    }
    l.block_barrier.arrive_and_wait();
}

inline Warp& full_warp(unsigned mask) {
    Warp& w = *this_lane.warp;
    const unsigned full = w.lanes == 32 ? 0xffffffffu : ((1u << w.lanes) - 1);
    if (mask != full) fail("warp collective with a partial mask: only full warps are emulated");
    if (w.barrier.parties() != w.lanes) fail("warp collective after some lanes returned");
    return w;
}

// Publishes this lane's 64-bit value, waits for the whole warp, reads lane `src`'s, and waits
// again so no lane overwrites its slot while another still reads it.
inline uint64_t exchange(unsigned mask, uint64_t value, unsigned src) {
    Warp& w = full_warp(mask);
    w.slots[this_lane.lane] = value;
    w.barrier.arrive_and_wait();
    const uint64_t got = w.slots[src < w.lanes ? src : this_lane.lane];
    w.barrier.arrive_and_wait();
    return got;
}

template <typename T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 64 bits");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}

template <typename T>
inline T from_bits(uint64_t bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}

// Runs `body` as the kernel of a grid x block launch (see the header comment). Launches from
// several host threads run one at a time, as on one stream: `__shared__` storage is per process.
inline void launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
    static std::mutex one_launch_at_a_time;
    std::lock_guard<std::mutex> serialised(one_launch_at_a_time);
    Launch l(grid, block, shared_bytes);
    const unsigned blocks = grid.x * grid.y * grid.z;
    auto thread_main = [&](unsigned linear) {
        Lane& me = this_lane;
        me.launch = &l;
        me.linear = linear;
        me.thread_idx = {linear % block.x, (linear / block.x) % block.y, linear / (block.x * block.y)};
        me.warp = l.warps[linear / 32].get();
        me.lane = linear % 32;
        for (unsigned b = 0; b < blocks; ++b) {
            me.block_idx = {b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y)};
            body();
            // Leave this block's barriers (a thread that returned early must not hold others up),
            // then wait for the whole block before the next one reuses the shared memory.
            l.block_barrier.leave();
            me.warp->barrier.leave();
            l.block_end.arrive_and_wait();
            if (linear == 0) {
                l.block_barrier.reset(l.threads);
                for (auto& w : l.warps) w->barrier.reset(w->lanes);
            }
            l.block_end.arrive_and_wait();
        }
        me = Lane{};
    };
    std::vector<std::thread> threads;
    threads.reserve(l.threads);
    for (unsigned t = 0; t < l.threads; ++t) threads.emplace_back(thread_main, t);
    for (auto& t : threads) t.join();
}

inline unsigned char* dynamic_shared() { return this_lane.launch->dynamic_shared.data(); }

}  // namespace simt

// CUDA's built-in variables, per emulated thread.
#define threadIdx (::simt::this_lane.thread_idx)
#define blockIdx (::simt::this_lane.block_idx)
#define blockDim (::simt::this_lane.launch->block)
#define gridDim (::simt::this_lane.launch->grid)

#define __syncthreads() ::simt::syncthreads(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::simt::full_warp(mask).barrier.arrive_and_wait(); }

namespace simt {
// Lane `src` if it lies in the calling lane's segment of `width` lanes, else the lane itself (what
// the hardware returns for an out-of-segment source).
template <typename T>
inline T shuffle(unsigned mask, T v, unsigned src, int width) {
    const unsigned lane = this_lane.lane;
    const unsigned base = lane & ~unsigned(width - 1);
    return from_bits<T>(exchange(mask, to_bits(v), src - base < unsigned(width) ? src : lane));
}
}  // namespace simt

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    const unsigned base = ::simt::this_lane.lane & ~unsigned(width - 1);
    return ::simt::shuffle(mask, v, base + unsigned(src % width), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    // Unlike the other shuffles, xor may read from earlier segments; only later ones give the
    // lane's own value.
    const unsigned lane = ::simt::this_lane.lane;
    const unsigned base = lane & ~unsigned(width - 1);
    const unsigned src = lane ^ unsigned(lane_mask);
    return ::simt::from_bits<T>(::simt::exchange(mask, ::simt::to_bits(v), src < base + unsigned(width) ? src : lane));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::simt::shuffle(mask, v, ::simt::this_lane.lane + delta, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    // Below the segment's first lane the source wraps to a huge unsigned, outside the segment.
    return ::simt::shuffle(mask, v, ::simt::this_lane.lane - delta, width);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
    ::simt::Warp& w = ::simt::full_warp(mask);
    w.slots[::simt::this_lane.lane] = predicate ? 1 : 0;
    w.barrier.arrive_and_wait();
    unsigned bits = 0;
    for (unsigned i = 0; i < w.lanes; ++i) bits |= unsigned(w.slots[i]) << i;
    w.barrier.arrive_and_wait();
    return bits;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
    return __ballot_sync(mask, predicate) == __ballot_sync(mask, 1);
}

template <typename T>
inline T atomicAdd(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}
template <typename T>
inline T atomicMax(T* address, T value) {
    std::atomic_ref<T> ref(*address);
    T old = ref.load();
    while (old < value && !ref.compare_exchange_weak(old, value)) {
    }
    return old;
}
template <typename T>
inline T atomicExch(T* address, T value) {
    return std::atomic_ref<T>(*address).exchange(value);
}

inline int __popc(unsigned v) { return __builtin_popcount(v); }

// Device math the kernels use, as the host computes it.
using std::max;
using std::min;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __int_as_float(int v) { return ::simt::from_bits<float>(uint32_t(v)); }
inline int __float_as_int(float v) { return int(uint32_t(::simt::to_bits(v))); }
inline unsigned __float_as_uint(float v) { return uint32_t(::simt::to_bits(v)); }
inline float __uint_as_float(unsigned v) { return ::simt::from_bits<float>(v); }
// Round-to-nearest products and sums that the GPU compiler may not fuse into an FMA. g++ in ISO
// mode (-std=c++20, as build.rs and tsan.rs compile) does not contract a * b + c at all.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }

// bf16 as cuda_bf16.h defines it: the high 16 bits of an IEEE f32; conversions round to nearest
// even (`__float2bfloat16`), NaN stays NaN.
struct __nv_bfloat16 {
    uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16(float f) {
    const uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};  // quiet NaN
    const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
    return {uint16_t(rounded >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float(uint32_t(h.bits) << 16); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
