//! Differential privacy at the node: the noise added to what a site releases, and the
//! secret that makes the same question on the same data always draw the same noise
//! (DESIGN.md, "Studies and privacy budgets").
//!
//! # Layout
//! - [`sampler`]: exact discrete Laplace, discrete Gaussian, Poisson and Skellam draws in
//!   integer arithmetic.
//! - [`secret`]: the node's noise secret and the seed of each noise stream.
//! - [`margin`]: variances and 95 % margins of the noise, for results (floating point:
//!   metadata only).
//! - [`policy`]: the site's `[privacy]` policy and the noise it gives one question.
//! - [`ledger`]: what each study has spent of its budget here, from the audit log.
//! - [`noise`]: the noise added to a per-site release or a secure round's vector.

pub mod ledger;
pub mod margin;
pub mod noise;
pub mod policy;
pub mod sampler;
pub mod secret;
