//! Principal component analysis of pooled hidden states: the head `marc head init` fits so that a
//! model without a trained head still gives a compact, sound vector.
//!
//! Everything is computed in f64: the mean, the covariance (normalised by `n - 1`), accumulated
//! over blocks of rows in a fixed order, and its symmetric eigendecomposition (nalgebra's
//! `SymmetricEigen`). Components are the top-`dim` eigenvectors by eigenvalue, each signed so its
//! largest-magnitude entry is positive (eigenvectors are defined only up to sign; this makes the
//! fit reproducible).

use nalgebra::{DMatrix, SymmetricEigen};

use crate::heads::{Activation, LayerWeights};

/// Rows accumulated into the covariance per GEMM.
const BLOCK_ROWS: usize = 1024;

/// A fitted PCA.
#[derive(Clone, Debug)]
pub struct Pca {
    /// Input width.
    pub width: usize,
    /// Number of components kept.
    pub dim: usize,
    /// The data's mean `[width]`.
    pub mean: Vec<f64>,
    /// Orthonormal components `[dim, width]`, row-major, by decreasing variance.
    pub components: Vec<f64>,
    /// Every eigenvalue of the covariance, in decreasing order (`width` of them).
    pub eigenvalues: Vec<f64>,
    /// Sum of the kept eigenvalues over the covariance's trace (1 if the trace is zero).
    pub explained_variance: f64,
    /// Items fitted on.
    pub items: usize,
}

/// Why a PCA cannot be fitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PcaError {
    /// `dim` is zero.
    #[error("the number of components must be at least 1")]
    ZeroDim,
    /// More components than input dimensions.
    #[error("{dim} components requested but the hidden states have only {width} dimensions")]
    DimAboveWidth {
        /// Components asked for.
        dim: usize,
        /// Input width.
        width: usize,
    },
    /// More components than the corpus can determine.
    #[error(
        "{dim} components requested but a corpus of {items} items determines at most {} (items - 1): add items or lower the dimension",
        items.saturating_sub(1)
    )]
    TooFewItems {
        /// Components asked for.
        dim: usize,
        /// Items in the corpus.
        items: usize,
    },
    /// `data.len()` is not `items * width`.
    #[error("expected {items} x {width} values, found {found}")]
    Shape {
        /// Items.
        items: usize,
        /// Width.
        width: usize,
        /// Values given.
        found: usize,
    },
    /// The data contains NaN or infinity.
    #[error("the data contains a non-finite value (item {item})")]
    NonFinite {
        /// The first bad item.
        item: usize,
    },
}

/// Fits a `dim`-component PCA to `data` `[items, width]` (row-major).
pub fn fit(data: &[f32], items: usize, width: usize, dim: usize) -> Result<Pca, PcaError> {
    if data.len() != items * width {
        return Err(PcaError::Shape {
            items,
            width,
            found: data.len(),
        });
    }
    if dim == 0 {
        return Err(PcaError::ZeroDim);
    }
    if dim > width {
        return Err(PcaError::DimAboveWidth { dim, width });
    }
    if items < 2 || dim > items - 1 {
        return Err(PcaError::TooFewItems { dim, items });
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(PcaError::NonFinite { item: i / width });
    }

    let mut mean = vec![0.0f64; width];
    for row in data.chunks_exact(width) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= items as f64);

    let mut cov = DMatrix::<f64>::zeros(width, width);
    for start in (0..items).step_by(BLOCK_ROWS) {
        let rows = BLOCK_ROWS.min(items - start);
        let block = DMatrix::from_fn(rows, width, |r, c| f64::from(data[(start + r) * width + c]) - mean[c]);
        cov.gemm_tr(1.0, &block, &block, 1.0);
    }
    cov /= (items - 1) as f64;
    // Exactly symmetric, whatever the GEMM's rounding.
    for r in 0..width {
        for c in 0..r {
            let v = 0.5 * (cov[(r, c)] + cov[(c, r)]);
            cov[(r, c)] = v;
            cov[(c, r)] = v;
        }
    }
    let trace: f64 = (0..width).map(|i| cov[(i, i)]).sum();

    let eigen = SymmetricEigen::new(cov);
    let mut order: Vec<usize> = (0..width).collect();
    order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]).then(a.cmp(&b)));
    let eigenvalues: Vec<f64> = order.iter().map(|&i| eigen.eigenvalues[i]).collect();

    let mut components = Vec::with_capacity(dim * width);
    for &i in &order[..dim] {
        let v = eigen.eigenvectors.column(i);
        let pivot = v
            .iter()
            .copied()
            .fold(0.0f64, |best, x| if x.abs() > best.abs() { x } else { best });
        let sign = if pivot < 0.0 { -1.0 } else { 1.0 };
        components.extend(v.iter().map(|x| sign * x));
    }
    let kept: f64 = eigenvalues[..dim].iter().sum();
    let explained_variance = if trace > 0.0 { kept / trace } else { 1.0 };
    Ok(Pca {
        width,
        dim,
        mean,
        components,
        eigenvalues,
        explained_variance,
        items,
    })
}

