//! kernels/cuda/embedding.cu and pooling.cu on the CPU through the SIMT emulation, against the
//! model's CPU code: `half`'s bf16 widening, `marc_models::pooling`, and the compression head's
//! activation and normalisation (`marc_models::heads::Activation`, `l2_normalize_rows`).

mod common;

use common::*;
use half::bf16;
use marc_models::Pooling;
use marc_models::heads::Activation;
use marc_models::pooling::{l2_normalize_rows, pool};

#[test]
fn embedding_gather_is_exact() {
    let (vocab, width) = (50, 300);
    let mut rng = rng(5);
    let table_f32 = uniform(&mut rng, vocab * width, -1.0, 1.0);
    let table: Vec<u16> = table_f32.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    // Repeats, the first and the last id.
    let ids: Vec<i32> = vec![3, 0, 49, 3, 17];
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&id| {
            table[id as usize * width..][..width]
                .iter()
                .map(|&b| bf16::from_bits(b).to_f32())
        })
        .collect();
    let mut got = vec![f32::NAN; ids.len() * width];
    let mut args = Args::new();
    args.input(&table)
        .input(&ids)
        .int(vocab as i32)
        .int(width as i32)
        .output(&mut got);
    launch(
        "embedding_gather_bf16",
        [dim(ids.len()), 1, 1],
        [256, 1, 1],
        0,
        &mut args,
    );
    assert!(
        got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()),
        "bf16 gather differs"
    );

    let want_f32: Vec<f32> = ids
        .iter()
        .flat_map(|&id| table_f32[id as usize * width..][..width].to_vec())
        .collect();
    let mut got = vec![f32::NAN; ids.len() * width];
    let mut args = Args::new();
    args.input(&table_f32)
        .input(&ids)
        .int(vocab as i32)
        .int(width as i32)
        .output(&mut got);
    launch(
        "embedding_gather_f32",
        [dim(ids.len()), 1, 1],
        [256, 1, 1],
        0,
        &mut args,
    );
    assert_eq!(got, want_f32);
}

#[test]
fn mean_and_last_pooling_are_the_cpu_bits() {
    let width = 200;
    let lens = [1usize, 7, 33];
    let cu = cu_of(&lens);
    let tokens = *cu.last().unwrap();
    let mut rng = rng(6);
    let states = uniform(&mut rng, tokens * width, -3.0, 3.0);
    for (mode, pooling) in [(0, Pooling::Mean), (1, Pooling::Last)] {
        let mut got = vec![f32::NAN; lens.len() * width];
        let cu32 = cu_i32(&cu);
        let mut args = Args::new();
        args.input(&states)
            .input(&cu32)
            .int(width as i32)
            .int(mode)
            .output(&mut got);
        launch(
            "pool_f32",
            [dim(width.div_ceil(128)), dim(lens.len()), 1],
            [128, 1, 1],
            0,
            &mut args,
        );
        for (s, w) in cu.windows(2).enumerate() {
            let want = pool(&states[w[0] * width..w[1] * width], width, pooling).unwrap();
            assert_eq!(&got[s * width..][..width], &want[..], "{pooling:?}, sequence {s}");
        }
    }
}

#[test]
fn head_activation_and_normalisation_match_the_cpu_head() {
    let activations = [
        (0, Activation::None),
        (1, Activation::Relu),
        (2, Activation::Tanh),
        (3, Activation::Silu),
        (4, Activation::Gelu),
    ];
    let (rows, width) = (3, 100);
    let mut rng = rng(7);
    let mut x = uniform(&mut rng, rows * width, -3.0, 3.0);
    // A row that the ReLU zeroes entirely must stay zero, not become NaN.
    x[2 * width..].iter_mut().for_each(|v| *v = -v.abs());
    for (code, activation) in activations {
        for normalize in [false, true] {
            let mut want: Vec<f32> = x.iter().map(|&v| activation.apply(v)).collect();
            if normalize {
                l2_normalize_rows(&mut want, width);
            }
            let mut got = x.clone();
            let mut args = Args::new();
            args.output(&mut got)
                .int(width as i32)
                .int(code)
                .int(i32::from(normalize));
            launch(
                "head_activation_normalize_f32",
                [dim(rows), 1, 1],
                [256, 1, 1],
                0,
                &mut args,
            );
            assert_close(
                &format!("{activation:?}, normalize {normalize}"),
                &got,
                &want,
                F32_REL_L2,
            );
        }
    }
}
