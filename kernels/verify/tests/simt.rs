//! The SIMT emulation header against CUDA's definitions of its warp collectives (CUDA C++
//! Programming Guide, "Warp Shuffle Functions" and "Warp Vote Functions"), and block barriers,
//! shared memory and atomics across several blocks.

mod common;

use common::*;

#[test]
fn warp_collectives_follow_the_cuda_definitions() {
    let mut out = vec![-1i32; 32 * 10];
    let mut args = Args::new();
    args.output(&mut out);
    launch("simt_selftest_warp", [1, 1, 1], [32, 1, 1], 0, &mut args);
    let v = |lane: usize| 100 + lane as i32;
    // The source lane of a shuffle inside segments of `width` lanes; out of the segment: itself.
    let within = |lane: usize, src: isize, width: usize| {
        let base = lane / width * width;
        if src >= base as isize && src < (base + width) as isize {
            v(src as usize)
        } else {
            v(lane)
        }
    };
    let ballot = (0..32).filter(|l| l % 3 == 0).fold(0u32, |b, l| b | 1 << l) as i32;
    for lane in 0..32 {
        let base8 = lane / 8 * 8;
        let want = [
            v(5),
            v(base8 + 3),
            v(lane ^ 1),
            // xor may read an earlier segment, never a later one.
            if lane ^ 8 < base8 + 8 { v(lane ^ 8) } else { v(lane) },
            within(lane, lane as isize + 3, 32),
            within(lane, lane as isize + 3, 8),
            within(lane, lane as isize - 2, 32),
            within(lane, lane as isize - 2, 8),
            ballot,
            0b011,
        ];
        assert_eq!(&out[lane * 10..][..10], &want, "lane {lane}");
    }
}

#[test]
fn blocks_run_in_turn_with_barriers_shared_memory_and_atomics() {
    let (blocks, threads) = (5u32, 96u32);
    let mut out = vec![0i32; 3];
    let mut args = Args::new();
    args.output(&mut out);
    launch("simt_selftest_block", [blocks, 1, 1], [threads, 1, 1], 0, &mut args);
    let per_block = (0..threads as i32).sum::<i32>();
    assert_eq!(
        out,
        vec![per_block * blocks as i32, per_block * blocks as i32, blocks as i32]
    );
}