impl Pca {
    /// Projects `x` `[width]` onto the components, in f64: `components · (x - mean)`.
    pub fn project(&self, x: &[f32]) -> Vec<f64> {
        self.components
            .chunks_exact(self.width)
            .map(|c| {
                c.iter()
                    .zip(x.iter().zip(&self.mean))
                    .map(|(w, (&v, m))| w * (f64::from(v) - m))
                    .sum()
            })
            .collect()
    }

    /// The one linear layer of the head: `weight = components` `[dim, width]`,
    /// `bias = -components · mean`, no activation.
    pub fn head_layer(&self) -> LayerWeights {
        let bias = self
            .components
            .chunks_exact(self.width)
            .map(|c| -(c.iter().zip(&self.mean).map(|(w, m)| w * m).sum::<f64>()) as f32)
            .collect();
        LayerWeights {
            weight: self.components.iter().map(|&w| w as f32).collect(),
            out: self.dim,
            input: self.width,
            bias: Some(bias),
            activation: Activation::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream in [-1, 1).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    fn random(items: usize, width: usize, seed: u64) -> Vec<f32> {
        let mut rng = Lcg(seed);
        // Unequal scales per column so the eigenvalues are well separated.
        (0..items * width)
            .map(|i| (rng.next() * (1.0 + (i % width) as f64 * 0.3)) as f32)
            .collect()
    }

    #[test]
    fn components_are_orthonormal_and_decorrelate_the_data() {
        let (items, width, dim) = (200, 12, 5);
        let data = random(items, width, 7);
        let pca = fit(&data, items, width, dim).unwrap();
        for a in 0..dim {
            for b in 0..dim {
                let dot: f64 = (0..width)
                    .map(|c| pca.components[a * width + c] * pca.components[b * width + c])
                    .sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-5, "components {a}, {b}: {dot}");
            }
        }
        // The projected corpus: zero mean, diagonal covariance with descending variances that
        // are the top eigenvalues.
        let projected: Vec<Vec<f64>> = data.chunks_exact(width).map(|x| pca.project(x)).collect();
        for a in 0..dim {
            let mean_a: f64 = projected.iter().map(|p| p[a]).sum::<f64>() / items as f64;
            assert!(mean_a.abs() < 1e-9);
            for b in 0..dim {
                let cov: f64 = projected.iter().map(|p| p[a] * p[b]).sum::<f64>() / (items - 1) as f64;
                if a == b {
                    assert!((cov - pca.eigenvalues[a]).abs() < 1e-9 * pca.eigenvalues[0]);
                    if a > 0 {
                        let previous: f64 =
                            projected.iter().map(|p| p[a - 1] * p[a - 1]).sum::<f64>() / (items - 1) as f64;
                        assert!(cov < previous, "variances must descend: {previous} then {cov}");
                    }
                } else {
                    assert!(cov.abs() < 1e-9 * pca.eigenvalues[0], "cov[{a}][{b}] = {cov}");
                }
            }
        }
    }

    #[test]
    fn explained_variance_is_the_top_eigenvalues_over_the_trace() {
        let (items, width, dim) = (100, 8, 3);
        let data = random(items, width, 3);
        let pca = fit(&data, items, width, dim).unwrap();
        let mut trace = 0.0;
        for c in 0..width {
            let mean: f64 = data.iter().skip(c).step_by(width).map(|&v| f64::from(v)).sum::<f64>() / items as f64;
            trace += data
                .iter()
                .skip(c)
                .step_by(width)
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / (items - 1) as f64;
        }
        let top: f64 = pca.eigenvalues[..dim].iter().sum();
        assert!((pca.explained_variance - top / trace).abs() < 1e-12);
        assert!((pca.eigenvalues.iter().sum::<f64>() - trace).abs() < 1e-9 * trace);
        assert!(pca.eigenvalues.windows(2).all(|w| w[0] >= w[1]));
        assert!(pca.explained_variance > 0.0 && pca.explained_variance < 1.0);
    }

    #[test]
    fn recovers_a_known_low_rank_subspace() {
        // x = mean + B z + small noise, B: [width, rank] with orthonormal columns.
        let (items, width, rank) = (300, 16, 3);
        let mut rng = Lcg(11);
        let raw: Vec<f64> = (0..width * rank).map(|_| rng.next()).collect();
        // Gram-Schmidt on the columns.
        let mut basis = vec![vec![0.0f64; width]; rank];
        for k in 0..rank {
            let mut v: Vec<f64> = (0..width).map(|r| raw[r * rank + k]).collect();
            for b in &basis[..k] {
                let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            basis[k] = v.iter().map(|x| x / norm).collect();
        }
        let offset: Vec<f64> = (0..width).map(|c| c as f64 * 0.5 - 3.0).collect();
        let mut data = Vec::with_capacity(items * width);
        for _ in 0..items {
            let z: Vec<f64> = (0..rank).map(|k| rng.next() * (3.0 + k as f64)).collect();
            for c in 0..width {
                let signal: f64 = (0..rank).map(|k| basis[k][c] * z[k]).sum();
                data.push((offset[c] + signal + 1e-3 * rng.next()) as f32);
            }
        }
        let pca = fit(&data, items, width, rank).unwrap();
        assert!(pca.explained_variance > 0.9999, "{}", pca.explained_variance);
        // Every basis vector lies in the fitted span: its projection keeps its norm.
        for b in &basis {
            let kept: f64 = pca
                .components
                .chunks_exact(width)
                .map(|c| c.iter().zip(b).map(|(x, y)| x * y).sum::<f64>().powi(2))
                .sum();
            assert!((kept - 1.0).abs() < 1e-5, "{kept}");
        }
        // The mean is recovered too, and the head's bias centres the data.
        let layer = pca.head_layer();
        assert_eq!((layer.out, layer.input), (rank, width));
        let bias = layer.bias.unwrap();
        for (k, c) in pca.components.chunks_exact(width).enumerate() {
            let expected = -c.iter().zip(&pca.mean).map(|(w, m)| w * m).sum::<f64>();
            assert!((f64::from(bias[k]) - expected).abs() < 1e-4);
        }
    }

    #[test]
    fn refuses_impossible_fits() {
        let data = random(10, 4, 1);
        assert_eq!(
            fit(&data, 10, 4, 5).unwrap_err(),
            PcaError::DimAboveWidth { dim: 5, width: 4 }
        );
        assert_eq!(fit(&data, 10, 4, 0).unwrap_err(), PcaError::ZeroDim);
        let few = random(3, 4, 1);
        let err = fit(&few, 3, 4, 3).unwrap_err();
        assert_eq!(err, PcaError::TooFewItems { dim: 3, items: 3 });
        assert!(err.to_string().contains("at most 2"), "{err}");
        assert!(fit(&few, 3, 4, 2).is_ok());
        let mut bad = data.clone();
        bad[9] = f32::NAN;
        assert_eq!(fit(&bad, 10, 4, 2).unwrap_err(), PcaError::NonFinite { item: 2 });
    }
}
