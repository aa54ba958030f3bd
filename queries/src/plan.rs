//! One question's plan, built once: the single entry point from SQL to everything the
//! coordinator and the nodes derive from it.
//!
//! A [`Planner`] turns SQL into a [`QueryPlan`]: the validated logical plan and its
//! barrier, the steward's report, the released schema and width, the per-site plan for a
//! site's facts, and the merge. The coordinator builds one at submission and keeps it for
//! the question's life (rebuilt once from the stored SQL after a restart); a node builds
//! one per execution from the SQL it receives. Nothing outside this crate repeats a rule
//! of the split: the width check, the schemas and the merge are asked of the plan.
//!
//! Each [`Planner`] counts the plans it has built, so a test can prove that a question is
//! validated once per party and execution, not on every look at it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::LogicalPlan;

use crate::bounding::{Bounding, Sensitivity, sensitivity};
use crate::domain::{self, AggregationMode};
use crate::fingerprint::Fingerprint;
use crate::rules::Refusal;
use crate::rules::group_size::Dominance;
use crate::secure::SecureLayout;
use crate::split::{self, Concentration, SplitError};
use crate::uniqueness::SiteFacts;
use crate::validate::{Barrier, ValidatedQuery, ValidationReport, report_mode, validate};

/// Most values a node's vector may hold: 3 MiB of u64, inside a node's 4 MiB message.
pub const MAX_SECURE_VALUES: usize = 3 << 17;

/// Builds [`QueryPlan`]s and counts them.
#[derive(Debug, Default)]
pub struct Planner {
    built: AtomicU64,
}

impl Planner {
    /// A planner that has built nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses, plans and validates `sql` against the tables and functions of `state`
    /// (rules 1-8 of DESIGN.md): the one way a question becomes a plan.
    pub async fn plan(&self, sql: &str, state: &SessionState) -> Result<QueryPlan, Refusal> {
        self.built.fetch_add(1, Ordering::Relaxed);
        let validated = validate(sql, state).await?;
        let mut plan = QueryPlan {
            validated,
            released: OnceLock::new(),
            mode: OnceLock::new(),
            layout: OnceLock::new(),
        };
        let mode = plan.derive_mode();
        report_mode(&mode, &mut plan.validated.report);
        let _ = plan.mode.set(mode);
        Ok(plan)
    }

    /// How many plans this planner has been asked to build (refused ones included).
    pub fn plans_built(&self) -> u64 {
        self.built.load(Ordering::Relaxed)
    }
}

/// Everything derived from one question's SQL.
#[derive(Debug)]
pub struct QueryPlan {
    validated: ValidatedQuery,
    /// The released schema, derived from a site plan on first use.
    released: OnceLock<Result<SchemaRef, String>>,
    /// Secure aggregation or per-site suppression, derived on first use.
    mode: OnceLock<AggregationMode>,
    /// The vector layout of a secure question, derived on first use.
    layout: OnceLock<Result<SecureLayout, String>>,
}

/// A site's plan for one question, with the schema of what the site may release.
#[derive(Debug, Clone)]
pub struct SitePlan {
    /// The plan the site runs: group keys, partials and hidden counts.
    pub plan: LogicalPlan,
    /// The plan's output without the hidden counts: what leaves the site.
    pub released: SchemaRef,
    /// How far one patient can move each released number, for a bounded plan (a site
    /// that noises its release); `None` for an unbounded one.
    pub sensitivity: Option<Sensitivity>,
}

impl QueryPlan {
    /// The exact SQL text the plan was built from.
    pub fn sql(&self) -> &str {
        &self.validated.sql
    }

    /// What the sites release, as a fingerprint: SHA-256 (hex) of an unambiguous
    /// encoding of the barrier's input plan, its GROUP BY and its aggregates (see
    /// [`crate::fingerprint`]), so two texts that differ only in white space, comments,
    /// output names, ORDER BY or LIMIT have the same one, and two questions that release
    /// different numbers never do. A node keys "one release of a question, one way" and
    /// its noise by it (red team: the same question resubmitted under a new id, over fewer
    /// sites or per site, read one site's numbers off the difference; `NOT (a AND b)` and
    /// `NOT a AND b` printed alike and shared their noise).
    pub fn fingerprint(&self) -> String {
        let barrier = &self.validated.barrier;
        let mut fingerprint = Fingerprint::new("ern released-barrier v2");
        fingerprint.plan(&barrier.input);
        fingerprint.text("group");
        for group in &barrier.group_exprs {
            fingerprint.expr(group);
        }
        fingerprint.text("aggregate");
        for aggregate in &barrier.aggregates {
            fingerprint.expr(&aggregate.expr);
        }
        fingerprint.finish()
    }

    /// What a steward sees of the question before approving it.
    pub fn report(&self) -> &ValidationReport {
        &self.validated.report
    }

    /// The full validated (unoptimised) logical plan.
    pub fn logical_plan(&self) -> &LogicalPlan {
        &self.validated.plan
    }

