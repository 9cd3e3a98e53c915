//! kernels/cuda/ssd_scan.cu on the CPU through the SIMT emulation, against
//! `marc_kernels::ops::{ssd_scan, ssd_scan_xbc}`.

mod common;

use common::*;
use marc_kernels::ops::{SsdShape, ssd_scan, ssd_scan_xbc};

/// The kernel's chunk (SSD_CHUNK) and block size.
const CHUNK: usize = 32;
const THREADS: u32 = 256;

fn shared_bytes(p: usize, n: usize) -> usize {
    (n * p + CHUNK * p + 2 * CHUNK * n + CHUNK * CHUNK + 2 * CHUNK) * 4
}

/// One scan's operands, in the `[x | B | C]` row layout of the convolution output.
struct Case {
    shape: SsdShape,
    lens: Vec<usize>,
    xbc: Vec<f32>,
    dt: Vec<f32>,
    a: Vec<f32>,
    d: Vec<f32>,
}

impl Case {
    fn new(shape: SsdShape, lens: &[usize], seed: u64) -> Self {
        let tokens: usize = lens.iter().sum();
        let row = shape.num_heads * shape.head_dim + 2 * shape.n_groups * shape.state_size;
        let mut rng = rng(seed);
        Self {
            shape,
            lens: lens.to_vec(),
            xbc: uniform(&mut rng, tokens * row, -1.0, 1.0),
            dt: uniform(&mut rng, tokens * shape.num_heads, 0.01, 0.2),
            a: uniform(&mut rng, shape.num_heads, -4.0, -0.5),
            d: uniform(&mut rng, shape.num_heads, -1.0, 1.0),
        }
    }

    /// Runs the emulated kernel reading x, B and C from the `[x | B | C]` rows.
    fn emulated(&self) -> Vec<f32> {
        let s = &self.shape;
        let (xw, bcw) = (s.num_heads * s.head_dim, s.n_groups * s.state_size);
        let row = xw + 2 * bcw;
        let cu = cu_i32(&cu_of(&self.lens));
        let tokens: usize = self.lens.iter().sum();
        let mut y = vec![f32::NAN; tokens * xw];
        let mut args = Args::new();
        args.input(&self.xbc)
            .int(row as i32)
            .input(&self.xbc[xw.min(self.xbc.len())..])
            .input(&self.xbc[(xw + bcw).min(self.xbc.len())..])
            .int(row as i32)
            .input(&self.dt)
            .input(&self.a)
            .input(&self.d)
            .input(&cu)
            .int(s.num_heads as i32)
            .int(s.head_dim as i32)
            .int(s.n_groups as i32)
            .int(s.state_size as i32)
            .output(&mut y);
        launch(
            "ssd_scan_f32",
            [dim(s.num_heads), dim(self.lens.len()), 1],
            [THREADS, 1, 1],
            shared_bytes(s.head_dim, s.state_size),
            &mut args,
        );
        y
    }

    fn check(&self, case: &str) {
        let got = self.emulated();
        let cu = cu_of(&self.lens);
        let mut want = vec![0.0; got.len()];
        ssd_scan_xbc(&self.shape, &cu, &self.xbc, &self.dt, &self.a, &self.d, &mut want).unwrap();
        assert_close(case, &got, &want, F32_REL_L2);
    }
}

#[test]
fn single_tokens_and_chunk_boundaries() {
    // Lengths 1, just below, at and above the kernel's chunk, and two chunks and a bit; the CPU
    // op's chunk (24) differs from the kernel's (32), so boundaries fall in different places.
    for (i, len) in [1usize, 31, 32, 33, 70].into_iter().enumerate() {
        Case::new(SsdShape::new(4, 8, 2, 4, 24), &[len], i as u64).check(&format!("length {len}"));
    }
}

#[test]
fn packed_sequences_start_from_a_zero_state() {
    Case::new(SsdShape::new(4, 8, 2, 4, 16), &[5, 0, 40, 1, 33], 7).check("packed, empty one included");
}

#[test]
fn bench_head_shape() {
    // The benchmark config's head (P = N = 64), one group of four heads, across chunk boundaries.
    Case::new(SsdShape::new(4, 64, 1, 64, 64), &[37, 66], 11).check("P = N = 64");
}

#[test]
fn split_arrays_match_the_xbc_layout() {
    // The kernel reads strided rows; the split-array CPU op must see the same numbers.
    let case = Case::new(SsdShape::new(2, 8, 1, 4, 8), &[9, 12], 3);
    let s = &case.shape;
    let (xw, bcw) = (s.num_heads * s.head_dim, s.n_groups * s.state_size);
    let row = xw + 2 * bcw;
    let split = |from: usize, width: usize| -> Vec<f32> {
        case.xbc
            .chunks_exact(row)
            .flat_map(|r| r[from..from + width].to_vec())
            .collect()
    };
    let (x, b, c) = (split(0, xw), split(xw, bcw), split(xw + bcw, bcw));
    let cu = cu_of(&case.lens);
    let mut want = vec![0.0; x.len()];
    ssd_scan(s, &cu, &x, &case.dt, &case.a, &b, &c, &case.d, &mut want).unwrap();
    assert_close("split arrays", &case.emulated(), &want, F32_REL_L2);
}
