//! What a release says about its noise: the variance of each noise distribution and the
//! 95 % margin, the half-width a noisy number stays within around the true one.
//!
//! Why this module exists: a researcher reading a noisy count needs to know how far it
//! may be from the truth, and a steward how much a release hides. These figures depend on
//! the public noise parameters only, never on data, so they are computed in floating
//! point: they are metadata. The draws themselves are exact and integer-only
//! (`super::sampler`).
//!
//! Parameters are `f64`: the sampler's rationals as `num as f64 / den as f64`. A
//! parameter that is zero, negative or NaN means no noise: variance 0 and margin 0.
//! Each margin is the smallest integer `m` with `P(|X| ≤ m) ≥ 0.95` for the discrete
//! distribution itself; the computation is exact up to floating-point rounding where
//! stated, and otherwise a normal approximation that is off by at most one.

use std::f64::consts::PI;

/// The probability that the margins cover.
pub const COVERAGE: f64 = 0.95;

/// The two-sided 95 % quantile of the standard normal distribution.
const Z95: f64 = 1.959_963_984_540_054;

/// From this σ on, [`gaussian_margin95`] uses the normal approximation.
const GAUSSIAN_SUM_UP_TO: f64 = 65_536.0;

/// From this mean on, [`skellam_margin95`] uses the normal approximation.
const SKELLAM_SUM_UP_TO: f64 = 16_777_216.0;

/// Whether a parameter means no noise.
fn no_noise(parameter: f64) -> bool {
    parameter.is_nan() || parameter <= 0.0
}

/// The variance of the discrete Laplace distribution of `scale`:
/// `2q / (1 - q)²` with `q = exp(-1 / scale)` (a little below the continuous `2 scale²`).
pub fn laplace_variance(scale: f64) -> f64 {
    if no_noise(scale) {
        return 0.0;
    }
    let q = (-1.0 / scale).exp();
    let one_minus_q = -(-1.0 / scale).exp_m1();
    2.0 * q / (one_minus_q * one_minus_q)
}

/// The 95 % margin of the discrete Laplace distribution of `scale`: the smallest `m`
/// with `P(|X| > m) = 2 q^(m+1) / (1 + q) ≤ 0.05`, `q = exp(-1 / scale)`. Solved in
/// closed form, then checked against its neighbours (exact up to rounding).
pub fn laplace_margin95(scale: f64) -> u64 {
    if no_noise(scale) {
        return 0;
    }
    let q = (-1.0 / scale).exp();
    // ln P(|X| > m), kept in logarithms so that no term underflows.
    let ln_tail = |m: u64| 2f64.ln() - (m as f64 + 1.0) / scale - q.ln_1p();
    let limit = (1.0 - COVERAGE).ln();
    let guess = -scale * ((1.0 - COVERAGE) / 2.0 * (1.0 + q)).ln() - 1.0;
    let mut m = guess.max(0.0).ceil() as u64;
    while m > 0 && ln_tail(m - 1) <= limit {
        m -= 1;
    }
    while ln_tail(m) > limit && m < u64::MAX {
        m += 1;
    }
    m
}

/// `Σ_{k≥1} k^power e^(-2π² σ² k²)`, the Fourier side of the discrete Gaussian's sums.
fn theta_sum(sigma2: f64, power: i32) -> f64 {
    (1..)
        .map(|k: i32| {
            (
                f64::from(k).powi(power),
                (-2.0 * PI * PI * sigma2 * f64::from(k * k)).exp(),
            )
        })
        .take_while(|&(_, term)| term > 1e-300)
        .map(|(weight, term)| weight * term)
        .sum()
}

/// `Σ_{x≥1} x^power e^(-x²/(2σ²))`, for `σ² < 1` where it converges within 40 terms.
fn direct_sum(sigma2: f64, power: i32) -> f64 {
    (1..)
        .map(|x: i32| {
            let x = f64::from(x);
            (x.powi(power), (-x * x / (2.0 * sigma2)).exp())
        })
        .take_while(|&(_, term)| term > 1e-300)
        .map(|(weight, term)| weight * term)
        .sum()
}

/// `Σ_x exp(-x²/(2σ²))` over all integers: summed directly for `σ² < 1`, otherwise by
/// Poisson summation, `√(2πσ²) (1 + 2 Σ_{k≥1} e^(-2π²σ²k²))`, exact and a few terms long.
fn gaussian_mass(sigma2: f64) -> f64 {
    if sigma2 < 1.0 {
        1.0 + 2.0 * direct_sum(sigma2, 0)
    } else {
        (2.0 * PI * sigma2).sqrt() * (1.0 + 2.0 * theta_sum(sigma2, 0))
    }
}

