//! Turning a sequence's hidden states `[tokens, hidden]` into one vector.

use std::str::FromStr;

/// How a sequence's token states become one embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Pooling {
    /// Keep every token's state.
    None,
    /// Average over tokens (accumulated in order, f32).
    #[default]
    Mean,
    /// The last token's state (for causal models the one that has seen the whole sequence).
    Last,
}

impl FromStr for Pooling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "mean" => Ok(Self::Mean),
            "last" => Ok(Self::Last),
            other => Err(format!("unknown pooling {other:?}: expected none, mean or last")),
        }
    }
}

/// Pools `states` `[tokens, width]` into `[width]`; `None` for [`Pooling::None`] or no tokens.
pub fn pool(states: &[f32], width: usize, pooling: Pooling) -> Option<Vec<f32>> {
    let tokens = states.len() / width;
    if tokens == 0 {
        return None;
    }
    match pooling {
        Pooling::None => None,
        Pooling::Last => Some(states[(tokens - 1) * width..].to_vec()),
        Pooling::Mean => {
            let mut sum = vec![0.0f32; width];
            for row in states.chunks_exact(width) {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += v;
                }
            }
            let n = tokens as f32;
            sum.iter_mut().for_each(|s| *s /= n);
            Some(sum)
        }
    }
}

/// L2-normalises each row of `width` values in place: the norm in f64, summed in order; a zero row
/// stays zero. The one definition both heads and the server's Matryoshka re-normalisation use, so
/// their bytes agree.
pub fn l2_normalize_rows(values: &mut [f32], width: usize) {
    for row in values.chunks_exact_mut(width) {
        let norm = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v = (f64::from(*v) / norm) as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_last() {
        let states = [1.0, 2.0, 3.0, 6.0];
        assert_eq!(pool(&states, 2, Pooling::Mean), Some(vec![2.0, 4.0]));
        assert_eq!(pool(&states, 2, Pooling::Last), Some(vec![3.0, 6.0]));
        assert_eq!(pool(&states, 2, Pooling::None), None);
        assert_eq!("last".parse::<Pooling>(), Ok(Pooling::Last));
        assert!("max".parse::<Pooling>().is_err());
    }
}
