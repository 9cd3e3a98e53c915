//! kernels/cuda/norm.cu on the CPU through the SIMT emulation, against `marc_kernels::ops::norm`.

mod common;

use common::*;
use marc_kernels::ops::norm::{gated_group_rms_norm, rms_norm};

const THREADS: u32 = 256;

#[test]
fn rms_norm_matches_the_cpu_op() {
    // Widths below, at and above the block size, and not a multiple of a warp.
    for (rows, width) in [(1, 1), (3, 37), (2, 256), (4, 1024), (2, 1000)] {
        let mut rng = rng(width as u64);
        let x = uniform(&mut rng, rows * width, -3.0, 3.0);
        let w = uniform(&mut rng, width, 0.5, 1.5);
        let mut want = vec![0.0; x.len()];
        rms_norm(&x, &w, 1e-5, &mut want).unwrap();
        let mut got = vec![f32::NAN; x.len()];
        let mut args = Args::new();
        args.input(&x).input(&w).float(1e-5).int(width as i32).output(&mut got);
        launch("rms_norm_f32", [dim(rows), 1, 1], [THREADS, 1, 1], 0, &mut args);
        assert_close(&format!("rms_norm {rows}x{width}"), &got, &want, F32_REL_L2);
    }
}

#[test]
fn gated_group_rms_norm_matches_the_cpu_op() {
    // One group, several groups, groups smaller than a warp, groups larger than the block.
    for (rows, width, group) in [(1, 8, 8), (3, 64, 16), (2, 96, 3), (2, 1024, 512)] {
        let mut rng = rng((width * 31 + group) as u64);
        let y = uniform(&mut rng, rows * width, -2.0, 2.0);
        let z = uniform(&mut rng, rows * width, -4.0, 4.0);
        let w = uniform(&mut rng, width, 0.5, 1.5);
        let mut want = y.clone();
        gated_group_rms_norm(&mut want, &z, &w, group, 1e-5).unwrap();
        let mut got = y.clone();
        let mut args = Args::new();
        args.output(&mut got)
            .input(&z)
            .input(&w)
            .int(width as i32)
            .int(group as i32)
            .float(1e-5);
        launch(
            "gated_group_rms_norm_f32",
            [dim(rows), dim(width / group), 1],
            [THREADS, 1, 1],
            0,
            &mut args,
        );
        assert_close(&format!("gated norm {rows}x{width}/{group}"), &got, &want, F32_REL_L2);
    }
}
