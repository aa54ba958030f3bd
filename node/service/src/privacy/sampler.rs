//! Exact samplers for the noise that differential privacy adds to released numbers.
//!
//! Why this module exists: a floating-point Laplace or Gaussian sampler leaks through its
//! rounding (Mironov, "On significance of the least significant bits for differential
//! privacy", CCS 2012): which outputs are reachable depends on the true value, so one noisy
//! answer can tell two stores apart. Every sampler here uses integer arithmetic only, on
//! uniformly random bits, and its output has exactly the stated distribution: no rounding
//! happens anywhere, and arithmetic that would not fit its integer width is an error, never
//! a wrap. The constructions follow Canonne, Kamath, Steinke, "The Discrete Gaussian for
//! Differential Privacy" (NeurIPS 2020), Algorithms 1-3, plus an exact Poisson sampler for
//! the Skellam shares of secure aggregation.
//!
//! # Building blocks, each exact
//! - [`uniform_below`]: rejection from the smallest power of two at least the range, so
//!   every accepted value is equally likely.
//! - [`bernoulli`] of a rational `p = a/b`: `uniform_below(b) < a` happens for exactly `a`
//!   of `b` equally likely values.
//! - [`bernoulli_exp`]: `Bernoulli(exp(-γ))` for a rational `γ ≥ 0`, from rational coins.
//! - [`discrete_laplace`], [`discrete_gaussian`]: from geometric draws and the above.
//! - [`poisson`], [`skellam`]: from fair coins and rational coins.
//!
//! # Sizes
//! Parameters are [`Rational`]s of two `u64`s; products are taken in `u128` (and, for the
//! Gaussian's rejection test, in 384 bits), always checked. The node passes numerators and
//! denominators up to 2^40; the limits each sampler enforces are in its documentation.
//!
//! # Determinism
//! Given the same random stream, every sampler returns the same values. A node draws its
//! noise from a stream seeded per question (`super::secret`), so that a repeated question
//! gets the same noise; changing how a sampler consumes random bits therefore changes the
//! noise of every release, and the test `noise_stream_is_pinned` fails when it does.

use std::cmp::Ordering;
use std::fmt;

use rand::RngCore;

/// The largest discrete Laplace scale accepted: 2^56. Outputs must fit an `i64`; beyond
/// this scale they would not with noticeable probability (here below `e^-128`, and such a
/// draw is an error, never a wrapped value).
pub const MAX_LAPLACE_SCALE: u64 = 1 << 56;

/// The largest Poisson (and Skellam) mean accepted: 2^44. A draw costs some `√mean`
/// coins for large means (see [`poisson`]): at 2^44, a few times 10^6 coins.
pub const MAX_POISSON_MEAN: u64 = 1 << 44;

/// Means from this one on are drawn by the `O(√λ)` rejection sampler of [`poisson`];
/// smaller ones as a thinned sum of `Poisson(1)` draws.
const POISSON_REJECTION_FROM: u64 = 256;

/// Why a sampler cannot draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SamplerError {
    /// A rational number with denominator zero.
    #[error("a rational number needs a denominator above zero")]
    ZeroDenominator,
    /// A scale or variance of zero, where the distribution needs a positive one.
    #[error("{what} must be above zero")]
    NotPositive {
        /// The parameter.
        what: &'static str,
    },
    /// A probability above one.
    #[error("a probability is at most 1, not {num}/{den}")]
    ProbabilityAboveOne {
        /// Its numerator.
        num: u64,
        /// Its denominator.
        den: u64,
    },
    /// `uniform_below(0)`: no integer is below zero.
    #[error("no natural number is below 0")]
    EmptyRange,
    /// A parameter, or a draw, too large for the exact integer arithmetic.
    #[error("{what} is too large for exact sampling")]
    TooLarge {
        /// The parameter or value.
        what: &'static str,
    },
}

/// A non-negative rational number `num / den`, kept in lowest terms, so that two equal
/// values compare equal field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rational {
    num: u64,
    den: u64,
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Rational {
    /// Zero.
    pub const ZERO: Rational = Rational { num: 0, den: 1 };
    /// One.
    pub const ONE: Rational = Rational { num: 1, den: 1 };

    /// `num / den` in lowest terms; an error for `den == 0`.
    pub fn new(num: u64, den: u64) -> Result<Self, SamplerError> {
        Self::reduced(u128::from(num), u128::from(den), "a rational number")
    }

    /// `num / den` in lowest terms, as long as both then fit a `u64`.
    fn reduced(num: u128, den: u128, what: &'static str) -> Result<Self, SamplerError> {
        if den == 0 {
            return Err(SamplerError::ZeroDenominator);
        }
        let divisor = gcd(num, den);
        let fit = |x: u128| u64::try_from(x / divisor).map_err(|_| SamplerError::TooLarge { what });
        Ok(Rational {
            num: fit(num)?,
            den: fit(den)?,
        })
    }

    /// The integer `n`.
    pub const fn integer(n: u64) -> Self {
        Rational { num: n, den: 1 }
    }

    /// The numerator, in lowest terms.
    pub const fn num(self) -> u64 {
        self.num
    }

    /// The denominator, in lowest terms (at least 1).
    pub const fn den(self) -> u64 {
        self.den
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.num == 0
    }

    /// The largest integer at most `self`.
    pub const fn floor(self) -> u64 {
        self.num / self.den
    }

    /// The smallest integer at least `self`.
    pub const fn ceil(self) -> u64 {
        self.num.div_ceil(self.den)
    }

    /// `self · other`; an error when the reduced result does not fit.
    pub fn checked_mul(self, other: Rational) -> Result<Self, SamplerError> {
        Self::reduced(
            u128::from(self.num) * u128::from(other.num),
            u128::from(self.den) * u128::from(other.den),
            "a product of rationals",
        )
    }

    /// `self / other`; an error for `other == 0` or when the result does not fit.
    pub fn checked_div(self, other: Rational) -> Result<Self, SamplerError> {
        if other.is_zero() {
            return Err(SamplerError::ZeroDenominator);
        }
        Self::reduced(
            u128::from(self.num) * u128::from(other.den),
            u128::from(self.den) * u128::from(other.num),
            "a quotient of rationals",
        )
    }

    /// `self / n`, e.g. one participant's share of a Skellam mean; an error for `n == 0`
    /// or when the result does not fit.
    pub fn checked_div_int(self, n: u64) -> Result<Self, SamplerError> {
        self.checked_div(Rational::integer(n))
    }
}

impl Ord for Rational {
    fn cmp(&self, other: &Self) -> Ordering {
        (u128::from(self.num) * u128::from(other.den))
            .cmp(&(u128::from(other.num) * u128::from(self.den)))
    }
}

impl PartialOrd for Rational {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Rational {
    /// `num/den`, or just `num` for an integer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Random bits, uniform integers and rational coins.

/// The random bits of one draw: 64-bit words from the generator, handed out a few bits at
/// a time, lowest first. The bits of a uniformly random word are independent fair coins,
/// so any way of grouping them gives independent uniform values; most coins need one to
/// three bits, and a word serves many of them. A sampler call starts a fresh buffer and
/// drops what it leaves, so each call's output depends on the stream alone.
struct Bits<'a, R: ?Sized> {
    rng: &'a mut R,
    word: u64,
    left: u32,
}

impl<'a, R: RngCore + ?Sized> Bits<'a, R> {
    fn new(rng: &'a mut R) -> Self {
        Bits {
            rng,
            word: 0,
            left: 0,
        }
    }