/// The variance of the discrete Gaussian distribution with parameter `σ²`: summed
/// directly for `σ² < 1`; otherwise by Poisson summation,
/// `σ² - 4π²σ⁴ · 2Σ k² e^(-2π²σ²k²) / (1 + 2Σ e^(-2π²σ²k²))`, which is `σ²` to within
/// `3·10^-7` relative at `σ² = 1` and closer beyond.
pub fn gaussian_variance(sigma2: f64) -> f64 {
    if no_noise(sigma2) {
        return 0.0;
    }
    if sigma2 < 1.0 {
        2.0 * direct_sum(sigma2, 2) / (1.0 + 2.0 * direct_sum(sigma2, 0))
    } else {
        sigma2
            - 4.0 * PI * PI * sigma2 * sigma2 * 2.0 * theta_sum(sigma2, 2)
                / (1.0 + 2.0 * theta_sum(sigma2, 0))
    }
}

/// The 95 % margin of the discrete Gaussian distribution with parameter `σ²`. For
/// `σ < 65536` the probabilities `P(|X| ≤ m)` are summed term by term (exact up to
/// rounding, at most 2·10^5 terms); beyond, the normal approximation with continuity
/// correction `⌈1.96 σ - 1/2⌉`, whose probability differs from the discrete one by about
/// `0.01 / σ²`, far less than one step of `m`: off by one at most, and only when 0.95
/// falls within that distance of a step.
pub fn gaussian_margin95(sigma2: f64) -> u64 {
    if no_noise(sigma2) {
        return 0;
    }
    let sigma = sigma2.sqrt();
    if sigma >= GAUSSIAN_SUM_UP_TO {
        return normal_margin95(sigma);
    }
    let mass = gaussian_mass(sigma2);
    let mut covered = 1.0 / mass;
    let mut m: u64 = 0;
    while covered < COVERAGE {
        m += 1;
        let x = m as f64;
        covered += 2.0 * (-x * x / (2.0 * sigma2)).exp() / mass;
    }
    m
}

/// `⌈1.96 σ - 1/2⌉`: the 95 % margin of a normal distribution of standard deviation `σ`
/// rounded to integers (continuity correction).
fn normal_margin95(sigma: f64) -> u64 {
    (Z95 * sigma - 0.5).max(0.0).ceil() as u64
}

/// The variance of the Skellam distribution with mean `μ` per side: `2μ`.
pub fn skellam_variance(mean: f64) -> f64 {
    if no_noise(mean) { 0.0 } else { 2.0 * mean }
}

