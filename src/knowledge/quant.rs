//! A one-byte copy of every chunk vector with a bound on its error, so the exact vector search
//! can read a quarter of the bytes and still return exactly what a full scan returns.
//!
//! Each vector `v` is kept as `s·a + δ`: codes `a` in −127..=127, one scale `s = max|vᵢ| / 127`
//! and a rounding error `|δᵢ| ≤ s/2`. A query `q` is coded the same way (`t·b + ε`). Then
//!
//! ```text
//! v·q = s·t·(a·b) + s·(a·ε) + δ·q
//! |v·q − s·t·(a·b)| ≤ (t/2)·s‖a‖₁ + (s/2)·‖q‖₁
//! ```
//!
//! so the integer dot product gives an estimate and a bound per chunk. A chunk whose estimate
//! plus bound is below the `n`-th best estimate minus bound cannot be among the `n` best; the
//! others are scored again from their float vectors.

use super::embed::DIM;

/// Float rounding in the estimate and in the exact score, on top of the coding error.
const SLACK: f32 = 1e-5;

/// The coded vectors of an index, by slot.
#[derive(Debug, Default)]
pub struct Codes {
    codes: Vec<i8>,
    /// Per slot: `s` and `s·‖a‖₁`.
    scale: Vec<(f32, f32)>,
}

/// A query vector, coded.
pub struct CodedQuery {
    codes: [i8; DIM],
    scale: f32,
    l1: f32,
}

fn code(v: &[f32; DIM]) -> ([i8; DIM], f32) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return ([0; DIM], 0.0);
    }
    let scale = max / 127.0;
    (
        std::array::from_fn(|i| (v[i] / scale).round().clamp(-127.0, 127.0) as i8),
        scale,
    )
}

impl CodedQuery {
    pub fn new(q: &[f32; DIM]) -> CodedQuery {
        let (codes, scale) = code(q);
        CodedQuery {
            codes,
            scale,
            l1: q.iter().map(|x| x.abs()).sum(),
        }
    }
}

impl Codes {
    /// Codes `v` as the vector of `slot` (growing the store when `slot` is new).
    pub fn set(&mut self, slot: usize, v: &[f32; DIM]) {
        if self.scale.len() <= slot {
            self.scale.resize(slot + 1, (0.0, 0.0));
            self.codes.resize((slot + 1) * DIM, 0);
        }
        let (codes, scale) = code(v);
        let l1: i32 = codes.iter().map(|c| (*c as i32).abs()).sum();
        self.codes[slot * DIM..(slot + 1) * DIM].copy_from_slice(&codes);
        self.scale[slot] = (scale, scale * l1 as f32);
    }

    /// The estimate of `slot`'s dot product with `q`, and how far the true one can be from it.
    #[cfg(test)]
    pub fn estimate(&self, slot: usize, q: &CodedQuery) -> (f32, f32) {
        self.estimate_with(slot, q, dot)
    }

    #[inline(always)]
    fn estimate_with(
        &self,
        slot: usize,
        q: &CodedQuery,
        dot: impl Fn(&[i8; DIM], &[i8; DIM]) -> i32,
    ) -> (f32, f32) {
        let codes: &[i8; DIM] = self.codes[slot * DIM..(slot + 1) * DIM]
            .try_into()
            .expect("a slot holds one vector");
        let (s, s_l1) = self.scale[slot];
        let estimate = s * q.scale * dot(codes, &q.codes) as f32;
        let bound = 0.5 * (q.scale * s_l1 + s * q.l1) + SLACK;
        (estimate, bound)
    }
}

/// Integer dot product, in independent lanes so the compiler can use SIMD.
#[inline(always)]
fn dot(a: &[i8; DIM], b: &[i8; DIM]) -> i32 {
    const LANES: usize = 16;
    let mut acc = [0i32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += x[i] as i32 * y[i] as i32;
        }
    }
    acc.iter().sum()
}

/// [`dot`] with AVX2: 16 bytes widened to 16-bit lanes, multiplied and summed in pairs into
/// 32-bit lanes (`vpmaddwd`), 24 steps for 384 dimensions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2(a: &[i8; DIM], b: &[i8; DIM]) -> i32 {
    use std::arch::x86_64::*;
    const _: () = assert!(DIM.is_multiple_of(16));
    let mut acc = _mm256_setzero_si256();
    for i in (0..DIM).step_by(16) {
        // SAFETY: i + 16 <= DIM, so both unaligned 16-byte loads read inside the arrays.
        let (x, y) = unsafe {
            (
                _mm_loadu_si128(a.as_ptr().add(i).cast()),
                _mm_loadu_si128(b.as_ptr().add(i).cast()),
            )
        };
        let products = _mm256_madd_epi16(_mm256_cvtepi8_epi16(x), _mm256_cvtepi8_epi16(y));
        acc = _mm256_add_epi32(acc, products);
    }
    let s = _mm_add_epi32(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256::<1>(acc),
    );
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// The slots among `slots` that may be among the `n` best by dot product with `q`: every slot
/// whose estimate plus bound reaches the `n`-th best estimate minus bound.
pub fn candidates(
    codes: &Codes,
    q: &CodedQuery,
    slots: impl Iterator<Item = usize>,
    n: usize,
) -> Vec<usize> {
    // The build targets baseline x86-64 (SSE2); the scan is compiled a second time for AVX2
    // and picked at run time.
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { candidates_avx2(codes, q, slots, n) };
    }
    candidates_with(codes, q, slots, n, dot)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn candidates_avx2(
    codes: &Codes,
    q: &CodedQuery,
    slots: impl Iterator<Item = usize>,
    n: usize,
) -> Vec<usize> {
    candidates_with(codes, q, slots, n, |a, b| dot_avx2(a, b))
}

