//! A site's differential-privacy policy (`[privacy]` in node.toml) and the noise it
//! implies for one question.
//!
//! The question's epsilon is split evenly over what it releases per group: each released
//! partial column and the hidden patient count that k applies to. Column `j` gets
//! `ε / (J + 1)` and its noise is scaled to its sensitivity (how far one patient moves the
//! column over all groups, after bounding, see `ern_queries::bounding`):
//!
//! - discrete Laplace with scale `Δ (J + 1) / ε` gives each column `ε / (J + 1)`-DP, the
//!   question ε-DP (basic composition, L1 sensitivity over the groups);
//! - discrete Gaussian with `σ² = Δ² (J + 1) / ε²` gives each column
//!   `ρ = ε² / (2 (J + 1))`-zCDP, the question `ε² / 2`-zCDP, the zCDP that ε-DP implies
//!   (Canonne–Kamath–Steinke 2020; with L1 ≥ L2 sensitivity this only overstates it).
//!   Budgets charge the ε either way, so a Gaussian ledger overstates the loss.
//!
//! Under secure aggregation each of `n` participants adds a Skellam share of mean
//! `μ / n` ([`ColumnNoise::share`]); the network total carries Skellam noise of mean `μ`,
//! variance `2μ` equal to the mechanism's (`2 · scale²` for the Laplace one, `σ²` for the
//! Gaussian one). Skellam noise of that variance gives Rényi DP close to the Gaussian
//! mechanism's (Agarwal, Kairouz, Liu 2021, Theorem 3.5), not pure ε-DP: documented as a
//! bound in the README. A coordinator that colludes with other participants learns their
//! shares, and a site's own protection is then only the shares of the honest ones.
//!
//! Arithmetic is on rationals: ε is kept in millionths ([`Epsilon`]), and a parameter
//! too large for the sampler's 64-bit rationals is rounded up (more noise, never less).

use std::sync::Arc;

use ern_queries::{Bounding, Sensitivity};

use super::sampler::{self, Rational, SamplerError};
use super::secret::NoiseSecret;

/// Privacy loss in millionths of epsilon: budgets add up exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epsilon(u64);

impl Epsilon {
    /// Epsilon from millionths.
    pub const fn from_micro(micro: u64) -> Self {
        Epsilon(micro)
    }

    /// Epsilon from a decimal (as written in node.toml), rounded to millionths; `None`
    /// for a negative, non-finite or absurdly large value.
    pub fn from_decimal(value: f64) -> Option<Self> {
        if !value.is_finite() || !(0.0..=1_000_000.0).contains(&value) {
            return None;
        }
        Some(Epsilon((value * 1e6).round() as u64))
    }

    /// In millionths.
    pub const fn micro(self) -> u64 {
        self.0
    }

    /// `self + other`, saturating.
    pub const fn plus(self, other: Epsilon) -> Epsilon {
        Epsilon(self.0.saturating_add(other.0))
    }

    /// `self - other`, at least zero.
    pub const fn minus(self, other: Epsilon) -> Epsilon {
        Epsilon(self.0.saturating_sub(other.0))
    }
}

impl std::fmt::Display for Epsilon {
    /// As a decimal without trailing zeros: `0.5`, `3`, `0.000001`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whole = self.0 / 1_000_000;
        let fraction = self.0 % 1_000_000;
        if fraction == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{fraction:06}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// The noise distribution a site draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// Discrete Laplace (pure ε-DP).
    DiscreteLaplace,
    /// Discrete Gaussian (zCDP).
    DiscreteGaussian,
}

impl Mechanism {
    /// The name in node.toml, the audit log and results.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::DiscreteLaplace => "discrete-laplace",
            Mechanism::DiscreteGaussian => "discrete-gaussian",
        }
    }

    /// The mechanism of a node.toml name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "discrete-laplace" => Some(Mechanism::DiscreteLaplace),
            "discrete-gaussian" => Some(Mechanism::DiscreteGaussian),
            _ => None,
        }
    }
}