    /// `count` uniformly random bits, `1 ≤ count ≤ 64`, as the low bits of the result.
    fn take(&mut self, count: u32) -> u64 {
        if count <= self.left {
            let taken = self.word & low_mask(count);
            self.word = self.word.checked_shr(count).unwrap_or(0);
            self.left -= count;
            return taken;
        }
        // All that is left, then the rest from a fresh word.
        let (low, have) = (self.word, self.left);
        let fresh = self.rng.next_u64();
        let need = count - have;
        self.word = fresh.checked_shr(need).unwrap_or(0);
        self.left = 64 - need;
        low | ((fresh & low_mask(need)) << have)
    }

    /// The number of zero bits before the next one bit: fair coin flips, tails before
    /// the first head, `P(K = k) = 2^-(k+1)`. The one bit is used up too.
    fn zeros_before_one(&mut self) -> Result<u64, SamplerError> {
        let mut zeros: u64 = 0;
        loop {
            if self.left > 0 && self.word != 0 {
                // The buffer holds only its `left` unused bits, so a one is within them.
                let run = self.word.trailing_zeros();
                self.word = self.word.checked_shr(run + 1).unwrap_or(0);
                self.left -= run + 1;
                return zeros
                    .checked_add(u64::from(run))
                    .ok_or(SamplerError::TooLarge {
                        what: "a run of coin flips",
                    });
            }
            zeros = zeros
                .checked_add(u64::from(self.left))
                .ok_or(SamplerError::TooLarge {
                    what: "a run of coin flips",
                })?;
            self.word = self.rng.next_u64();
            self.left = 64;
        }
    }
}

/// The lowest `count` bits set, `count ≤ 64`.
fn low_mask(count: u32) -> u64 {
    u64::MAX.checked_shr(64 - count).unwrap_or(0)
}

/// Uniform on `0..n`, `n ≥ 1`: take as many bits as `n - 1` has and reject values `≥ n`.
/// Each attempt accepts with probability above 1/2, and every accepted value has the same
/// probability, so the result is exactly uniform.
fn below_u64<R: RngCore + ?Sized>(bits: &mut Bits<'_, R>, n: u64) -> u64 {
    if n <= 1 {
        return 0;
    }
    let width = 64 - (n - 1).leading_zeros();
    loop {
        let x = bits.take(width);
        if x < n {
            return x;
        }
    }
}

/// [`below_u64`] for `u128`.
fn below_u128<R: RngCore + ?Sized>(bits: &mut Bits<'_, R>, n: u128) -> u128 {
    if let Ok(small) = u64::try_from(n) {
        return u128::from(below_u64(bits, small));
    }
    // n > 2^64: more than 64 bits, the low 64 first.
    let high_width = 64 - (n - 1).leading_zeros();
    loop {
        let low = bits.take(64);
        let high = bits.take(high_width);
        let x = (u128::from(high) << 64) | u128::from(low);
        if x < n {
            return x;
        }
    }
}

/// `Bernoulli(num / den)` for `num ≤ den`, `den ≥ 1`: true for `num` of the `den` equally
/// likely values of `uniform_below(den)`. Certain outcomes draw nothing.
fn coin<R: RngCore + ?Sized>(bits: &mut Bits<'_, R>, num: u128, den: u128) -> bool {
    if num >= den {
        return true;
    }
    if num == 0 {
        return false;
    }
    below_u128(bits, den) < num
}

/// A uniformly random integer in `0..n`, unbiased (rejection sampling); an error for
/// `n == 0`.
pub fn uniform_below<R: RngCore + ?Sized>(rng: &mut R, n: u64) -> Result<u64, SamplerError> {
    if n == 0 {
        return Err(SamplerError::EmptyRange);
    }
    Ok(below_u64(&mut Bits::new(rng), n))
}

/// `Bernoulli(p)`, exactly, for a rational `p ≤ 1`; an error for `p > 1`.
pub fn bernoulli<R: RngCore + ?Sized>(rng: &mut R, p: Rational) -> Result<bool, SamplerError> {
    if p.num > p.den {
        return Err(SamplerError::ProbabilityAboveOne {
            num: p.num,
            den: p.den,
        });
    }
    Ok(coin(
        &mut Bits::new(rng),
        u128::from(p.num),
        u128::from(p.den),
    ))
}

// ---------------------------------------------------------------------------------------
// Bernoulli(exp(-γ)).

/// `Bernoulli(exp(-γ))` for `γ = num / den ∈ [0, 1]`: CKS Algorithm 1. Draw
/// `A_k ~ Bernoulli(γ / k)` for `k = 1, 2, …` until the first `A_K = 0`; return whether
/// `K` is odd. `P(K > k) = γ^k / k!`, so `P(K odd) = Σ_{k≥0} (-γ)^k / k! = exp(-γ)`.
/// `Bernoulli(γ / k)` is drawn as `Bernoulli(γ) ∧ Bernoulli(1 / k)`, two independent
/// coins whose conjunction has probability `γ / k`, so no product can overflow.
fn bernoulli_exp_fraction<R: RngCore + ?Sized>(
    bits: &mut Bits<'_, R>,
    num: u128,
    den: u128,
) -> bool {
    let mut k: u128 = 1;
    while coin(bits, num, den) && coin(bits, 1, k) {
        // `P(K > k) = γ^k / k!`: reaching 2^128 is beyond any possible run.
        k = k.saturating_add(1);
    }
    k % 2 == 1
}

/// `Bernoulli(exp(-1))`.
fn bernoulli_exp_one<R: RngCore + ?Sized>(bits: &mut Bits<'_, R>) -> bool {
    bernoulli_exp_fraction(bits, 1, 1)
}

/// `Bernoulli(exp(-N / den))` for a 384-bit numerator `N` (little-endian 64-bit limbs):
/// `exp(-γ) = exp(-1)^⌊γ⌋ · exp(-(γ - ⌊γ⌋))`, so one `Bernoulli(exp(-1))` per unit of the
/// integer part (stopping at the first failure), then Algorithm 1 on the remainder. The
/// integer part is peeled off one `den` at a time: each step is taken with probability
/// `exp(-1)`, so a huge `γ` still costs about 1.6 steps on average.
fn bernoulli_exp_wide<R: RngCore + ?Sized>(
    bits: &mut Bits<'_, R>,
    mut num: [u64; 6],
    den: u128,
) -> bool {
    let den_limbs = limbs(den);
    while cmp_limbs(&num, &den_limbs) != Ordering::Less {
        if !bernoulli_exp_one(bits) {
            return false;
        }
        sub_limbs(&mut num, &den_limbs);
    }
    // Now `num < den < 2^128`: the upper limbs are zero.
    let rest = u128::from(num[0]) | (u128::from(num[1]) << 64);
    bernoulli_exp_fraction(bits, rest, den)
}

/// `Bernoulli(exp(-γ))`, exactly, for a rational `γ ≥ 0` (CKS Algorithm 1, with one
/// `Bernoulli(exp(-1))` per unit of the integer part of `γ`).
pub fn bernoulli_exp<R: RngCore + ?Sized>(rng: &mut R, gamma: Rational) -> bool {
    let mut num = [0u64; 6];
    num[0] = gamma.num;
    bernoulli_exp_wide(&mut Bits::new(rng), num, u128::from(gamma.den))
}

// ---------------------------------------------------------------------------------------
// Little-endian 64-bit limbs, for the one product that exceeds u128.

/// The two limbs of a `u128` (the casts keep the low 64 bits on purpose).
fn limbs(x: u128) -> [u64; 2] {
    [x as u64, (x >> 64) as u64]
}

/// `out = a · b`, schoolbook; `out` has at least `a.len() + b.len()` limbs.
fn mul_limbs(a: &[u64], b: &[u64], out: &mut [u64]) {
    out.fill(0);
    for (i, &x) in a.iter().enumerate() {
        let mut carry: u128 = 0;
        for (j, &y) in b.iter().enumerate() {
            // At most (2^64 - 1) + (2^64 - 1)^2 + (2^64 - 1) = 2^128 - 1: no overflow.
            let sum = u128::from(out[i + j]) + u128::from(x) * u128::from(y) + carry;
            out[i + j] = sum as u64;
            carry = sum >> 64;
        }
        out[i + b.len()] = carry as u64;
    }
}

/// Compares two numbers of possibly different limb counts.
fn cmp_limbs(a: &[u64], b: &[u64]) -> Ordering {
    let width = a.len().max(b.len());
    for i in (0..width).rev() {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        match x.cmp(&y) {
            Ordering::Equal => {}
            unequal => return unequal,
        }
    }
    Ordering::Equal
}

/// `a -= b`, for `a ≥ b` and `b` no wider than `a`.
fn sub_limbs(a: &mut [u64], b: &[u64]) {
    let mut borrow = false;
    for (i, limb) in a.iter_mut().enumerate() {
        let y = b.get(i).copied().unwrap_or(0);
        let (d1, b1) = limb.overflowing_sub(y);
        let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
        *limb = d2;
        borrow = b1 || b2;
    }
}

// ---------------------------------------------------------------------------------------
// Discrete Laplace and discrete Gaussian.

/// One draw of the discrete Laplace distribution with the given scale:
/// `P(x) ∝ exp(-|x| / scale)` for every integer `x`. Variance
/// `2 q / (1 - q)^2` with `q = exp(-1 / scale)`; adding it to a count of L1 sensitivity
/// `Δ` with `scale = Δ / ε` gives ε-differential privacy.
///
/// CKS Algorithm 2 with `scale = t / s` (numerator `t`, denominator `s`): draw
/// `U ~ Uniform{0..t-1}` and keep it with probability `exp(-U / t)`; draw `V`, the number
/// of successes of `Bernoulli(exp(-1))` before the first failure. Then `X = U + t V` is
/// geometric: `P(X = x) ∝ exp(-x / t)` (U and V are the remainder and quotient of `x` by
/// `t`, with independent weights `exp(-U/t)` and `exp(-V)`). `Y = ⌊X / s⌋` is geometric
/// with `P(Y = y) ∝ exp(-y s / t)`. A fair sign `B` gives `±Y`, rejecting `-0` so that
/// zero is not counted twice: the result has `P(z) ∝ exp(-|z| s / t)`.
///
/// Errors: a zero scale, a scale above [`MAX_LAPLACE_SCALE`], or (with probability below
/// `e^-128`) a draw that does not fit an `i64`.
pub fn discrete_laplace<R: RngCore + ?Sized>(
    rng: &mut R,
    scale: Rational,
) -> Result<i64, SamplerError> {
    laplace(&mut Bits::new(rng), scale)
}

/// [`discrete_laplace`] on a bit buffer.
fn laplace<R: RngCore + ?Sized>(
    bits: &mut Bits<'_, R>,
    scale: Rational,
) -> Result<i64, SamplerError> {
    if scale.is_zero() {
        return Err(SamplerError::NotPositive {
            what: "a discrete Laplace scale",
        });
    }
    if scale > Rational::integer(MAX_LAPLACE_SCALE) {
        return Err(SamplerError::TooLarge {
            what: "a discrete Laplace scale",
        });
    }
    let (t, s) = (scale.num, scale.den);
    let too_large = SamplerError::TooLarge {
        what: "a discrete Laplace draw",
    };
    loop {
        let u = below_u64(bits, t);
        if !bernoulli_exp_fraction(bits, u128::from(u), u128::from(t)) {
            continue;
        }
        let mut v: u64 = 0;
        while bernoulli_exp_one(bits) {
            v = v.checked_add(1).ok_or(too_large)?;
        }
        let x = u128::from(t)
            .checked_mul(u128::from(v))
            .and_then(|tv| tv.checked_add(u128::from(u)))
            .ok_or(too_large)?;
        let y = x / u128::from(s);
        let negative = coin(bits, 1, 2);
        if negative && y == 0 {
            continue;
        }
        let y = i64::try_from(y).map_err(|_| too_large)?;
        return Ok(if negative { -y } else { y });
    }
}

/// One draw of the discrete Gaussian distribution with parameter `σ²`:
/// `P(x) ∝ exp(-x² / (2σ²))` for every integer `x`. Its variance is below `σ²`, and within
/// `3·10^-7` of it relative once `σ ≥ 1`; with `σ² = Δ² / (2ρ)` it gives ρ-zCDP for L2
/// sensitivity `Δ`.
///
/// CKS Algorithm 3: with `t = ⌊σ⌋ + 1`, draw `Y` from the discrete Laplace of scale `t`
/// and keep it with probability `exp(-(|Y| - σ²/t)² / (2σ²))`. The kept `Y` has
/// `P(y) ∝ exp(-|y|/t - (|y| - σ²/t)²/(2σ²)) = exp(-y²/(2σ²)) · exp(-σ²/(2t²))`, the
/// target up to a constant. With `σ² = a / b`, the exponent is the rational
/// `(|Y| t b - a)² / (2 a b t²)`; its numerator is formed in 384 bits, so it is exact for
/// any `Y`. `⌊σ⌋` is the integer square root of `⌊a / b⌋` (`⌊√x⌋ = ⌊√⌊x⌋⌋`).
///
/// Errors: a zero `σ²`, or one whose `2 a b t²` exceeds `u128` (not for numerators and
/// denominators below 2^60).
pub fn discrete_gaussian<R: RngCore + ?Sized>(
    rng: &mut R,
    sigma2: Rational,
) -> Result<i64, SamplerError> {
    let bits = &mut Bits::new(rng);
    if sigma2.is_zero() {
        return Err(SamplerError::NotPositive {
            what: "a discrete Gaussian σ²",
        });
    }
    let too_large = SamplerError::TooLarge {
        what: "a discrete Gaussian σ²",
    };
    let (a, b) = (sigma2.num, sigma2.den);
    let t = (a / b).isqrt() + 1;
    let (a128, b128, t128) = (u128::from(a), u128::from(b), u128::from(t));
    let den = a128
        .checked_mul(b128)
        .and_then(|ab| ab.checked_mul(t128 * t128))
        .and_then(|abt2| abt2.checked_mul(2))
        .ok_or(too_large)?;
    // t ≤ 2^32 + 1 and b < 2^64, so t b < 2^97.
    let tb = limbs(t128 * b128);
    loop {
        let y = laplace(bits, Rational::integer(t))?;
        // |Y| t b, in three limbs.
        let mut excess = [0u64; 3];
        mul_limbs(&[y.unsigned_abs()], &tb, &mut excess);
        // |(|Y| t b) - a|.
        let a_limbs = [a];
        if cmp_limbs(&excess, &a_limbs) == Ordering::Less {
            excess = [a - excess[0], 0, 0];
        } else {
            sub_limbs(&mut excess, &a_limbs);
        }
        let mut square = [0u64; 6];
        mul_limbs(&excess, &excess, &mut square);
        if bernoulli_exp_wide(bits, square, den) {
            return Ok(y);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Poisson and Skellam.

/// `Poisson(1)` by rejection from the proposal `K`, the number of tails before the first
/// head in fair coin flips (`Bits::zeros_before_one`), `P(K = k) = 2^-(k+1)`.
///
/// The target is `p(k) = e^-1 / k!`; the ratio `p(k) / P(K = k) = e^-1 2^(k+1) / k!` is at
/// most `M = 4 / e` (reached at `k = 1` and `k = 2`), so accepting `K = k` with probability
/// `p(k) / (M P(K = k)) = 2^(k-1) / k!` gives exactly `Poisson(1)` (each round proposes and
/// accepts `k` with probability `p(k) / M`, independently of earlier rounds). That
/// probability is `1/2` for `k = 0` and `Π_{j=2..k} (2 / j)` for `k ≥ 1`: a conjunction of
/// independent `Bernoulli(2 / j)`, stopped at the first failure, so no factorial is ever
/// formed. A round accepts with probability `1 / M = e / 4 ≈ 0.68`.
fn poisson_one<R: RngCore + ?Sized>(bits: &mut Bits<'_, R>) -> Result<u64, SamplerError> {
    loop {
        let k = bits.zeros_before_one()?;
        let accept = if k == 0 {
            coin(bits, 1, 2)
        } else {
            (2..=k).all(|j| coin(bits, 2, u128::from(j)))
        };
        if accept {
            return Ok(k);
        }
    }
}

/// One draw of the Poisson distribution with a rational mean `λ = a / b`:
/// `P(k) = e^-λ λ^k / k!`. Mean and variance `λ`.
///
/// For `λ < 256`: with `m = ⌈λ⌉`, the sum of `m` independent `Poisson(1)` draws is
/// `Poisson(m)` (Poisson means add). Keeping each of its points independently with
/// probability `λ / m` (thinning) gives `Poisson(λ)`: a `Poisson(m)` count thinned by `p`
/// has generating function `E[(1 - p + p z)^N] = exp(m p (z - 1))`, that of
/// `Poisson(m p)`. Cost: a few coin flips per unit of `λ`.
///
/// For `λ ≥ 256`, rejection against an envelope of the unnormalised weights
/// `r(k) = p(k) / p(n)`, with `n = ⌊λ⌋` the mode and `w = ⌊√n⌋` (so `1 ≤ n - w`):
/// - `r(k) = Π_{j=n+1..k} λ / j` for `k ≥ n` and `Π_{j=k+1..n} j / λ` for `k < n`; every
///   factor is at most 1, since `j ≥ n + 1 > λ` on the right and `j ≤ n ≤ λ` on the left.
/// - The envelope is 1 on the centre `n - w ..= n + w`, `ρ_R^g` at `k = n + w + g` with
///   `ρ_R = λ / (n + w + 1)`, and `ρ_L^g` at `k = n - w - g` with `ρ_L = (n - w) / λ`
///   (`g ≥ 1`). It bounds `r`: beyond the centre each further factor of `r` is at most
///   `ρ_R` (resp. `ρ_L`), and the ones inside at most 1.
/// - The tails' masses are `R = ρ_R / (1 - ρ_R)` and `L = ρ_L / (1 - ρ_L)`. One round
///   draws `u` uniform below `T = (2w + 1) + ⌈R⌉ + ⌈L⌉` and: for `u < 2w + 1` proposes
///   `k = n - w + u` with probability `1 / T`; otherwise picks the right (or left) tail,
///   goes on with probability `R / ⌈R⌉` (`L / ⌈L⌉`), and draws `g - 1` as the number of
///   successes of `Bernoulli(ρ)` before the first failure; so it proposes `k` with
///   probability `(⌈R⌉ / T) (R / ⌈R⌉) (1 - ρ_R) ρ_R^(g-1) = ρ_R^g / T`. In every case
///   `k` is proposed with probability `envelope(k) / T`.
/// - It then accepts `k` with probability `r(k) / envelope(k)`, a product of rational
///   factors each at most 1: `λ / j` and `j / λ` inside the centre, `(n + w + 1) / j`
///   and `j / (n - w)` beyond it, drawn as independent coins, stopping at the first
///   failure (a negative `k` is rejected: its weight is zero).
/// - Each round thus returns `k` with probability `r(k) / T` independently of earlier
///   rounds: the result is exactly `Poisson(λ)`. A round accepts with probability
///   `Σ r / T ≈ √(2πλ) / (4√λ) ≈ 0.6`, and costs `O(√λ)` coins.
///
/// Errors: a mean above [`MAX_POISSON_MEAN`], or one whose arithmetic overflows `u128`
/// (not below that limit).
pub fn poisson<R: RngCore + ?Sized>(rng: &mut R, mean: Rational) -> Result<u64, SamplerError> {
    poisson_bits(&mut Bits::new(rng), mean)
}

/// [`poisson`] on a bit buffer.
fn poisson_bits<R: RngCore + ?Sized>(
    bits: &mut Bits<'_, R>,
    mean: Rational,
) -> Result<u64, SamplerError> {
    if mean > Rational::integer(MAX_POISSON_MEAN) {
        return Err(SamplerError::TooLarge {
            what: "a Poisson mean",
        });
    }
    if mean.floor() >= POISSON_REJECTION_FROM {
        return poisson_rejection(bits, mean);
    }
    let m = mean.ceil();
    let (a, b) = (u128::from(mean.num), u128::from(mean.den));
    // λ / m = a / (b m); b m < 2^64 · 2^8.
    let keep_den = b * u128::from(m);
    let too_large = SamplerError::TooLarge {
        what: "a Poisson draw",
    };
    let mut count: u64 = 0;
    for _ in 0..m {
        let points = poisson_one(bits)?;
        if a == keep_den {
            count = count.checked_add(points).ok_or(too_large)?;
        } else {
            for _ in 0..points {
                if coin(bits, a, keep_den) {
                    count = count.checked_add(1).ok_or(too_large)?;
                }
            }
        }
    }
    Ok(count)
}

/// The number of successes of `Bernoulli(num / den)` before the first failure, plus one.
fn geometric_from_one<R: RngCore + ?Sized>(
    bits: &mut Bits<'_, R>,
    num: u128,
    den: u128,
) -> Result<u64, SamplerError> {
    let mut g: u64 = 1;
    while coin(bits, num, den) {
        g = g.checked_add(1).ok_or(SamplerError::TooLarge {
            what: "a Poisson tail draw",
        })?;
    }
    Ok(g)
}

/// Whether all of the coins `Bernoulli(num(j) / den(j))` for `j` in `range` come up,
/// stopping at the first that does not.
fn all_coins<R: RngCore + ?Sized>(
    bits: &mut Bits<'_, R>,
    range: std::ops::RangeInclusive<u64>,
    mut factor: impl FnMut(u64) -> (u128, u128),
) -> bool {
    range.into_iter().all(|j| {
        let (num, den) = factor(j);
        coin(bits, num, den)
    })
}

/// The `λ ≥ 256` branch of [`poisson`]; see there for why it is exact.
fn poisson_rejection<R: RngCore + ?Sized>(
    bits: &mut Bits<'_, R>,
    mean: Rational,
) -> Result<u64, SamplerError> {
    let too_large = SamplerError::TooLarge {
        what: "a Poisson mean",
    };
    let (a, b) = (u128::from(mean.num), u128::from(mean.den));
    // n = ⌊λ⌋ ≥ 256, w = ⌊√n⌋ ≥ 16: n - w ≥ 240 and n + w + 1 ≤ 2^44 + 2^23.
    let n = mean.floor();
    let w = n.isqrt();
    let (n128, w128) = (u128::from(n), u128::from(w));
    let right = n128 + w128 + 1;
    let left = n128 - w128;
    // R = λ / (n + w + 1 - λ) = a / d_r;  L = (n - w) / (λ - n + w) = (n - w) b / d_l.
    let d_r = right.checked_mul(b).ok_or(too_large)? - a;
    let left_b = left.checked_mul(b).ok_or(too_large)?;
    let d_l = a - left_b;
    let (ceil_r, ceil_l) = (a.div_ceil(d_r), left_b.div_ceil(d_l));
    let centre = 2 * w128 + 1;
    let total = centre + ceil_r + ceil_l;
    // The coins R / ⌈R⌉ = a / (d_r ⌈R⌉) and L / ⌈L⌉ = (n - w) b / (d_l ⌈L⌉).
    let keep_r = d_r.checked_mul(ceil_r).ok_or(too_large)?;
    let keep_l = d_l.checked_mul(ceil_l).ok_or(too_large)?;
    // λ / j = a / (b j) and j / λ = b j / a, for j < 2^64.
    let over = |j: u64| (a, b * u128::from(j));
    let under = |j: u64| (b * u128::from(j), a);
    loop {
        let u = below_u128(bits, total);
        let accepted = if u < centre {
            let k = n - w + u64::try_from(u).map_err(|_| too_large)?;
            let kept = if k >= n {
                all_coins(bits, n + 1..=k, over)
            } else {
                all_coins(bits, k + 1..=n, under)
            };
            kept.then_some(k)
        } else if u < centre + ceil_r {
            if !coin(bits, a, keep_r) {
                continue;
            }
            let g = geometric_from_one(bits, a, b * right)?;
            let k = (n + w).checked_add(g).ok_or(too_large)?;
            let kept = all_coins(bits, n + 1..=n + w, over)
                && all_coins(bits, n + w + 1..=k, |j| (right, u128::from(j)));
            kept.then_some(k)
        } else {
            if !coin(bits, left_b, keep_l) {
                continue;
            }
            let g = geometric_from_one(bits, left_b, a)?;
            let Some(k) = (n - w).checked_sub(g) else {
                continue;
            };
            let kept = all_coins(bits, n - w + 1..=n, under)
                && all_coins(bits, k + 1..=n - w, |j| (u128::from(j), left));
            kept.then_some(k)
        };
        if let Some(k) = accepted {
            return Ok(k);
        }
    }
}

/// One draw of the Skellam distribution `Poisson(μ) - Poisson(μ)` (two independent
/// draws), mean 0 and variance `2μ`.
///
/// Secure aggregation: because independent Poisson draws add their means, the sum over
/// `n` participants of `skellam(μ / n)` is `Poisson(μ) - Poisson(μ)`, exactly
/// `Skellam(μ)`. Each node adds its share to its masked vector, so the network total
/// carries the whole noise while no single share does.
///
/// Errors: those of [`poisson`].
pub fn skellam<R: RngCore + ?Sized>(rng: &mut R, mean: Rational) -> Result<i64, SamplerError> {
    let bits = &mut Bits::new(rng);
    let too_large = SamplerError::TooLarge {
        what: "a Skellam draw",
    };
    let plus = i64::try_from(poisson_bits(bits, mean)?).map_err(|_| too_large)?;
    let minus = i64::try_from(poisson_bits(bits, mean)?).map_err(|_| too_large)?;
    Ok(plus - minus)
}

#[cfg(test)]
mod tests {
    //! Real draws from fixed seeds, checked against the exact distributions: means,
    //! variances and tails within 5 standard errors, and chi-square over the central
    //! values at a one-in-a-million level. Floats are fine here, outside the sampling path.

    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const DRAWS: usize = 1_000_000;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn rational(num: u64, den: u64) -> Rational {
        Rational::new(num, den).expect("a rational")
    }

    /// An exact probability mass function on `lo..lo + p.len()`, the mass outside it
    /// negligible (below 1e-15).
    struct Pmf {
        lo: i64,
        p: Vec<f64>,
    }

    impl Pmf {
        fn new(lo: i64, hi: i64, mass: impl Fn(i64) -> f64) -> Pmf {
            Pmf {
                lo,
                p: (lo..=hi).map(mass).collect(),
            }
        }

        /// Normalised from unnormalised weights.
        fn from_weights(lo: i64, hi: i64, weight: impl Fn(i64) -> f64) -> Pmf {
            let mut pmf = Pmf::new(lo, hi, weight);
            let total: f64 = pmf.p.iter().sum();
            pmf.p.iter_mut().for_each(|p| *p /= total);
            pmf
        }

        fn iter(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
            (self.lo..).zip(self.p.iter().copied())
        }

        fn mean(&self) -> f64 {
            self.iter().map(|(x, p)| x as f64 * p).sum()
        }

        fn central_moment(&self, k: i32) -> f64 {
            let mean = self.mean();
            self.iter()
                .map(|(x, p)| (x as f64 - mean).powi(k) * p)
                .sum()
        }
    }

    /// Discrete Laplace: `(1 - q) / (1 + q) q^|x|`, `q = e^(-1/s)`.
    fn laplace_pmf(scale: f64) -> Pmf {
        let q = (-1.0 / scale).exp();
        let range = (40.0 * scale) as i64 + 10;
        Pmf::new(-range, range, |x| {
            (1.0 - q) / (1.0 + q) * q.powi(x.abs() as i32)
        })
    }

    /// Discrete Gaussian: `exp(-x²/(2σ²))`, normalised by summation.
    fn gaussian_pmf(sigma2: f64) -> Pmf {
        let range = (12.0 * sigma2.sqrt()) as i64 + 10;
        Pmf::from_weights(-range, range, |x| {
            (-((x * x) as f64) / (2.0 * sigma2)).exp()
        })
    }

    /// Poisson: `e^-λ λ^k / k!` by the ratio recursion.
    fn poisson_pmf(mean: f64) -> Pmf {
        let hi = (mean + 12.0 * mean.sqrt()) as i64 + 30;
        let lo = ((mean - 12.0 * mean.sqrt()) as i64).max(0);
        // Logarithms keep large means from underflowing.
        let ln_factorial = |k: i64| (1..=k).map(|j| (j as f64).ln()).sum::<f64>();
        let base = -mean + lo as f64 * mean.ln() - ln_factorial(lo);
        let mut p = Vec::new();
        let mut ln_p = base;
        for k in lo..=hi {
            if k > lo {
                ln_p += mean.ln() - (k as f64).ln();
            }
            p.push(ln_p.exp());
        }
        Pmf { lo, p }
    }

    /// Skellam: the difference of two independent Poisson(μ).
    fn skellam_pmf(mean: f64) -> Pmf {
        let poisson = poisson_pmf(mean);
        let width = poisson.p.len() as i64;
        Pmf::new(-width + 1, width - 1, |d| {
            poisson
                .iter()
                .map(|(k, p)| {
                    let other = k - d;
                    let index = other - poisson.lo;
                    if (0..width).contains(&index) {
                        p * poisson.p[index as usize]
                    } else {
                        0.0
                    }
                })
                .sum()
        })
    }

    /// The chi-square value exceeded with probability about 1e-6 (Wilson-Hilferty).
    fn chi_square_limit(df: usize) -> f64 {
        let df = df as f64;
        let z = 4.75;
        let c = 2.0 / (9.0 * df);
        df * (1.0 - c + z * c.sqrt()).powi(3)
    }

    /// Mean, variance and `P(|X| ≥ tail_from)` within 5 standard errors of the exact
    /// values, and a chi-square test over the values expected at least 20 times.
    fn check(name: &str, draws: &[i64], pmf: &Pmf, tail_from: i64) -> Result<(), String> {
        let n = draws.len() as f64;
        let mean = pmf.mean();
        let variance = pmf.central_moment(2);
        let fourth = pmf.central_moment(4);
        let sample_mean = draws.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sample_variance = draws
            .iter()
            .map(|&x| (x as f64 - sample_mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        let mut failures = Vec::new();
        let mean_bound = 5.0 * (variance / n).sqrt();
        if (sample_mean - mean).abs() > mean_bound {
            failures.push(format!(
                "mean {sample_mean:.5}, exact {mean:.5} (bound {mean_bound:.5})"
            ));
        }
        let variance_bound = 5.0 * ((fourth - variance * variance) / n).sqrt();
        if (sample_variance - variance).abs() > variance_bound {
            failures.push(format!(
                "variance {sample_variance:.5}, exact {variance:.5} (bound {variance_bound:.5})"
            ));
        }
        let tail: f64 = pmf
            .iter()
            .filter(|(x, _)| x.abs() >= tail_from)
            .map(|(_, p)| p)
            .sum();
        let sample_tail = draws.iter().filter(|x| x.abs() >= tail_from).count() as f64 / n;
        let tail_bound = 5.0 * (tail * (1.0 - tail) / n).sqrt();
        if (sample_tail - tail).abs() > tail_bound {
            failures.push(format!(
                "P(|X| >= {tail_from}) {sample_tail:.6}, exact {tail:.6} (bound {tail_bound:.6})"
            ));
        }
        // Chi-square over the central values, plus the rest as one bin.
        let central: Vec<(i64, f64)> = pmf.iter().filter(|(_, p)| p * n >= 20.0).collect();
        if central.len() >= 2 {
            let mut counts = std::collections::HashMap::new();
            for &x in draws {
                *counts.entry(x).or_insert(0u64) += 1;
            }
            let mut chi2 = 0.0;
            let (mut rest_expected, mut rest_observed) = (n, n);
            for &(x, p) in &central {
                let expected = p * n;
                let observed = counts.get(&x).copied().unwrap_or(0) as f64;
                chi2 += (observed - expected).powi(2) / expected;
                rest_expected -= expected;
                rest_observed -= observed;
            }
            let mut bins = central.len();
            if rest_expected >= 5.0 {
                chi2 += (rest_observed - rest_expected).powi(2) / rest_expected;
                bins += 1;
            }
            let limit = chi_square_limit(bins - 1);
            if chi2 > limit {
                failures.push(format!(
                    "chi-square {chi2:.1} over {bins} bins, limit {limit:.1}"
                ));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(format!("{name}: {}", failures.join("; ")))
        }
    }

    fn draw_many(
        seed: u64,
        count: usize,
        mut draw: impl FnMut(&mut ChaCha20Rng) -> Result<i64, SamplerError>,
    ) -> Vec<i64> {
        let mut rng = rng(seed);
        (0..count)
            .map(|_| draw(&mut rng).expect("a draw"))
            .collect()
    }

    #[test]
    fn discrete_laplace_scale_2() {
        let draws = draw_many(1, DRAWS, |r| discrete_laplace(r, rational(2, 1)));
        let pmf = laplace_pmf(2.0);
        // The closed-form variance 2q/(1-q)^2 agrees with the summed pmf.
        let q = (-0.5f64).exp();
        assert!((pmf.central_moment(2) - 2.0 * q / (1.0 - q).powi(2)).abs() < 1e-9);
        check("Laplace(2)", &draws, &pmf, 6).expect("matches");
    }

    #[test]
    fn discrete_laplace_scale_7_thirds() {
        let draws = draw_many(2, DRAWS, |r| discrete_laplace(r, rational(7, 3)));
        check("Laplace(7/3)", &draws, &laplace_pmf(7.0 / 3.0), 7).expect("matches");
    }

    #[test]
    fn the_checks_reject_a_slightly_wrong_distribution() {
        // Scale 2.1 drawn, scale 2 expected: the checks must notice.
        let draws = draw_many(3, DRAWS, |r| discrete_laplace(r, rational(21, 10)));
        let verdict = check("Laplace(2.1) as Laplace(2)", &draws, &laplace_pmf(2.0), 6);
        assert!(verdict.is_err(), "a wrong scale passed the checks");
    }

    #[test]
    fn discrete_gaussian_sigma2_4() {
        let draws = draw_many(4, DRAWS, |r| discrete_gaussian(r, rational(4, 1)));
        check("Gaussian(4)", &draws, &gaussian_pmf(4.0), 4).expect("matches");
    }

    #[test]
    fn discrete_gaussian_sigma2_10_thirds() {
        let draws = draw_many(5, DRAWS, |r| discrete_gaussian(r, rational(10, 3)));
        check("Gaussian(10/3)", &draws, &gaussian_pmf(10.0 / 3.0), 4).expect("matches");
    }

    #[test]
    fn discrete_gaussian_small_and_large_sigma() {
        // σ² = 1/5: t = 1, the rejection step does most of the work.
        let draws = draw_many(6, 200_000, |r| discrete_gaussian(r, rational(1, 5)));
        check("Gaussian(1/5)", &draws, &gaussian_pmf(0.2), 1).expect("matches");
        // σ² = 40000/3 with a large denominator in the exponent.
        let draws = draw_many(7, 100_000, |r| discrete_gaussian(r, rational(40_000, 3)));
        check(
            "Gaussian(40000/3)",
            &draws,
            &gaussian_pmf(40_000.0 / 3.0),
            231,
        )
        .expect("matches");
    }

    #[test]
    fn poisson_mean_3_halves() {
        let draws = draw_many(8, DRAWS, |r| poisson(r, rational(3, 2)).map(|k| k as i64));
        check("Poisson(3/2)", &draws, &poisson_pmf(1.5), 4).expect("matches");
    }

    #[test]
    fn poisson_mean_7() {
        let draws = draw_many(9, DRAWS, |r| poisson(r, rational(7, 1)).map(|k| k as i64));
        check("Poisson(7)", &draws, &poisson_pmf(7.0), 12).expect("matches");
    }

    #[test]
    fn poisson_large_means_by_rejection() {
        // Just at the switch to the rejection sampler, and well above it.
        let draws = draw_many(10, 100_000, |r| {
            poisson(r, rational(256, 1)).map(|k| k as i64)
        });
        check("Poisson(256)", &draws, &poisson_pmf(256.0), 290).expect("matches");
        let draws = draw_many(11, 100_000, |r| {
            poisson(r, rational(2500, 3)).map(|k| k as i64)
        });
        check("Poisson(2500/3)", &draws, &poisson_pmf(2500.0 / 3.0), 890).expect("matches");
        let draws = draw_many(12, 3_000, |r| {
            poisson(r, rational(1_000_000_001, 1000)).map(|k| k as i64)
        });
        check(
            "Poisson(1000000.001)",
            &draws,
            &poisson_pmf(1_000_000.001),
            1_002_000,
        )
        .expect("matches");
    }

    #[test]
    fn skellam_mean_5_halves() {
        let draws = draw_many(13, DRAWS, |r| skellam(r, rational(5, 2)));
        let pmf = skellam_pmf(2.5);
        assert!((pmf.central_moment(2) - 5.0).abs() < 1e-9, "variance 2μ");
        check("Skellam(5/2)", &draws, &pmf, 5).expect("matches");
    }

    #[test]
    fn skellam_large_mean() {
        let draws = draw_many(14, 100_000, |r| skellam(r, rational(3001, 2)));
        check("Skellam(3001/2)", &draws, &skellam_pmf(1500.5), 110).expect("matches");
    }

    #[test]
    fn shares_of_24_sum_to_the_whole_skellam() {
        let mean = rational(12, 1);
        let share = mean.checked_div_int(24).expect("a share");
        assert_eq!(share, rational(1, 2));
        let draws = draw_many(15, 100_000, |r| {
            (0..24).try_fold(0i64, |sum, _| Ok(sum + skellam(r, share)?))
        });
        check("24 shares of Skellam(12)", &draws, &skellam_pmf(12.0), 10).expect("matches");
    }

    #[test]
    fn bernoulli_exp_matches_exp() {
        let mut rng = rng(16);
        for (num, den) in [(0, 1), (1, 3), (1, 1), (5, 2)] {
            let gamma = rational(num, den);
            let draws = 400_000;
            let hits = (0..draws)
                .filter(|_| bernoulli_exp(&mut rng, gamma))
                .count();
            let frequency = hits as f64 / draws as f64;
            let exact = (-(num as f64) / den as f64).exp();
            let bound = 5.0 * (exact * (1.0 - exact) / draws as f64).sqrt();
            assert!(
                (frequency - exact).abs() <= bound,
                "γ = {gamma}: frequency {frequency}, exp(-γ) = {exact}"
            );
        }
        // A γ with a 64-bit numerator and denominator: exp(-(2^64-1)/(2^63)) ≈ e^-2.
        let gamma = rational(u64::MAX, 1 << 63);
        let hits = (0..100_000)
            .filter(|_| bernoulli_exp(&mut rng, gamma))
            .count();
        let exact = (-2.0f64).exp() * 100_000.0;
        assert!((hits as f64 - exact).abs() < 5.0 * exact.sqrt(), "{hits}");
    }

    #[test]
    fn uniform_and_bernoulli_are_unbiased() {
        let mut rng = rng(17);
        let mut counts = [0u64; 6];
        for _ in 0..600_000 {
            counts[uniform_below(&mut rng, 6).expect("n > 0") as usize] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - 100_000.0).powi(2) / 100_000.0)
            .sum();
        assert!(chi2 < chi_square_limit(5), "{counts:?}");
        // Wide ranges: 3 · 2^40 (64-bit words) and 3 · 2^64 (two words), by thirds.
        for n in [3u128 << 40, 3u128 << 64] {
            let mut thirds = [0u64; 3];
            for _ in 0..30_000 {
                let x = below_u128(&mut Bits::new(&mut rng), n);
                assert!(x < n);
                thirds[(x / (n / 3)) as usize] += 1;
            }
            for third in thirds {
                assert!((third as f64 - 10_000.0).abs() < 500.0, "{n}: {thirds:?}");
            }
        }
        let third = rational(1, 3);
        let hits = (0..300_000)
            .filter(|_| bernoulli(&mut rng, third).expect("p ≤ 1"))
            .count();
        assert!((hits as f64 - 100_000.0).abs() < 5.0 * (300_000.0f64 * 2.0 / 9.0).sqrt());
        assert!(bernoulli(&mut rng, Rational::ONE).expect("p = 1"));
        assert!(!bernoulli(&mut rng, Rational::ZERO).expect("p = 0"));
    }

    #[test]
    fn extreme_parameters_draw_or_refuse() {
        let mut rng = rng(18);
        // Tiny scales and variances: always zero.
        for _ in 0..1000 {
            assert_eq!(discrete_laplace(&mut rng, rational(1, 1 << 40)), Ok(0));
            assert_eq!(discrete_gaussian(&mut rng, rational(1, 1 << 40)), Ok(0));
        }
        // Huge parameters still draw, within a sensible range.
        let x = discrete_laplace(&mut rng, rational(MAX_LAPLACE_SCALE, 1)).expect("a draw");
        assert!(x.unsigned_abs() < 1 << 62, "{x}");
        for _ in 0..100 {
            let x = discrete_gaussian(&mut rng, rational(1 << 60, 1)).expect("a draw");
            assert!(x.unsigned_abs() < 12 << 30, "{x}");
            // Numerator and denominator near 2^59, σ² ≈ 2.
            let x = discrete_gaussian(&mut rng, rational((1 << 59) + 1, (1 << 58) + 3))
                .expect("a draw");
            assert!(x.abs() < 20, "{x}");
        }
        let mean = 1u64 << 32;
        let x = poisson(&mut rng, rational(mean, 1)).expect("a draw");
        assert!(x.abs_diff(mean) < 6 << 16, "{x}");
        assert_eq!(poisson(&mut rng, Rational::ZERO), Ok(0));
        assert_eq!(skellam(&mut rng, Rational::ZERO), Ok(0));
    }

    #[test]
    fn bad_parameters_are_errors() {
        let mut rng = rng(19);
        assert_eq!(Rational::new(1, 0), Err(SamplerError::ZeroDenominator));
        assert_eq!(uniform_below(&mut rng, 0), Err(SamplerError::EmptyRange));
        assert!(matches!(
            bernoulli(&mut rng, rational(3, 2)),
            Err(SamplerError::ProbabilityAboveOne { num: 3, den: 2 })
        ));
        assert!(matches!(
            discrete_laplace(&mut rng, Rational::ZERO),
            Err(SamplerError::NotPositive { .. })
        ));
        assert!(matches!(
            discrete_laplace(&mut rng, rational(MAX_LAPLACE_SCALE + 1, 1)),
            Err(SamplerError::TooLarge { .. })
        ));
        assert!(matches!(
            discrete_gaussian(&mut rng, Rational::ZERO),
            Err(SamplerError::NotPositive { .. })
        ));
        assert!(matches!(
            discrete_gaussian(&mut rng, rational(u64::MAX, 1)),
            Err(SamplerError::TooLarge { .. })
        ));
        assert!(matches!(
            poisson(&mut rng, rational(MAX_POISSON_MEAN + 1, 1)),
            Err(SamplerError::TooLarge { .. })
        ));
        assert!(matches!(
            skellam(&mut rng, rational(u64::MAX, 3)),
            Err(SamplerError::TooLarge { .. })
        ));
    }

    #[test]
    fn rationals_reduce_compare_and_refuse_overflow() {
        assert_eq!(rational(6, 4), rational(3, 2));
        assert_eq!((rational(6, 4).num(), rational(6, 4).den()), (3, 2));
        assert_eq!(rational(0, 7), Rational::ZERO);
        assert!(rational(1, 3) < rational(34, 100));
        assert!(rational(u64::MAX, u64::MAX - 1) > Rational::ONE);
        assert_eq!((rational(7, 3).floor(), rational(7, 3).ceil()), (2, 3));
        assert_eq!((rational(6, 3).floor(), rational(6, 3).ceil()), (2, 2));
        assert_eq!(rational(7, 3).to_string(), "7/3");
        assert_eq!(rational(8, 4).to_string(), "2");
        assert_eq!(
            rational(2, 3).checked_mul(rational(9, 4)),
            Ok(rational(3, 2))
        );
        assert_eq!(
            rational(2, 3).checked_div(rational(4, 9)),
            Ok(rational(3, 2))
        );
        assert_eq!(rational(5, 2).checked_div_int(24), Ok(rational(5, 48)));
        assert_eq!(
            Rational::ONE.checked_div(Rational::ZERO),
            Err(SamplerError::ZeroDenominator)
        );
        assert!(matches!(
            rational(u64::MAX, 1).checked_mul(rational(3, 1)),
            Err(SamplerError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_bit_buffer_hands_out_the_stream_in_order() {
        // The words' bits, lowest first, are the stream; any chunking must read it as is.
        let mut words = rng(21);
        let stream: Vec<bool> = (0..64)
            .flat_map(|_| {
                let word = words.next_u64();
                (0..64).map(move |i| word >> i & 1 == 1)
            })
            .collect();
        let mut source = rng(21);
        let mut bits = Bits::new(&mut source);
        let mut position = 0;
        let mut sizes = [1u32, 64, 3, 63, 17, 64, 64, 5, 60, 32, 33, 2]
            .into_iter()
            .cycle();
        while position + 200 < stream.len() {
            if position % 7 == 0 {
                let zeros = bits.zeros_before_one().expect("a one bit") as usize;
                assert!(stream[position..position + zeros].iter().all(|b| !b));
                assert!(stream[position + zeros], "a one after the zeros");
                position += zeros + 1;
                continue;
            }
            let size = sizes.next().expect("cycle");
            let value = bits.take(size);
            for i in 0..size as usize {
                assert_eq!(
                    value >> i & 1 == 1,
                    stream[position + i],
                    "bit {}",
                    position + i
                );
            }
            if size < 64 {
                assert_eq!(value >> size, 0, "only {size} bits");
            }
            position += size as usize;
        }
    }

    #[test]
    fn limb_arithmetic_matches_u128() {
        let mut rng = rng(20);
        for _ in 0..10_000 {
            let (x, y) = (rng.next_u64(), rng.next_u64());
            let mut product = [0u64; 2];
            mul_limbs(&[x], &[y], &mut product);
            let expected = u128::from(x) * u128::from(y);
            assert_eq!(product, limbs(expected));
            let z = u128::from(rng.next_u64()) << 32;
            assert_eq!(cmp_limbs(&product, &limbs(z)), expected.cmp(&z));
            if expected >= z {
                let mut difference = product;
                sub_limbs(&mut difference, &limbs(z));
                assert_eq!(difference, limbs(expected - z));
            }
        }
        // (2^128 - 1)^2 = 2^256 - 2^129 + 1.
        let mut square = [0u64; 4];
        mul_limbs(&limbs(u128::MAX), &limbs(u128::MAX), &mut square);
        assert_eq!(square, [1, 0, u64::MAX - 1, u64::MAX]);
    }

    #[test]
    fn noise_stream_is_pinned() {
        // A released value's noise must not change under a repeat; changing how the
        // samplers use random bits changes every node's noise, so it must be deliberate.
        let mut rng = rng(2020);
        let laplace: Vec<i64> = (0..6)
            .map(|_| discrete_laplace(&mut rng, rational(7, 3)).expect("draw"))
            .collect();
        let gaussian: Vec<i64> = (0..6)
            .map(|_| discrete_gaussian(&mut rng, rational(10, 3)).expect("draw"))
            .collect();
        let small: Vec<u64> = (0..6)
            .map(|_| poisson(&mut rng, rational(7, 2)).expect("draw"))
            .collect();
        let large: Vec<u64> = (0..6)
            .map(|_| poisson(&mut rng, rational(2500, 3)).expect("draw"))
            .collect();
        let shares: Vec<i64> = (0..6)
            .map(|_| skellam(&mut rng, rational(5, 2)).expect("draw"))
            .collect();
        assert_eq!(laplace, [-3, 5, -1, 12, -3, 4]);
        assert_eq!(gaussian, [1, 0, -3, 1, 1, -1]);
        assert_eq!(small, [5, 1, 3, 1, 2, 3]);
        assert_eq!(large, [854, 850, 842, 836, 833, 791]);
        assert_eq!(shares, [0, -3, -1, -1, -2, 3]);
    }

    #[test]
    fn no_floating_point_on_the_sampling_path() {
        let source = include_str!("sampler.rs");
        let marker = ["#[cfg", "(test)]"].concat();
        let (sampling, _) = source.split_once(&marker).expect("a test module");
        for token in ["f64", "f32"] {
            assert!(!sampling.contains(token), "{token} in the sampler");
        }
        for (number, line) in sampling.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            assert!(
                !code.contains("as f"),
                "a float cast on line {}",
                number + 1
            );
            let bytes = code.as_bytes();
            let float_literal = bytes
                .windows(3)
                .any(|w| w[0].is_ascii_digit() && w[1] == b'.' && w[2].is_ascii_digit());
            assert!(!float_literal, "a float literal on line {}", number + 1);
        }
    }
}
