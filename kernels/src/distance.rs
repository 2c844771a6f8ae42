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
    pub fn new(metric: Metric, vector: Vec<f32>) -> Self {
        let norm = dot(&vector, &vector).sqrt();
        PreparedQuery { metric, vector, norm }
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
            Metric::Dot => -dot(&self.vector, row),
            Metric::L2 => squared_l2(&self.vector, row),
            Metric::Cosine => {
                let (qx, xx) = dot_and_norm(&self.vector, row);
                let denom = self.norm * xx.sqrt();
                if denom > 0.0 {
                    1.0 - qx / denom
                } else {
                    1.0
                }
            }
        }
    }
}

macro_rules! dispatch {
    ($generic:ident, $avx2:ident, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features $avx2 is compiled for.
                return unsafe { $avx2($($arg),*) };
            }
        }
        $generic::<false>($($arg),*)
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

/// q · x
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dispatch!(dot_generic, dot_avx2, a, b)
}

/// Σ (a − b)²
#[inline]
pub fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    dispatch!(l2_generic, l2_avx2, a, b)
}

/// (q · x, x · x) in one pass over x.
#[inline]
fn dot_and_norm(q: &[f32], x: &[f32]) -> (f32, f32) {
    dispatch!(dot_norm_generic, dot_norm_avx2, q, x)
}

const LANES: usize = 8;

#[inline(always)]
fn dot_generic<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
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
fn l2_generic<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
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
fn dot_norm_generic<const FMA: bool>(q: &[f32], x: &[f32]) -> (f32, f32) {
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic::<true>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn l2_avx2(a: &[f32], b: &[f32]) -> f32 {
    l2_generic::<true>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_norm_avx2(q: &[f32], x: &[f32]) -> (f32, f32) {
    dot_norm_generic::<true>(q, x)
}