/// A site's differential-privacy policy: off by default.
#[derive(Clone)]
pub struct PrivacyPolicy {
    /// Whether the node noises what it releases and keeps budgets.
    pub enabled: bool,
    /// The noise distribution.
    pub mechanism: Mechanism,
    /// Epsilon charged per question.
    pub epsilon: Epsilon,
    /// Epsilon a study may spend at this site.
    pub budget_per_study: Epsilon,
    /// Contribution bounds.
    pub bounding: Bounding,
    /// The node's noise secret (required when enabled).
    pub secret: Option<Arc<NoiseSecret>>,
}

impl std::fmt::Debug for PrivacyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivacyPolicy")
            .field("enabled", &self.enabled)
            .field("mechanism", &self.mechanism)
            .field("epsilon", &self.epsilon.to_string())
            .field("budget_per_study", &self.budget_per_study.to_string())
            .field("bounding", &self.bounding)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl PrivacyPolicy {
    /// What a secure round's statement declares of this policy: the mechanism, epsilon
    /// in millionths and the bounds (every participant must declare the same).
    pub fn declaration(&self) -> String {
        format!(
            "{} eps={} groups={} rows={}",
            self.mechanism.name(),
            self.epsilon.micro(),
            self.bounding.max_groups_per_patient,
            self.bounding.max_rows_per_patient
        )
    }

    /// What noise this policy draws, as a tag (hex): the secret (through a seed of its
    /// own, so the tag reveals nothing of it), the mechanism, epsilon and the bounds. The
    /// ledger lets a question be repeated for free only under the same tag.
    pub fn noise_tag(&self) -> String {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"ern-noise-tag-v1\0");
        if let Some(secret) = &self.secret {
            context.update(&secret.seed("", "", "ledger-noise-tag"));
        }
        context.update(
            format!(
                "\0{}\0{}\0{}\0{}",
                self.mechanism.name(),
                self.epsilon.micro(),
                self.bounding.max_groups_per_patient,
                self.bounding.max_rows_per_patient
            )
            .as_bytes(),
        );
        hex::encode(&context.finish().as_ref()[..16])
    }
}

impl Default for PrivacyPolicy {
    /// Off; once on: discrete Laplace, ε = 0.5 per question, 5 per study, one group and
    /// one row per patient.
    fn default() -> Self {
        PrivacyPolicy {
            enabled: false,
            mechanism: Mechanism::DiscreteLaplace,
            epsilon: Epsilon::from_micro(500_000),
            budget_per_study: Epsilon::from_micro(5_000_000),
            bounding: Bounding::default(),
            secret: None,
        }
    }
}

/// The noise of one released column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnNoise {
    /// The distribution.
    pub mechanism: Mechanism,
    /// The Laplace scale, or the Gaussian σ².
    pub parameter: Rational,
}

/// Errors of calibrating or drawing noise.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// The sampler refused a parameter.
    #[error("noise sampler: {0}")]
    Sampler(#[from] SamplerError),
    /// The policy's epsilon is zero.
    #[error("epsilon per question must be more than zero")]
    ZeroEpsilon,
    /// A sensitivity too large to calibrate noise for.
    #[error("a released value's sensitivity is too large to calibrate noise for")]
    TooLarge,
}

/// The largest numerator handed to the sampler (its own limits are higher).
const NUMERATOR_LIMIT: u128 = 1 << 62;

/// The largest denominator handed to the sampler.
const DENOMINATOR_LIMIT: u128 = 1 << 40;

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `num / den` as a [`Rational`] at least as large, rounded up where it must shrink to
/// fit (more noise, never less): `⌈num / 2⌉ / ⌊den / 2⌋ ≥ num / den`. An error where the
/// value itself is too large.
fn at_least(num: u128, den: u128) -> Result<Rational, NoiseError> {
    let divisor = gcd(num, den).max(1);
    let (mut num, mut den) = (num / divisor, den / divisor);
    while num > NUMERATOR_LIMIT || den > DENOMINATOR_LIMIT {
        if den < 2 {
            return Err(NoiseError::TooLarge);
        }
        num = num.div_ceil(2);
        den /= 2;
    }
    Ok(Rational::new(num as u64, den as u64)?)
}