    /// The aggregation barrier: what the sites compute and the merge rebuilds.
    pub fn barrier(&self) -> &Barrier {
        &self.validated.barrier
    }

    /// The schema of the researcher's merged table.
    pub fn result_schema(&self) -> SchemaRef {
        Arc::new(self.validated.plan.schema().as_arrow().clone())
    }

    /// The per-site plan for a site that has verified `facts` about its tables, under its
    /// dominance rule.
    pub fn site_plan(
        &self,
        facts: &SiteFacts,
        dominance: Dominance,
    ) -> Result<SitePlan, SplitError> {
        self.bounded_site_plan(facts, Concentration::TopShare(dominance), None)
    }

    /// The per-site plan with each patient's contribution bounded by `bounding` (see
    /// [`crate::bounding`]), and its sensitivities; unbounded where `bounding` is `None`.
    /// `concentration` is the site's dominance share (per-site release) or the moments
    /// (secure aggregation).
    pub fn bounded_site_plan(
        &self,
        facts: &SiteFacts,
        concentration: Concentration,
        bounding: Option<Bounding>,
    ) -> Result<SitePlan, SplitError> {
        let barrier = &self.validated.barrier;
        let plan = split::site_plan(barrier, facts, concentration, bounding)?;
        let released = split::released_of(&plan);
        let sensitivity = bounding
            .map(|bounding| {
                sensitivity(
                    barrier,
                    bounding,
                    split::one_row_per_patient(barrier, facts),
                )
            })
            .transpose()?;
        Ok(SitePlan {
            plan,
            released,
            sensitivity,
        })
    }

    /// Whether the question is aggregated securely (every GROUP BY key has a public
    /// domain, and the vector over it fits a node's message) or per site, with the domain
    /// or the reason: derived from the plan alone, so every party derives the same.
    pub fn mode(&self) -> &AggregationMode {
        self.mode.get_or_init(|| self.derive_mode())
    }

    fn derive_mode(&self) -> AggregationMode {
        let mode = domain::derive(&self.validated.barrier);
        let AggregationMode::Secure(domain) = &mode else {
            return mode;
        };
        let width = self
            .secure_site_plan(&SiteFacts::default())
            .map(|site| site.plan.schema().fields().len() - domain.keys.len());
        match width {
            Ok(width) if domain.cells() * width <= MAX_SECURE_VALUES => mode,
            Ok(width) => AggregationMode::PerSite {
                reason: format!(
                    "the vector over its {} cells would hold {} values, more than {MAX_SECURE_VALUES}",
                    domain.cells(),
                    domain.cells() * width
                ),
            },
            Err(error) => AggregationMode::PerSite {
                reason: format!("its secure site plan could not be built: {error}"),
            },
        }
    }

    /// The per-site plan of a secure question: the same groups and partials as
    /// [`QueryPlan::site_plan`], with the moments of every released sum in place of the
    /// site's own dominance share (the coordinator checks concentration on totals).
    pub fn secure_site_plan(&self, facts: &SiteFacts) -> Result<SitePlan, SplitError> {
        self.bounded_site_plan(facts, Concentration::Moments, None)
    }

    /// The vector layout of a secure question (an error for a per-site one).
    pub fn secure_layout(&self) -> Result<&SecureLayout, SplitError> {
        self.layout
            .get_or_init(|| {
                let domain = match self.mode() {
                    AggregationMode::Secure(domain) => domain.clone(),
                    AggregationMode::PerSite { reason } => {
                        return Err(format!("the question runs per site: {reason}"));
                    }
                };
                let site = self
                    .secure_site_plan(&SiteFacts::default())
                    .map_err(|e| e.to_string())?;
                let released = self.released_schema().map_err(|e| e.to_string())?;
                SecureLayout::new(domain, site.plan.schema().as_arrow(), released)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| SplitError::BadPartials(e.clone()))
    }

    /// The schema of what a site releases (group keys and partials), the same at every
    /// site whatever its facts.
    pub fn released_schema(&self) -> Result<SchemaRef, SplitError> {
        self.released
            .get_or_init(|| {
                self.site_plan(&SiteFacts::default(), Dominance::default())
                    .map(|site| site.released)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(SplitError::BadPartials)
    }

    /// The number of columns a site releases.
    pub fn released_width(&self) -> Result<usize, SplitError> {
        Ok(self.released_schema()?.fields().len())
    }

    /// Checks that a site's released schema has the shape the question implies.
    pub fn check_released(&self, schema: &Schema) -> Result<(), SplitError> {
        let expected = self.released_width()?;
        if schema.fields().len() != expected {
            return Err(SplitError::BadPartials(format!(
                "{} columns where the query implies {expected}",
                schema.fields().len()
            )));
        }
        Ok(())
    }

    /// Merges the sites' released batches into the researcher's table.
    pub async fn merge(
        &self,
        site_batches: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>, SplitError> {
        let released = self.released_schema()?;
        for batch in &site_batches {
            self.check_released(&batch.schema())?;
        }
        split::merge(&self.validated, &released, site_batches).await
    }
}
