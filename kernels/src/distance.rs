//! Distance functions with runtime CPU dispatch.
//!
//! The loops are written with eight independent accumulators so LLVM vectorises them; on
//! x86-64 the same code is compiled a second time with AVX2+FMA enabled and chosen at run
//! time, so one binary runs everywhere and uses the wide units where they exist.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// 1 − cos(q, x). A zero vector has no direction: its distance is 1 (cos taken as 0).
    Cosine,
    /// −(q · x)
    Dot,
    /// Σ (q − x)²
    L2,
}

/// A query with what every row comparison needs precomputed (its norm for cosine).
#[derive(Clone, Debug)]
pub struct PreparedQuery {
    metric: Metric,
    vector: Vec<f32>,
    norm: f32,
}

impl PreparedQuery {
    /// For cosine the vector is kept at unit length (its direction is all that counts, and a
    /// unit vector keeps every product in range).
    pub fn new(metric: Metric, mut vector: Vec<f32>) -> Self {
        let norm = match metric {
            Metric::Cosine if normalize(&mut vector) > 0.0 => 1.0,
            Metric::Cosine => 0.0,
            _ => norm(&vector),
        };
        PreparedQuery { metric, vector, norm }
    }

    /// Whether this is a cosine query without a direction (a zero vector): every row is at
    /// distance 1 from it.
    pub fn is_zero_cosine(&self) -> bool {
        self.metric == Metric::Cosine && self.norm == 0.0
    }

    pub fn dim(&self) -> usize {
        self.vector.len()
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn vector(&self) -> &[f32] {
        &self.vector
    }

    #[inline]
    pub fn distance(&self, row: &[f32]) -> f32 {
        match self.metric {
            Metric::Dot => in_range(-dot(&self.vector, row)),
            Metric::L2 => in_range(squared_l2(&self.vector, row)),
            Metric::Cosine => {
                let (qx, xx) = dot_and_norm(&self.vector, row);
                if self.norm == 0.0 {
                    1.0
                } else if xx.is_normal() && xx < f32::MAX {
                    // |q| = 1 and |x| < 2^64 here, so q·x is finite too.
                    1.0 - qx / xx.sqrt()
                } else {
                    // Rare: a row whose squares leave f32's range (components past ≈ 1e19,
                    // where q·x overflows as well, or subnormal ones). f64 holds every f32
                    // squared, and the direction is all cosine looks at.
                    cosine_in_f64(&self.vector, row)
                }
            }
        }
    }
}

/// The instruction set the distance kernels use, chosen once per process.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SimdTier {
    /// Portable code the compiler vectorises for the build target (8 accumulators, no FMA).
    Portable,
    /// AVX2 + FMA, 8 f32 lanes.
    Avx2,
    /// AVX-512F + FMA, 16 f32 lanes.
    Avx512,
}

/// The best tier this CPU has, unless `HYPRSTREAM_SIMD` (`portable`, `avx2`, `avx512`) asks
/// for a lower one (for benchmarks: a tier the CPU lacks is never used).
pub fn simd_tier() -> SimdTier {
    static TIER: std::sync::OnceLock<SimdTier> = std::sync::OnceLock::new();
    *TIER.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let best = {
            let fma = std::is_x86_feature_detected!("fma");
            if fma && std::is_x86_feature_detected!("avx512f") {
                SimdTier::Avx512
            } else if fma && std::is_x86_feature_detected!("avx2") {
                SimdTier::Avx2
            } else {
                SimdTier::Portable
            }
        };
        #[cfg(not(target_arch = "x86_64"))]
        let best = SimdTier::Portable;
        let asked = match std::env::var("HYPRSTREAM_SIMD").as_deref() {
            Ok("portable") => SimdTier::Portable,
            Ok("avx2") => SimdTier::Avx2,
            _ => SimdTier::Avx512,
        };
        // Tiers are ordered by what they need: never above what the CPU has.
        let rank = |t: SimdTier| t as u8;
        if rank(asked) < rank(best) { asked } else { best }
    })
}