impl ColumnNoise {
    /// The noise of a column with sensitivity `delta` given `share` = `micro / parts`
    /// millionths of epsilon.
    fn calibrate(
        mechanism: Mechanism,
        delta: u64,
        epsilon_micro: u64,
        parts: u64,
    ) -> Result<Self, NoiseError> {
        let delta = u128::from(delta.max(1));
        let parts = u128::from(parts);
        let epsilon = u128::from(epsilon_micro);
        let parameter = match mechanism {
            // scale = Δ (J+1) / ε = Δ (J+1) 10^6 / micro
            Mechanism::DiscreteLaplace => at_least(delta * parts * 1_000_000, epsilon)?,
            // σ² = Δ² (J+1) / ε² = Δ² (J+1) 10^12 / micro²
            Mechanism::DiscreteGaussian => at_least(
                delta
                    .checked_mul(delta)
                    .and_then(|d| d.checked_mul(parts))
                    .and_then(|d| d.checked_mul(1_000_000_000_000))
                    .ok_or(NoiseError::TooLarge)?,
                epsilon * epsilon,
            )?,
        };
        Ok(ColumnNoise {
            mechanism,
            parameter,
        })
    }

    /// One draw.
    pub fn draw<R: rand::RngCore>(&self, rng: &mut R) -> Result<i64, NoiseError> {
        Ok(match self.mechanism {
            Mechanism::DiscreteLaplace => sampler::discrete_laplace(rng, self.parameter)?,
            Mechanism::DiscreteGaussian => sampler::discrete_gaussian(rng, self.parameter)?,
        })
    }

    /// The Skellam mean `μ` whose variance `2μ` is this noise's: `scale²` for the
    /// Laplace mechanism (its continuous variance `2 scale²`, within 1/6 of the discrete
    /// one), `σ² / 2` for the Gaussian.
    fn skellam_mean(&self) -> (u128, u128) {
        let (num, den) = (
            u128::from(self.parameter.num()),
            u128::from(self.parameter.den()),
        );
        match self.mechanism {
            Mechanism::DiscreteLaplace => (num * num, den * den),
            Mechanism::DiscreteGaussian => (num, 2 * den),
        }
    }

    /// One participant's share of the noise of a network total over `participants`
    /// sites: Skellam of mean `μ / participants`; the shares of all participants sum to
    /// Skellam of mean `μ` exactly.
    pub fn share<R: rand::RngCore>(
        &self,
        rng: &mut R,
        participants: usize,
    ) -> Result<i64, NoiseError> {
        let (num, den) = self.skellam_mean();
        let mean = at_least(num, den.saturating_mul(participants.max(1) as u128))?;
        Ok(sampler::skellam(rng, mean)?)
    }

    /// The variance of one draw (floats: metadata only).
    pub fn variance(&self) -> f64 {
        let value = self.parameter.num() as f64 / self.parameter.den() as f64;
        match self.mechanism {
            Mechanism::DiscreteLaplace => super::margin::laplace_variance(value),
            Mechanism::DiscreteGaussian => super::margin::gaussian_variance(value),
        }
    }

    /// The variance of a Skellam share over `participants` sites.
    pub fn share_variance(&self, participants: usize) -> f64 {
        let (num, den) = self.skellam_mean();
        2.0 * num as f64 / den as f64 / participants.max(1) as f64
    }

    /// The half-width that one draw stays within with probability 95 %.
    pub fn margin95(&self) -> u64 {
        let value = self.parameter.num() as f64 / self.parameter.den() as f64;
        match self.mechanism {
            Mechanism::DiscreteLaplace => super::margin::laplace_margin95(value),
            Mechanism::DiscreteGaussian => super::margin::gaussian_margin95(value),
        }
    }

