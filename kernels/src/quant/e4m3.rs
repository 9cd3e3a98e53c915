//! FP8 E4M3 (`float8_e4m3fn`): 1 sign, 4 exponent (bias 7) and 3 mantissa bits; no infinities,
//! `S.1111.111` is NaN, the largest finite value is 448 and the smallest subnormal 2^-9.

/// The largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;

/// Every E4M3 code decoded (NaN for `0x7F` and `0xFF`), built at compile time.
static TABLE: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut code = 0;
    while code < 256 {
        t[code] = decode(code as u8);
        code += 1;
    }
    t
};

/// The value of one E4M3 code, computed from its fields (the table's definition).
const fn decode(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((code >> 3) & 0xF) as i32;
    let mant = (code & 0x7) as f32;
    if exp == 0xF && code & 0x7 == 0x7 {
        return f32::NAN;
    }
    // Both branches are exact in f32: at most 4 significant bits times a power of two.
    let magnitude = if exp == 0 {
        mant * (1.0 / 512.0) // subnormal: m / 8 * 2^-6
    } else {
        (8.0 + mant) * pow2(exp - 10) // (1 + m / 8) * 2^(e - 7)
    };
    sign * magnitude
}

/// 2^e for the small exponents E4M3 needs (`-10 <= e <= 5`), exactly.
const fn pow2(e: i32) -> f32 {
    f32::from_bits(((127 + e) as u32) << 23)
}

/// Decodes an E4M3 byte to f32 (exactly; NaN for the two NaN codes).
#[inline]
pub fn e4m3_to_f32(code: u8) -> f32 {
    TABLE[code as usize]
}

/// Whether an E4M3 byte is one of the two NaN codes (`0x7F`, `0xFF`).
#[inline]
pub const fn e4m3_is_nan(code: u8) -> bool {
    code & 0x7F == 0x7F
}

/// Encodes an f32 as E4M3: round to nearest, ties to even; magnitudes from 448 up (and
/// infinities) saturate to ±448; NaN gives `0x7F`. The sign of zero is kept.
///
/// This is torch's `float8_e4m3fn` cast for every finite value below 464; torch turns 464 and
/// more into NaN where this saturates (ModelOpt's scales never get there: they are at most
/// `448 * (1 + 2^-23)` by construction, or clamped to 448 first).
pub fn f32_to_e4m3(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a.is_nan() {
        return 0x7F;
    }
    if a >= E4M3_MAX {
        return sign | 0x7E;
    }
    if a < 1.0 / 64.0 {
        // Subnormal range: multiples of 2^-9. Scaling by 2^9 is exact; rounding to an integer
        // then rounds to nearest even, and 8 carries into the smallest normal (code 0x08).
        return sign | (a * 512.0).round_ties_even() as u8;
    }
    let bits = a.to_bits();
    let exp = (bits >> 23) as i32 - 127; // -6..=8
    let mant = bits & 0x7F_FFFF;
    let (kept, rest) = (mant >> 20, mant & 0xF_FFFF);
    let round_up = rest > 0x8_0000 || (rest == 0x8_0000 && kept & 1 == 1);
    // A mantissa carry rolls into the exponent, which is the correct next value; a < 448
    // rounds at most to 448 (code 0x7E).
    let code = (((exp + 7) as u32) << 3) + kept + u32::from(round_up);
    sign | code as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The E4M3 value set from its definition, independently of `decode`: every
    /// (exponent, mantissa) pair, by f64 arithmetic.
    fn reference(code: u8) -> f64 {
        let s = if code & 0x80 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((code >> 3) & 0xF);
        let m = f64::from(code & 7);
        if e == 15 && m == 7.0 {
            return f64::NAN;
        }
        if e == 0 {
            s * m / 8.0 * 2f64.powi(-6)
        } else {
            s * (1.0 + m / 8.0) * 2f64.powi(e - 7)
        }
    }

    #[test]
    fn all_256_codes_decode_to_their_definition() {
        for code in 0..=255u8 {
            let (got, want) = (e4m3_to_f32(code), reference(code));
            if want.is_nan() {
                assert!(got.is_nan() && e4m3_is_nan(code), "{code:#04x}");
            } else {
                assert!(!e4m3_is_nan(code));
                assert_eq!(f64::from(got), want, "{code:#04x}");
                assert_eq!(got.is_sign_negative(), code & 0x80 != 0, "sign of {code:#04x}");
            }
        }
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
    }

    #[test]
    fn every_finite_code_round_trips() {
        for code in (0..=255u8).filter(|&c| !e4m3_is_nan(c)) {
            assert_eq!(f32_to_e4m3(e4m3_to_f32(code)), code, "{code:#04x}");
        }
    }

    /// Between each pair of neighbouring codes: just below the midpoint rounds down, just above
    /// up, and the midpoint itself to the even code (compared with the f64 values).
    #[test]
    fn rounding_is_to_nearest_with_ties_to_even() {
        for lo in 0..0x7Eu8 {
            let hi = lo + 1;
            let (a, b) = (reference(lo), reference(hi));
            let mid = ((a + b) / 2.0) as f32; // exact: neighbours differ in the last of few bits
            assert_eq!(f64::from(mid), (a + b) / 2.0);
            let even = if lo % 2 == 0 { lo } else { hi };
            for sign in [0u8, 0x80] {
                let s = if sign == 0 { 1.0f32 } else { -1.0 };
                assert_eq!(f32_to_e4m3(s * mid), sign | even, "tie between {lo:#04x} and {hi:#04x}");
                assert_eq!(f32_to_e4m3(s * mid.next_down()), sign | lo, "below the tie {lo:#04x}");
                assert_eq!(f32_to_e4m3(s * mid.next_up()), sign | hi, "above the tie {lo:#04x}");
            }
        }
    }

    #[test]
    fn saturates_and_handles_specials() {
        assert_eq!(f32_to_e4m3(448.0), 0x7E);
        assert_eq!(f32_to_e4m3(463.9), 0x7E);
        assert_eq!(f32_to_e4m3(1e9), 0x7E);
        assert_eq!(f32_to_e4m3(f32::INFINITY), 0x7E);
        assert_eq!(f32_to_e4m3(f32::NEG_INFINITY), 0xFE);
        assert!(e4m3_is_nan(f32_to_e4m3(f32::NAN)));
        assert_eq!(f32_to_e4m3(0.0), 0x00);
        assert_eq!(f32_to_e4m3(-0.0), 0x80);
        // Below half the smallest subnormal: zero; the half itself ties to even (zero).
        assert_eq!(f32_to_e4m3(2f32.powi(-10)), 0x00);
        assert_eq!(f32_to_e4m3(2f32.powi(-10).next_up()), 0x01);
        assert_eq!(f32_to_e4m3(f32::from_bits(1)), 0x00);
    }
}
