//! The Walsh-Hadamard transform in Sylvester (natural) order: `H_1 = [1]`, `H_2n =
//! [[H_n, H_n], [H_n, -H_n]]`, so `H[i][j] = (-1)^popcount(i & j)`. This is the order of
//! the `fast_hadamard_transform` package the indexer uses. Scaled by `n^-0.5` it is
//! orthonormal and its own inverse.

/// Entry `(i, j)` of the n x n Sylvester Hadamard matrix: `+1` or `-1`.
pub fn entry(i: usize, j: usize) -> f32 {
    if (i & j).count_ones().is_multiple_of(2) {
        1.0
    } else {
        -1.0
    }
}

/// Unnormalized in-place fast transform. Panics unless `x.len()` is a power of two.
pub fn fwht(x: &mut [f64]) {
    let n = x.len();
    assert!(
        n.is_power_of_two(),
        "Hadamard length must be a power of two"
    );
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
}

/// `H x * n^-0.5`, computed in f64 (each output is a sum of +-inputs, exact there for
/// inputs of a shared binade range, then scaled) and rounded to f32 once.
pub fn transform_scaled(x: &[f32]) -> Vec<f32> {
    let mut y: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    fwht(&mut y);
    let s = (x.len() as f64).powf(-0.5);
    y.iter().map(|v| (v * s) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_matrix_definition() {
        let n = 16;
        let x: Vec<f32> = (0..n).map(|i| (i * i) as f32 - 3.0).collect();
        let y = transform_scaled(&x);
        for (i, yi) in y.iter().enumerate() {
            let want: f64 = (0..n).map(|j| f64::from(entry(i, j) * x[j])).sum::<f64>() / 4.0;
            assert!((f64::from(*yi) - want).abs() < 1e-5);
        }
    }
}
