//! The portable path: the same FMA chains as the SIMD paths, with `f32::mul_add`.
//!
//! Used where neither AVX-512F nor AVX2+FMA is available (and on non-x86 targets), and as the
//! reference the SIMD paths must match bit for bit.

use super::cpu::{Isa, Tile, Weight};
use super::packed::NR;

/// The scalar code path.
pub(super) struct Scalar;

impl Isa for Scalar {
    const MR: usize = 4;

    unsafe fn tile<W: Weight>(rows: usize, panels: usize, t: &Tile<W>) {
        for q in 0..panels {
            let c0 = q * NR;
            let cols = t.cols.saturating_sub(c0).min(NR);
            if cols == 0 {
                break;
            }
            // SAFETY: per the `Tile` contract the group's panel q exists, and x, y and bias
            // are valid for the rows and the first `cols` columns accessed here.
            unsafe {
                let w = t.w.add(q * t.panel_stride);
                for r in 0..rows {
                    let y = t.y.add(r * t.ldy + c0);
                    let mut acc = [0.0f32; NR];
                    for kk in 0..t.kc {
                        let xv = *t.x.add(kk * t.x_stride + r);
                        let line = w.add(kk * NR);
                        for (c, a) in acc.iter_mut().enumerate() {
                            *a = xv.mul_add((*line.add(c)).widen(), *a);
                        }
                    }
                    for (c, &a) in acc[..cols].iter().enumerate() {
                        let b = if t.bias.is_null() {
                            None
                        } else {
                            Some(*t.bias.add(c0 + c))
                        };
                        let a = a * t.scale;
                        *y.add(c) = match b {
                            Some(b) => a + b,
                            None => a,
                        };
                    }
                }
            }
        }
    }

    unsafe fn widen<W: Weight>(src: *const W, len: usize, dst: *mut f32) {
        for i in 0..len {
            // SAFETY: both buffers hold `len` elements.
            unsafe { *dst.add(i) = (*src.add(i)).widen() };
        }
    }
}