    /// The smallest `t` with `P(X ≥ t) ≤ delta` for one draw `X` (floats: a threshold,
    /// not a draw): `s · ln(1 / (δ (1 + q)))` for the discrete Laplace of scale `s`
    /// (`P(X ≥ t) = q^t / (1 + q)`, `q = e^(-1/s)`), and `σ √(2 ln(1/δ)) + 1` for the
    /// discrete Gaussian (its tail beyond `t` is below the normal one beyond `t - 1`).
    pub fn tail_bound(&self, delta: f64) -> u64 {
        let value = self.parameter.num() as f64 / self.parameter.den() as f64;
        let bound = match self.mechanism {
            Mechanism::DiscreteLaplace => {
                let q = (-1.0 / value).exp();
                value * (1.0 / (delta * (1.0 + q))).ln()
            }
            Mechanism::DiscreteGaussian => value.sqrt() * (2.0 * (1.0 / delta).ln()).sqrt() + 1.0,
        };
        bound.max(0.0).ceil() as u64
    }

    /// The Laplace scale or the Gaussian σ (floats: metadata only).
    pub fn scale(&self) -> f64 {
        let value = self.parameter.num() as f64 / self.parameter.den() as f64;
        match self.mechanism {
            Mechanism::DiscreteLaplace => value,
            Mechanism::DiscreteGaussian => value.sqrt(),
        }
    }
}

/// The noise of every number a question releases at a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuestionNoise {
    /// One per released partial column `__p0…`.
    pub partials: Vec<ColumnNoise>,
    /// The hidden patient count k applies to.
    pub patients: ColumnNoise,
}

/// What a site tells about the noise on one released partial (floats: metadata only).
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseReport {
    /// The partial's index (`__p{partial}`).
    pub partial: usize,
    /// The mechanism's name, or `skellam` for a secure share.
    pub mechanism: &'static str,
    /// The Laplace scale or the Gaussian σ (of the whole network's noise, for a share).
    pub scale: f64,
    /// The variance of this site's draw (its share's, under secure aggregation).
    pub variance: f64,
    /// The half-width one draw stays within with probability 95 % (of the whole
    /// network's noise, for a share).
    pub margin95: u64,
}

/// The probability that a group one patient alone makes is released per site under
/// noise (see [`QuestionNoise::release_threshold`]).
pub const KEY_RELEASE_DELTA: f64 = 1e-6;

impl QuestionNoise {
    /// The noisy patient count a group needs to be released per site, where its key
    /// comes from the data (a GROUP BY): at least `k`, and at least `1 + t` with
    /// `P(noise ≥ t) ≤ 10⁻⁶`, so a key that one patient alone makes (a rare code, a
    /// birth date) leaves the site with probability 10⁻⁶ at most (red team: at k alone, 1
    /// patient's key left a fifth of the sites). Secure aggregation releases from a
    /// public domain and needs only k.
    pub fn release_threshold(&self, k: u64) -> u64 {
        k.max(1 + self.patients.tail_bound(KEY_RELEASE_DELTA))
    }

    /// The report of every released partial's noise, per site.
    pub fn reports(&self) -> Vec<NoiseReport> {
        self.partials
            .iter()
            .enumerate()
            .map(|(partial, noise)| NoiseReport {
                partial,
                mechanism: noise.mechanism.name(),
                scale: noise.scale(),
                variance: noise.variance(),
                margin95: noise.margin95(),
            })
            .collect()
    }

    /// The report of every released partial's share of the network's noise, for a
    /// round of `participants` sites: Skellam shares whose sum has the mechanism's
    /// variance.
    pub fn share_reports(&self, participants: usize) -> Vec<NoiseReport> {
        self.partials
            .iter()
            .enumerate()
            .map(|(partial, noise)| NoiseReport {
                partial,
                mechanism: "skellam",
                scale: noise.scale(),
                variance: noise.share_variance(participants),
                margin95: noise.margin95(),
            })
            .collect()
    }

