//! `matmul` against an f64 reference, and its bitwise invariances.

use marc_kernels::{KernelError, PackedMatrix, WeightDType, matmul};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DTYPES: [WeightDType; 3] = [WeightDType::F32, WeightDType::BF16, WeightDType::F16];

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Random weights in `dtype`: their exact values (for the reference) and the packed matrix,
/// built from little-endian bytes as a checkpoint would hold them.
fn weights(dtype: WeightDType, n: usize, k: usize, seed: u64) -> (Vec<f32>, PackedMatrix) {
    let raw = random(n * k, seed);
    let (exact, bytes): (Vec<f32>, Vec<u8>) = match dtype {
        WeightDType::F32 => (raw.clone(), raw.iter().flat_map(|v| v.to_le_bytes()).collect()),
        WeightDType::BF16 => {
            let h: Vec<half::bf16> = raw.iter().map(|&v| half::bf16::from_f32(v)).collect();
            (
                h.iter().map(|v| v.to_f32()).collect(),
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        }
        WeightDType::F16 => {
            let h: Vec<half::f16> = raw.iter().map(|&v| half::f16::from_f32(v)).collect();
            (
                h.iter().map(|v| v.to_f32()).collect(),
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        }
        other => panic!("{other} weights are tested in tests/quantized_matmul.rs"),
    };
    let packed = PackedMatrix::from_bytes(dtype, n, k, &bytes).expect("valid weights");
    (exact, packed)
}

/// Checks y against an f64 reference: an f32 FMA chain of length k is within
/// `k * 2^-24 * sum |x w|` of the exact sum (plus one rounding for the bias).
fn check_reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>, y: &[f32]) {
    let u = f64::from(f32::EPSILON) / 2.0;
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut abs) = (0.0f64, 0.0f64);
            for kk in 0..k {
                let p = f64::from(x[i * k + kk]) * f64::from(w[j * k + kk]);
                sum += p;
                abs += p.abs();
            }
            let b = bias.map_or(0.0, |b| f64::from(b[j]));
            let tol = (k as f64 + 1.0) * u * (abs + b.abs()) * 1.01 + f64::from(f32::MIN_POSITIVE);
            let got = f64::from(y[i * n + j]);
            assert!(
                (got - (sum + b)).abs() <= tol,
                "y[{i}, {j}] = {got}, reference {}, tolerance {tol} (m={m} n={n} k={k})",
                sum + b
            );
        }
    }
}

