//! Matrix products and activations. Every product in the networks goes
//! through [`gemm`] (matrixmultiply's packed kernels, dispatched at run
//! time to AVX2/FMA where the CPU has them); the activations are
//! branch-free polynomials that LLVM vectorises, accurate to a few ulps.

/// `c (m×n) = a·b + beta·c`, all row-major: `a` is m×k (stored k×m and
/// used transposed when `ta`), `b` is k×n (stored n×k when `tb`).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    beta: f32,
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = if ta { (1, m) } else { (k, 1) };
    let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
    // SAFETY: the assertion above keeps every index the strides reach
    // inside the three slices; `c` is borrowed mutably and apart from `a`
    // and `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `e^x` (Cephes' polynomial after reduction by powers of two; relative
/// error < 2e-7), clamped to the finite range of `f32`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    // 1 - 2/(e^{2x} + 1): exact at both ends, no cancellation for large |x|.
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// Adds `bias` to every row of `rows` (row length = `bias.len()`).
pub fn add_rows(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Adds the column sums of `rows` (row length = `out.len()`) to `out`.
pub fn add_col_sums(rows: &[f32], out: &mut [f32]) {
    for row in rows.chunks_exact(out.len()) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_the_library_functions() {
        let mut worst = 0f32;
        let mut x = -30.0f32;
        while x < 30.0 {
            worst = worst.max(((exp(x) - x.exp()) / x.exp()).abs());
            assert!((tanh(x) - x.tanh()).abs() < 2e-7, "tanh({x})");
            assert!((sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 2e-7);
            x += 0.0137;
        }
        assert!(worst < 4e-7, "exp relative error {worst}");
        assert_eq!(exp(-1000.0), (-87f32).exp());
        assert!(exp(1000.0).is_finite());
        assert_eq!(tanh(100.0), 1.0);
        assert_eq!(tanh(-100.0), -1.0);
    }

    #[test]
    fn gemm_handles_transposes() {
        // a = [[1,2,3],[4,5,6]] (2×3), b = [[1,0],[0,1],[1,1]] (3×2)
        let a = [1., 2., 3., 4., 5., 6.];
        let at = [1., 4., 2., 5., 3., 6.];
        let b = [1., 0., 0., 1., 1., 1.];
        let bt = [1., 0., 1., 0., 1., 1.];
        let want = [4., 5., 10., 11.];
        for (aa, ta) in [(&a, false), (&at, true)] {
            for (bb, tb) in [(&b, false), (&bt, true)] {
                let mut c = [1.0f32; 4];
                gemm(2, 3, 2, aa, ta, bb, tb, 0.0, &mut c);
                assert_eq!(c, want);
                gemm(2, 3, 2, aa, ta, bb, tb, 1.0, &mut c);
                assert_eq!(c, want.map(|v| 2.0 * v));
            }
        }
    }
}