macro_rules! dispatch {
    ($generic:ident, $avx512:ident, $avx2:ident, $($arg:expr),*) => {{
        match simd_tier() {
            // SAFETY: simd_tier() only names tiers whose features the CPU has.
            #[cfg(target_arch = "x86_64")]
            SimdTier::Avx512 => unsafe { $avx512($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            SimdTier::Avx2 => unsafe { $avx2($($arg),*) },
            _ => $generic::<false, 8>($($arg),*),
        }
    }};
}

/// a·b + c, fused where the caller was compiled with FMA (a plain `mul_add` without the
/// target feature would call libm's slow software fma).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The euclidean norm |v|, also where `v · v` in f32 would overflow (components past ≈ 1e19)
/// or underflow (below ≈ 1e-19): cosine ignores scale, so such vectors still have a
/// direction to compare.
pub fn norm(v: &[f32]) -> f32 {
    let squares = dot(v, v);
    if squares.is_normal() && squares < f32::MAX {
        return squares.sqrt();
    }
    // Rare: the exact sum in f64 (its range covers every f32 squared).
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt() as f32
}

/// 1 − cos between a unit query and `row`, summed in f64; 1 for a zero row.
fn cosine_in_f64(unit_query: &[f32], row: &[f32]) -> f32 {
    let (mut qx, mut xx) = (0f64, 0f64);
    for (&q, &x) in unit_query.iter().zip(row) {
        qx += f64::from(q) * f64::from(x);
        xx += f64::from(x) * f64::from(x);
    }
    if xx > 0.0 {
        (1.0 - qx / xx.sqrt()) as f32
    } else {
        1.0
    }
}

/// `v` scaled to unit length (left as it is when zero); returns its norm before.
pub fn normalize(v: &mut [f32]) -> f32 {
    let n = norm(v);
    if n > 0.0 {
        if n.is_finite() {
            v.iter_mut().for_each(|x| *x /= n);
        } else {
            // |v| itself past f32 (components near f32::MAX): divide in f64.
            let n = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
            v.iter_mut().for_each(|x| *x = (f64::from(*x) / n) as f32);
        }
    }
    n
}

/// A distance that overflowed float32 (dot and l2 over values near 1e19 and beyond) pinned to
/// float32's largest value of its sign: it still ranks, the same on every path, where ±∞
/// would be taken for an excluded row (those score +∞). NaN (∞ − ∞ inside a dot product)
/// ranks farthest.
#[inline]
pub fn in_range(distance: f32) -> f32 {
    if distance.is_nan() { f32::MAX } else { distance.clamp(-f32::MAX, f32::MAX) }
}

/// q · x
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dispatch!(dot_generic, dot_avx512, dot_avx2, a, b)
}

/// Σ (a − b)²
#[inline]
pub fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    dispatch!(l2_generic, l2_avx512, l2_avx2, a, b)
}

/// (q · x, x · x) in one pass over x.
#[inline]
fn dot_and_norm(q: &[f32], x: &[f32]) -> (f32, f32) {
    dispatch!(dot_norm_generic, dot_norm_avx512, dot_norm_avx2, q, x)
}