fn run(x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![f32::NAN; m * w.rows()];
    matmul(x, m, w, bias, &mut y).expect("valid shapes");
    y
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

#[test]
fn matches_f64_reference_on_odd_shapes() {
    // (m, n, k): ones, and non-multiples of every tile size (12 / 6 rows, 32 columns, 16 / 8
    // lanes), single and many row tiles, one and several panel groups.
    let shapes = [
        (1, 1, 1),
        (1, 1, 37),
        (1, 33, 1),
        (2, 7, 5),
        (5, 100, 64),
        (13, 65, 300),
        (47, 31, 257),
        (49, 95, 513),
        (130, 70, 129),
        (200, 33, 1000),
        (70, 300, 2100), // several panel groups, each widened once (bf16/f16)
    ];
    for (s, &(m, n, k)) in shapes.iter().enumerate() {
        for dtype in DTYPES {
            let seed = s as u64 * 10;
            let x = random(m * k, seed + 1);
            let (w_exact, w) = weights(dtype, n, k, seed + 2);
            let bias = random(n, seed + 3);
            let y = run(&x, m, &w, None);
            check_reference(&x, m, &w_exact, n, k, None, &y);
            let y = run(&x, m, &w, Some(&bias));
            check_reference(&x, m, &w_exact, n, k, Some(&bias), &y);
        }
    }
}

#[test]
fn from_f32_stores_f32_and_matches_from_bytes() {
    let (n, k, m) = (37, 45, 3);
    let values = random(n * k, 7);
    let a = PackedMatrix::from_f32(n, k, &values).unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let b = PackedMatrix::from_bytes(WeightDType::F32, n, k, &bytes).unwrap();
    assert_eq!((a.rows(), a.cols(), a.dtype()), (n, k, WeightDType::F32));
    let x = random(m * k, 8);
    assert_eq!(bits(&run(&x, m, &a, None)), bits(&run(&x, m, &b, None)));
}

#[test]
fn packed_size_keeps_the_dtype() {
    let (_, w) = weights(WeightDType::BF16, 1024, 512, 1);
    assert_eq!(w.size_in_bytes(), 1024 * 512 * 2);
    let (_, w) = weights(WeightDType::F32, 4432, 64, 1);
    // Only the last panel is padded (to 32 rows).
    assert_eq!(w.size_in_bytes(), 4448 * 64 * 4);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Each row computed alone must have the same bytes as inside batches of any size, at any
/// position, on 1, 2 or 3 threads.
#[test]
fn rows_are_bitwise_batch_and_thread_invariant() {
    let (n, k) = (100, 600);
    let big = 150; // blocked path, several m-blocks and k-blocks
    for dtype in DTYPES {
        let x = random(big * k, 11);
        let (_, w) = weights(dtype, n, k, 12);
        let bias = random(n, 13);
        let alone: Vec<Vec<u32>> = (0..big)
            .map(|i| bits(&pool(1).install(|| run(&x[i * k..(i + 1) * k], 1, &w, Some(&bias)))))
            .collect();
        for threads in [1, 2, 3] {
            let pool = pool(threads);
            // Whole batch, and windows of several sizes starting at several offsets, so each row
            // falls in different tiles, blocks and paths.
            let mut windows = vec![(0, big)];
            for len in [2, 5, 12, 13, 48, 49, 100] {
                for start in [0, 1, 7, big - len] {
                    windows.push((start, len));
                }
            }
            for (start, len) in windows {
                let xs = &x[start * k..(start + len) * k];
                let y = pool.install(|| run(xs, len, &w, Some(&bias)));
                for r in 0..len {
                    assert_eq!(
                        bits(&y[r * n..(r + 1) * n]),
                        alone[start + r],
                        "{dtype}: row {} at position {r} of a batch of {len} on {threads} threads",
                        start + r
                    );
                }
            }
        }
    }
}

#[test]
fn from_bytes_rejects_a_wrong_length() {
    let err = PackedMatrix::from_bytes(WeightDType::BF16, 4, 3, &[0u8; 23]).unwrap_err();
    assert_eq!(
        err,
        KernelError::WeightByteLength {
            rows: 4,
            cols: 3,
            dtype: WeightDType::BF16,
            expected: 24,
            found: 23
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("expected 24 bytes") && message.contains("found 23"),
        "{message}"
    );
    assert!(PackedMatrix::from_bytes(WeightDType::F32, 0, 3, &[]).is_err());
    assert!(PackedMatrix::from_f32(2, 2, &[1.0; 3]).is_err());
}

#[test]
fn from_bytes_accepts_unaligned_bytes() {
    let (n, k, m) = (19, 23, 2);
    let x = random(m * k, 21);
    for dtype in DTYPES {
        let (_, aligned) = weights(dtype, n, k, 22);
        // Rebuild the same weights from a byte slice that starts at an odd address.
        let raw = random(n * k, 22);
        let bytes: Vec<u8> = match dtype {
            WeightDType::F32 => raw.iter().flat_map(|v| v.to_le_bytes()).collect(),
            WeightDType::BF16 => raw
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            WeightDType::F16 => raw.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            other => panic!("{other} weights are tested in tests/quantized_matmul.rs"),
        };
        let mut storage = vec![0u8; bytes.len() + 1];
        storage[1..].copy_from_slice(&bytes);
        let unaligned = PackedMatrix::from_bytes(dtype, n, k, &storage[1..]).unwrap();
        assert_eq!(bits(&run(&x, m, &unaligned, None)), bits(&run(&x, m, &aligned, None)));
    }
}

#[test]
fn rejects_mismatched_lengths() {
    let w = PackedMatrix::from_f32(3, 4, &[0.5; 12]).unwrap();
    let mut y = vec![0.0; 6];
    let err = matmul(&[0.0; 7], 2, &w, None, &mut y).unwrap_err();
    assert_eq!(
        err,
        KernelError::LengthMismatch {
            op: "matmul",
            what: "x",
            expected: 8,
            found: 7
        }
    );
    let err = matmul(&[0.0; 8], 2, &w, None, &mut y[..5]).unwrap_err();
    assert_eq!(
        err,
        KernelError::LengthMismatch {
            op: "matmul",
            what: "y",
            expected: 6,
            found: 5
        }
    );
    let err = matmul(&[0.0; 8], 2, &w, Some(&[0.0; 4]), &mut y).unwrap_err();
    assert_eq!(
        err,
        KernelError::LengthMismatch {
            op: "matmul",
            what: "bias",
            expected: 3,
            found: 4
        }
    );
    // An empty batch is fine.
    matmul(&[], 0, &w, None, &mut []).unwrap();
}
