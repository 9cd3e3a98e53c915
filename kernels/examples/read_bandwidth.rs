//! Memory read bandwidth with the current rayon pool: the roofline for small batches, where a
//! forward pass streams every weight once. `cargo run --release -p marc-kernels --example
//! read_bandwidth [GiB]`.

use std::time::Instant;

use rayon::prelude::*;

fn main() {
    let gib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let data = vec![1.0f32; gib << 28];
    for _ in 0..4 {
        let started = Instant::now();
        let sum: f32 = data
            .par_chunks(1 << 20)
            .map(|chunk| {
                let mut lanes = [0.0f32; 16];
                for block in chunk.chunks_exact(16) {
                    for (l, v) in lanes.iter_mut().zip(block) {
                        *l += v;
                    }
                }
                lanes.iter().sum::<f32>()
            })
            .sum();
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "read {:.1} GB/s with {} threads ({sum})",
            (data.len() * 4) as f64 / seconds / 1e9,
            rayon::current_num_threads()
        );
    }
}