/// The 95 % margin of the Skellam distribution `Poisson(μ) - Poisson(μ)`.
///
/// Its probabilities are `P(k) = e^(-2μ) I_|k|(2μ)` (modified Bessel functions), and only
/// their ratios are needed: with `x = 2μ`, `r_k = I_k(x) / I_(k-1)(x)` satisfies
/// `r_k = x / (2k + x r_(k+1))` (from `I_(k-1) - I_(k+1) = (2k/x) I_k`), evaluated
/// backwards from `r_K = 0` far in the tail (`K = 12√x + 40`, where the weights are below
/// `e^-72`), a stable recurrence with no Bessel function and no overflow. The weights
/// `I_k / I_0 = Π r_j` then give `P(|X| ≤ m)` up to rounding, for means below 2^24; beyond,
/// the normal approximation `⌈1.96 √(2μ) - 1/2⌉` (excess kurtosis `1 / (2μ)`, off by one
/// at most).
pub fn skellam_margin95(mean: f64) -> u64 {
    if no_noise(mean) {
        return 0;
    }
    if mean >= SKELLAM_SUM_UP_TO {
        return normal_margin95((2.0 * mean).sqrt());
    }
    let x = 2.0 * mean;
    let top = (12.0 * x.sqrt()).ceil() as usize + 40;
    let mut ratios = vec![0.0; top + 1];
    let mut next = 0.0;
    for k in (1..=top).rev() {
        next = x / (2.0 * k as f64 + x * next);
        ratios[k] = next;
    }
    let mut weights = Vec::with_capacity(top + 1);
    let mut weight = 1.0;
    weights.push(weight);
    for &ratio in &ratios[1..] {
        weight *= ratio;
        weights.push(weight);
    }
    let mass = 1.0 + 2.0 * weights[1..].iter().sum::<f64>();
    let mut covered = 1.0 / mass;
    let mut m = 0;
    while covered < COVERAGE && m < top {
        m += 1;
        covered += 2.0 * weights[m] / mass;
    }
    m as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest `m` with `Σ_{|x| ≤ m} pmf(x) ≥ 0.95`, by brute force.
    fn brute_margin(pmf: impl Fn(i64) -> f64) -> u64 {
        let mut covered = pmf(0);
        let mut m = 0;
        while covered < COVERAGE {
            m += 1;
            covered += pmf(m) + pmf(-m);
        }
        m as u64
    }

    fn poisson_pmf(mean: f64, k: i64) -> f64 {
        let ln_factorial: f64 = (1..=k).map(|j| (j as f64).ln()).sum();
        (-mean + k as f64 * mean.ln() - ln_factorial).exp()
    }

    #[test]
    fn laplace_margins_match_the_summed_pmf() {
        for scale in [0.1, 0.5, 1.0, 2.0, 7.0 / 3.0, 6.0, 50.0, 900.0] {
            let q = (-1.0f64 / scale).exp();
            let pmf = |x: i64| (1.0 - q) / (1.0 + q) * q.powi(x.abs() as i32);
            assert_eq!(laplace_margin95(scale), brute_margin(pmf), "scale {scale}");
            let range = (60.0 * scale) as i64 + 100;
            let variance: f64 = (-range..=range).map(|x| (x * x) as f64 * pmf(x)).sum();
            assert!(
                (laplace_variance(scale) - variance).abs() < 1e-9 * variance.max(1.0),
                "scale {scale}: {} vs {variance}",
                laplace_variance(scale)
            );
        }
        assert_eq!(laplace_margin95(0.1), 0);
        // Large scales: about scale · ln 20 ≈ 3 scale.
        let m = laplace_margin95(1e12) as f64;
        assert!((m / 1e12 - 20f64.ln()).abs() < 1e-6, "{m}");
    }

    #[test]
    fn gaussian_margins_and_variances_match_the_summed_pmf() {
        for sigma2 in [
            0.01,
            0.25,
            0.5,
            0.99,
            1.0,
            1.01,
            4.0,
            10.0 / 3.0,
            32.0,
            100.0,
            12_345.6,
        ] {
            let sigma = f64::sqrt(sigma2);
            let range = (40.0 * sigma) as i64 + 40;
            let weight = |x: i64| (-((x * x) as f64) / (2.0 * sigma2)).exp();
            let mass: f64 = (-range..=range).map(weight).sum();
            assert!(
                (gaussian_mass(sigma2) - mass).abs() < 1e-12 * mass,
                "σ² {sigma2}"
            );
            let variance: f64 = (-range..=range)
                .map(|x| (x * x) as f64 * weight(x))
                .sum::<f64>()
                / mass;
            assert!(
                (gaussian_variance(sigma2) - variance).abs() < 1e-10 * variance.max(1e-3),
                "σ² {sigma2}: {} vs {variance}",
                gaussian_variance(sigma2)
            );
            assert_eq!(
                gaussian_margin95(sigma2),
                brute_margin(|x| weight(x) / mass),
                "σ² {sigma2}"
            );
        }
        // Close to σ² from σ = 1 on.
        assert!(1.0 - gaussian_variance(1.0) < 3e-7);
        assert!(1.0 - gaussian_variance(1.0) > 0.0);
        assert_eq!(gaussian_margin95(1e-6), 0);
    }

    #[test]
    fn gaussian_normal_approximation_joins_the_sum() {
        // Just below the switch the sum, at it the approximation: equal, or one apart.
        for sigma in [1000.0, 20_000.0, GAUSSIAN_SUM_UP_TO - 1.0] {
            let summed = gaussian_margin95(sigma * sigma);
            let approximated = normal_margin95(sigma);
            assert!(
                summed.abs_diff(approximated) <= 1,
                "σ {sigma}: {summed} vs {approximated}"
            );
        }
        let sigma = GAUSSIAN_SUM_UP_TO * 4.0;
        assert_eq!(gaussian_margin95(sigma * sigma), normal_margin95(sigma));
    }

    #[test]
    fn skellam_margins_match_the_convolved_poisson() {
        for mean in [0.01f64, 0.5, 2.5, 12.0, 150.5, 900.0] {
            let top = (mean + 15.0 * mean.sqrt()) as i64 + 30;
            let poisson: Vec<f64> = (0..=top).map(|k| poisson_pmf(mean, k)).collect();
            let pmf = |d: i64| -> f64 {
                let d = d.unsigned_abs() as usize;
                poisson
                    .iter()
                    .zip(poisson.iter().skip(d))
                    .map(|(p, q)| p * q)
                    .sum()
            };
            assert_eq!(skellam_margin95(mean), brute_margin(pmf), "μ {mean}");
        }
        assert_eq!(skellam_margin95(0.0), 0);
        assert_eq!(skellam_variance(2.5), 5.0);
        // The recurrence and the approximation agree on large means.
        let mean = SKELLAM_SUM_UP_TO / 2.0;
        let summed = skellam_margin95(mean);
        let approximated = normal_margin95((2.0 * mean).sqrt());
        assert!(
            summed.abs_diff(approximated) <= 1,
            "{summed} vs {approximated}"
        );
    }

    #[test]
    fn no_noise_has_no_margin() {
        for parameter in [0.0, -1.0, f64::NAN] {
            assert_eq!(laplace_margin95(parameter), 0);
            assert_eq!(gaussian_margin95(parameter), 0);
            assert_eq!(skellam_margin95(parameter), 0);
            assert_eq!(laplace_variance(parameter), 0.0);
            assert_eq!(gaussian_variance(parameter), 0.0);
            assert_eq!(skellam_variance(parameter), 0.0);
        }
    }
}
