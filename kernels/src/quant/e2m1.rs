//! FP4 E2M1: 1 sign bit (bit 3), 2 exponent bits (bias 1), 1 mantissa bit. The eight
//! magnitudes are {0, 0.5, 1, 1.5, 2, 3, 4, 6}; there is no infinity or NaN.

/// The value of each of the 16 codes (index = code; bit 3 is the sign).
pub const E2M1_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Decodes the low 4 bits of `nibble` (the high 4 bits are ignored).
#[inline]
pub fn e2m1_to_f32(nibble: u8) -> f32 {
    E2M1_VALUES[(nibble & 0xF) as usize]
}

/// Encodes an f32 as E2M1 exactly as ModelOpt's `_cast_fp4` does: the nearest magnitude, ties
/// to the even code (0.25 -> 0, 0.75 -> 1.0, 1.25 -> 1.0, 1.75 -> 2.0, 2.5 -> 2.0, 3.5 -> 4.0,
/// 5.0 -> 4.0), beyond 6 (and infinity) saturating to 6. The sign bit is set when `x < 0`, so
/// a small negative value that rounds to zero gives `0x8` (-0) while `-0.0` gives `0x0`. NaN
/// gives 0 (no rounding boundary lies below it).
pub fn f32_to_e2m1(x: f32) -> u8 {
    // The midpoints between neighbouring magnitudes; a value equal to one of them goes to the
    // even code of the two, i.e. up at the odd-indexed midpoints.
    const MIDPOINTS: [f32; 7] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];
    let a = x.abs();
    let below = MIDPOINTS.iter().filter(|&&m| m < a).count() as u8;
    let tie_up = u8::from(a == 0.75 || a == 1.75 || a == 3.5);
    let sign = if x < 0.0 { 0x8 } else { 0 };
    sign | (below + tie_up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_16_codes_decode_to_their_definition() {
        for code in 0..16u8 {
            let (e, m) = (i32::from((code >> 1) & 3), f64::from(code & 1));
            let magnitude = if e == 0 {
                m * 0.5
            } else {
                (1.0 + m / 2.0) * 2f64.powi(e - 1)
            };
            let want = if code & 8 != 0 { -magnitude } else { magnitude };
            assert_eq!(f64::from(e2m1_to_f32(code)), want, "{code:#x}");
            assert_eq!(e2m1_to_f32(code).is_sign_negative(), code & 8 != 0);
            assert_eq!(e2m1_to_f32(code | 0xF0), e2m1_to_f32(code), "high bits ignored");
        }
    }

    #[test]
    fn every_code_round_trips() {
        for code in (0..16u8).filter(|&c| c != 8) {
            assert_eq!(f32_to_e2m1(e2m1_to_f32(code)), code);
        }
        assert_eq!(f32_to_e2m1(-0.0), 0);
    }

    /// The ties listed in the format's reference, both signs, and the values either side.
    #[test]
    fn ties_go_to_the_even_code() {
        let ties = [
            (0.25, 0.0),
            (0.75, 1.0),
            (1.25, 1.0),
            (1.75, 2.0),
            (2.5, 2.0),
            (3.5, 4.0),
            (5.0, 4.0),
        ];
        let mags = [0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
        for (i, &(tie, want)) in ties.iter().enumerate() {
            for s in [1.0f32, -1.0] {
                assert_eq!(e2m1_to_f32(f32_to_e2m1(s * tie)), s * want, "tie {}", s * tie);
                assert_eq!(
                    e2m1_to_f32(f32_to_e2m1(s * tie.next_down())),
                    s * mags[i],
                    "below {tie}"
                );
                assert_eq!(
                    e2m1_to_f32(f32_to_e2m1(s * tie.next_up())),
                    s * mags[i + 1],
                    "above {tie}"
                );
            }
        }
    }

    #[test]
    fn saturates_and_handles_specials() {
        assert_eq!(f32_to_e2m1(6.5), 0x7);
        assert_eq!(f32_to_e2m1(1e30), 0x7);
        assert_eq!(f32_to_e2m1(f32::INFINITY), 0x7);
        assert_eq!(f32_to_e2m1(f32::NEG_INFINITY), 0xF);
        assert_eq!(f32_to_e2m1(-0.1), 0x8, "negative values keep their sign at zero");
        assert_eq!(f32_to_e2m1(f32::NAN), 0x0);
    }
}