#[inline(always)]
fn dot_generic<const FMA: bool, const LANES: usize>(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] = madd::<FMA>(x[l], y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn l2_generic<const FMA: bool, const LANES: usize>(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            let d = x[l] - y[l];
            acc[l] = madd::<FMA>(d, d, acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn dot_norm_generic<const FMA: bool, const LANES: usize>(q: &[f32], x: &[f32]) -> (f32, f32) {
    debug_assert_eq!(q.len(), x.len());
    let mut qx = [0f32; LANES];
    let mut xx = [0f32; LANES];
    let (qc, xc) = (q.chunks_exact(LANES), x.chunks_exact(LANES));
    let (mut tqx, mut txx) = (0f32, 0f32);
    for (a, b) in qc.remainder().iter().zip(xc.remainder()) {
        tqx += a * b;
        txx += b * b;
    }
    for (a, b) in qc.zip(xc) {
        for l in 0..LANES {
            qx[l] = madd::<FMA>(a[l], b[l], qx[l]);
            xx[l] = madd::<FMA>(b[l], b[l], xx[l]);
        }
    }
    (qx.iter().sum::<f32>() + tqx, xx.iter().sum::<f32>() + txx)
}

/// One instantiation of a generic kernel per instruction set (the body is the same code,
/// compiled with the features enabled so the accumulators become vector registers).
macro_rules! simd_kernels {
    ($($name:ident = $generic:ident::<$lanes:literal>, $features:literal, ($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {$(
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name($($arg: $ty),*) -> $ret {
            $generic::<true, $lanes>($($arg),*)
        }
    )*};
}

simd_kernels! {
    dot_avx2 = dot_generic::<8>, "avx2,fma", (a: &[f32], b: &[f32]) -> f32;
    l2_avx2 = l2_generic::<8>, "avx2,fma", (a: &[f32], b: &[f32]) -> f32;
    dot_norm_avx2 = dot_norm_generic::<8>, "avx2,fma", (q: &[f32], x: &[f32]) -> (f32, f32);
    dot_avx512 = dot_generic::<16>, "avx512f,fma", (a: &[f32], b: &[f32]) -> f32;
    l2_avx512 = l2_generic::<16>, "avx512f,fma", (a: &[f32], b: &[f32]) -> f32;
    dot_norm_avx512 = dot_norm_generic::<16>, "avx512f,fma", (q: &[f32], x: &[f32]) -> (f32, f32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_hold_outside_the_range_of_f32_squares() {
        for scale in [1e-30f32, 1e-20, 1.0, 1e20, 1e30, f32::MAX / 4.0] {
            let mut v = vec![3.0 * scale, 4.0 * scale, 0.0];
            let expected = 5.0 * f64::from(scale);
            assert!((f64::from(norm(&v)) - expected).abs() <= expected * 1e-6 || !expected.is_finite() || norm(&v).is_infinite());
            normalize(&mut v);
            assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6, "scale {scale}: {v:?}");
        }
        let mut zero = vec![0.0f32; 4];
        assert_eq!(normalize(&mut zero), 0.0);
        assert_eq!(zero, vec![0.0; 4]);
        let q = PreparedQuery::new(Metric::Cosine, vec![1e-30, 0.0]);
        assert!(q.distance(&[1.0, 0.0]).abs() < 1e-6);
        // Rows whose squares (and dot product) leave f32's range keep their direction.
        let q = PreparedQuery::new(Metric::Cosine, vec![1.0, 1.0]);
        for row in [[3e38f32, 3e38], [1e-40, 1e-40], [f32::MAX, f32::MAX]] {
            assert!(q.distance(&row).abs() < 1e-6, "{row:?}: {}", q.distance(&row));
        }
        assert!((q.distance(&[3e38, -3e38]) - 1.0).abs() < 1e-6);
        assert_eq!(q.distance(&[0.0, 0.0]), 1.0);
        assert!(PreparedQuery::new(Metric::Cosine, vec![0.0, 0.0]).is_zero_cosine());
    }

    /// Every tier this CPU has (portable, AVX2, AVX-512) against float64, on lengths that
    /// leave tails of every size.
    #[test]
    fn every_instruction_set_tier_matches_float64() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for len in [0, 1, 7, 8, 15, 16, 17, 33, 384, 385] {
            let a: Vec<f32> = (0..len).map(|_| next()).collect();
            let b: Vec<f32> = (0..len).map(|_| next()).collect();
            let dot64: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let l264: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
            let nn64: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
            let close = |got: f32, want: f64| (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0);
            let mut tiers: Vec<(&str, f32, f32, (f32, f32))> =
                vec![("portable", dot_generic::<false, 8>(&a, &b), l2_generic::<false, 8>(&a, &b), dot_norm_generic::<false, 8>(&a, &b))];
            #[cfg(target_arch = "x86_64")]
            {
                let fma = std::is_x86_feature_detected!("fma");
                if fma && std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has the features (checked just above).
                    unsafe { tiers.push(("avx2", dot_avx2(&a, &b), l2_avx2(&a, &b), dot_norm_avx2(&a, &b))) };
                }
                if fma && std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features (checked just above).
                    unsafe { tiers.push(("avx512", dot_avx512(&a, &b), l2_avx512(&a, &b), dot_norm_avx512(&a, &b))) };
                }
            }
            for (tier, dot, l2, (qx, xx)) in tiers {
                assert!(close(dot, dot64) && close(qx, dot64), "{tier} dot, len {len}: {dot} / {qx} vs {dot64}");
                assert!(close(l2, l264), "{tier} l2, len {len}: {l2} vs {l264}");
                assert!(close(xx, nn64), "{tier} norm, len {len}: {xx} vs {nn64}");
            }
        }
    }
}