#[inline(always)]
fn candidates_with(
    codes: &Codes,
    q: &CodedQuery,
    slots: impl Iterator<Item = usize>,
    n: usize,
    dot: impl Fn(&[i8; DIM], &[i8; DIM]) -> i32,
) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let estimates: Vec<(usize, f32, f32)> = slots
        .map(|slot| {
            let (e, b) = codes.estimate_with(slot, q, &dot);
            (slot, e, b)
        })
        .collect();
    if estimates.len() <= n {
        return estimates.into_iter().map(|(s, ..)| s).collect();
    }
    let mut lows: Vec<f32> = estimates.iter().map(|(_, e, b)| e - b).collect();
    let (_, floor, _) = lows.select_nth_unstable_by(n - 1, |a, b| b.total_cmp(a));
    let floor = *floor;
    estimates
        .into_iter()
        .filter(|(_, e, b)| e + b >= floor)
        .map(|(s, ..)| s)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knowledge::embed::cosine;

    /// Deterministic unit vectors of varied shape (some with one dominant component).
    fn unit(seed: u64) -> [f32; DIM] {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v: [f32; DIM] = std::array::from_fn(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2001) as f32 / 1000.0 - 1.0
        });
        if seed.is_multiple_of(5) {
            v[(seed % DIM as u64) as usize] += 20.0;
        }
        let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.map(|a| a / norm)
    }

    #[test]
    fn every_dot_product_agrees() {
        let a: [i8; DIM] = std::array::from_fn(|i| (((i * 37) % 255) as i32 - 127) as i8);
        let b: [i8; DIM] = std::array::from_fn(|i| (127 - ((i * 11) % 255) as i32) as i8);
        let plain: i32 = a.iter().zip(&b).map(|(x, y)| *x as i32 * *y as i32).sum();
        assert_eq!(dot(&a, &b), plain);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2.
            assert_eq!(unsafe { dot_avx2(&a, &b) }, plain);
            assert_eq!(
                unsafe { dot_avx2(&[-127; DIM], &[-127; DIM]) },
                127 * 127 * DIM as i32
            );
        }
    }

    #[test]
    fn the_bound_holds_for_every_pair() {
        let mut codes = Codes::default();
        let vs: Vec<_> = (0..300).map(unit).collect();
        for (slot, v) in vs.iter().enumerate() {
            codes.set(slot, v);
        }
        for seed in 1000..1040 {
            let q = unit(seed);
            let cq = CodedQuery::new(&q);
            for (slot, v) in vs.iter().enumerate() {
                let (e, b) = codes.estimate(slot, &cq);
                let exact = cosine(v, &q);
                assert!((exact - e).abs() <= b, "slot {slot}: {exact} vs {e} ± {b}");
                // The bound is useful: far tighter than the range of cosines.
                assert!(b < 0.1, "{b}");
            }
        }
    }

    #[test]
    fn the_candidates_hold_the_exact_best_n() {
        let mut codes = Codes::default();
        // Near-duplicates make the ranking hinge on small differences.
        let vs: Vec<_> = (0..2000)
            .map(|i| {
                let mut v = unit(i / 4);
                v[(i % DIM as u64) as usize] += 0.001 * (i % 4) as f32;
                v
            })
            .collect();
        for (slot, v) in vs.iter().enumerate() {
            codes.set(slot, v);
        }
        for seed in [7u64, 8, 9, 500, 501] {
            let q = unit(seed);
            let cq = CodedQuery::new(&q);
            for n in [1, 10, 50] {
                let found = candidates(&codes, &cq, 0..vs.len(), n);
                let mut exact: Vec<(usize, f32)> = vs
                    .iter()
                    .enumerate()
                    .map(|(s, v)| (s, cosine(v, &q)))
                    .collect();
                exact.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                for (slot, score) in &exact[..n] {
                    assert!(
                        found.contains(slot),
                        "n {n}: best slot {slot} ({score}) missing"
                    );
                }
                // Few are scored again, unless the query's codes are coarse: one dominant
                // component (seed 500) leaves the others few levels, and the bound widens.
                if !seed.is_multiple_of(5) {
                    assert!(found.len() <= vs.len() / 5, "{} candidates", found.len());
                }
            }
        }
        assert!(candidates(&codes, &CodedQuery::new(&unit(1)), 0..3, 5).len() == 3);
        assert!(candidates(&codes, &CodedQuery::new(&unit(1)), 0..3, 0).is_empty());
    }
}