    /// The noise `policy` gives a site plan with `sensitivity`.
    pub fn calibrate(
        policy: &PrivacyPolicy,
        sensitivity: &Sensitivity,
    ) -> Result<Self, NoiseError> {
        let epsilon = policy.epsilon.micro();
        if epsilon == 0 {
            return Err(NoiseError::ZeroEpsilon);
        }
        let parts = sensitivity.partials.len() as u64 + 1;
        let partials = sensitivity
            .partials
            .iter()
            .map(|&delta| ColumnNoise::calibrate(policy.mechanism, delta, epsilon, parts))
            .collect::<Result<Vec<_>, _>>()?;
        let patients =
            ColumnNoise::calibrate(policy.mechanism, sensitivity.patients, epsilon, parts)?;
        Ok(QuestionNoise { partials, patients })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilon_prints_and_adds_exactly() {
        let half = Epsilon::from_decimal(0.5).expect("0.5");
        assert_eq!(half.to_string(), "0.5");
        let total = (0..10).fold(Epsilon::default(), |sum, _| {
            sum.plus(Epsilon::from_micro(100_000))
        });
        assert_eq!(
            total,
            Epsilon::from_micro(1_000_000),
            "ten times 0.1 is exactly 1"
        );
        assert_eq!(total.to_string(), "1");
        assert_eq!(Epsilon::from_decimal(-1.0), None);
        assert_eq!(Epsilon::from_decimal(f64::NAN), None);
    }

    #[test]
    fn laplace_scale_is_sensitivity_times_parts_over_epsilon() {
        let policy = PrivacyPolicy {
            enabled: true,
            ..PrivacyPolicy::default()
        };
        let sensitivity = Sensitivity {
            partials: vec![1, 150],
            patients: 1,
        };
        let noise = QuestionNoise::calibrate(&policy, &sensitivity).expect("calibrated");
        // ε = 0.5 over 3 columns: scale = Δ · 3 / 0.5 = 6 Δ.
        assert_eq!(noise.partials[0].parameter, Rational::new(6, 1).expect("6"));
        assert_eq!(
            noise.partials[1].parameter,
            Rational::new(900, 1).expect("900")
        );
        assert_eq!(noise.patients.parameter, Rational::new(6, 1).expect("6"));
    }

    #[test]
    fn gaussian_variance_is_sensitivity_squared_times_parts_over_epsilon_squared() {
        let policy = PrivacyPolicy {
            enabled: true,
            mechanism: Mechanism::DiscreteGaussian,
            ..PrivacyPolicy::default()
        };
        let sensitivity = Sensitivity {
            partials: vec![2],
            patients: 1,
        };
        let noise = QuestionNoise::calibrate(&policy, &sensitivity).expect("calibrated");
        // σ² = 4 · 2 / 0.25 = 32.
        assert_eq!(
            noise.partials[0].parameter,
            Rational::new(32, 1).expect("32")
        );
    }

    #[test]
    fn a_lone_patients_key_clears_the_release_threshold_once_in_a_million() {
        let noise = ColumnNoise {
            mechanism: Mechanism::DiscreteLaplace,
            parameter: Rational::new(4, 1).expect("4"),
        };
        let t = noise.tail_bound(KEY_RELEASE_DELTA);
        let q = (-0.25f64).exp();
        let tail = |t: u64| q.powi(t as i32) / (1.0 + q);
        assert!(tail(t) <= KEY_RELEASE_DELTA, "P(X ≥ {t}) = {}", tail(t));
        assert!(tail(t - 1) > KEY_RELEASE_DELTA, "{t} is not the smallest");
        let gaussian = ColumnNoise {
            mechanism: Mechanism::DiscreteGaussian,
            parameter: Rational::new(16, 1).expect("16"),
        };
        // σ = 4: 4 · √(2 ln 10⁶) + 1 ≈ 22.0.
        assert_eq!(gaussian.tail_bound(KEY_RELEASE_DELTA), 23);
    }

    #[test]
    fn oversized_parameters_round_up() {
        assert!(matches!(
            at_least(u128::from(u64::MAX) * 3, 1),
            Err(NoiseError::TooLarge)
        ));
        let rational = at_least(u128::from(u64::MAX) * 3, 1 << 50).expect("fits");
        let value = rational.num() as f64 / rational.den() as f64;
        let exact = u64::MAX as f64 * 3.0 / (1u64 << 50) as f64;
        assert!(value >= exact * (1.0 - 1e-12), "{value} < {exact}");
        assert!(value <= exact * 1.001, "{value} far above {exact}");
        assert!(
            matches!(
                at_least(u128::from(u64::MAX) * 3, 7),
                Err(NoiseError::TooLarge)
            ),
            "a value above the sampler's range is refused, not shrunk"
        );
    }
}
