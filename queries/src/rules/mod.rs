//! The disclosure-control rules of DESIGN.md, one module each, and the refusal a
//! researcher sees.
//!
//! | Rule | What it says | Where |
//! |------|--------------|-------|
//! | 1 | one statement, a query, over the registered tables | [`one_query`] |
//! | 2 | one aggregation barrier at the top; per-patient aggregation below | [`barrier`] |
//! | 3 | pid only in joins, `COUNT(DISTINCT pid)`, per-patient keys; one pid class | [`pid_use`] |
//! | 4 | released aggregates, and the plain values that flow into them | [`barrier_aggregates`] |
//! | 5 | allowlisted, total functions; no windows, grouping sets, subquery expressions | [`functions`] (lists in [`crate::allowlist`]) |
//! | 6 | k distinct patients per group, and the dominance rule | [`group_size`] (hidden columns added by [`crate::split`]) |
//! | 7 | no data in errors: nothing that can fail on one patient's value | [`no_data_in_errors`] |
//! | 8 | limits on size, nesting, scans, time and memory | [`resource_limits`] |
//!
//! [`crate::validate`] walks the plan and asks each rule about each node; every refusal
//! is made by a constructor of its rule's module, written once. A refusal names the rule,
//! the part of the query that broke it (as the researcher wrote it, or as DataFusion
//! prints it) and a hint. It never holds a data value: validation runs on the plan, before
//! any data is read.

pub mod barrier;
pub mod barrier_aggregates;
pub mod functions;
pub mod group_size;
pub mod no_data_in_errors;
pub mod one_query;
pub mod pid_use;
pub mod resource_limits;

use std::fmt;

use crate::shown::shown_bounded;

/// The disclosure-control rules, numbered as in DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// 1. One statement, a query, over the registered tables only.
    OneQuery,
    /// 2. One aggregation barrier at the top; below it, aggregation only per patient.
    AggregationBarrier,
    /// 3. `pid` only in equi-joins, `COUNT(DISTINCT pid)` and per-patient grouping.
    PidUse,
    /// 4. Barrier aggregates: COUNT, COUNT(DISTINCT pid), SUM, AVG and the spreads
    ///    (VAR_SAMP, VAR_POP, STDDEV_SAMP, STDDEV_POP) over numbers.
    BarrierAggregates,
    /// 5. Allowlisted scalar functions; no windows, grouping sets or subquery expressions.
    AllowedFunctions,
    /// 6. Every released group holds at least k distinct patients.
    MinimumGroupSize,
    /// 7. Errors never reveal data.
    NoDataInErrors,
    /// 8. Time, memory and output limits.
    ResourceLimits,
}

impl Rule {
    /// The rule's number in DESIGN.md.
    pub fn number(self) -> u8 {
        match self {
            Rule::OneQuery => 1,
            Rule::AggregationBarrier => 2,
            Rule::PidUse => 3,
            Rule::BarrierAggregates => 4,
            Rule::AllowedFunctions => 5,
            Rule::MinimumGroupSize => 6,
            Rule::NoDataInErrors => 7,
            Rule::ResourceLimits => 8,
        }
    }

    /// A short, stable name (used in audit logs and tests).
    pub fn name(self) -> &'static str {
        match self {
            Rule::OneQuery => "one-query",
            Rule::AggregationBarrier => "aggregation-barrier",
            Rule::PidUse => "pid-use",
            Rule::BarrierAggregates => "barrier-aggregates",
            Rule::AllowedFunctions => "allowed-functions",
            Rule::MinimumGroupSize => "minimum-group-size",
            Rule::NoDataInErrors => "no-data-in-errors",
            Rule::ResourceLimits => "resource-limits",
        }
    }

    /// What the rule says, in one line.
    pub fn summary(self) -> &'static str {
        match self {
            Rule::OneQuery => "one statement, a query, over the registered tables only",
            Rule::AggregationBarrier => {
                "the released rows come from one aggregation at the top; below it, aggregation only per patient"
            }
            Rule::PidUse => {
                "pid may appear only in equi-joins, in COUNT(DISTINCT pid) and as the key of a per-patient grouping"
            }
            Rule::BarrierAggregates => {
                "released aggregates are COUNT, COUNT(DISTINCT pid), SUM, AVG, VAR and STDDEV over numbers, without FILTER or conditions inside"
            }
            Rule::AllowedFunctions => {
                "scalar functions come from an allowlist; no window functions, grouping sets or subqueries in expressions"
            }
            Rule::MinimumGroupSize => "every released group holds at least k distinct patients",
            Rule::NoDataInErrors => "errors never reveal a data value",
            Rule::ResourceLimits => "every execution has time, memory and output limits",
        }
    }

    /// Parses a rule name as printed by [`Rule::name`].
    pub fn from_name(name: &str) -> Option<Rule> {
        ALL_RULES.into_iter().find(|rule| rule.name() == name)
    }
}

/// Every rule, in order.
pub const ALL_RULES: [Rule; 8] = [
    Rule::OneQuery,
    Rule::AggregationBarrier,
    Rule::PidUse,
    Rule::BarrierAggregates,
    Rule::AllowedFunctions,
    Rule::MinimumGroupSize,
    Rule::NoDataInErrors,
    Rule::ResourceLimits,
];

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {} ({})", self.number(), self.name())
    }
}

/// Why a query is refused: a disclosure rule it breaks, or a mistake in it (a syntax
/// error, an unknown name, types that do not fit) that reads as one, not as a privacy
/// violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{part}: {reason}{}", if *mistake { "not a valid question: ".to_string() } else { format!("refused by {rule}: ") }, hint.as_ref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
pub struct Refusal {
    /// The rule broken (for a mistake, the rule that would stop it from running: 1 for
    /// syntax, names and types, 5 for an unknown function).
    pub rule: Rule,
    /// True for a mistake in the question rather than a disclosure rule broken.
    pub mistake: bool,
    /// The offending part of the query.
    pub part: String,
    /// What is wrong with it.
    pub reason: String,
    /// How to ask the question in an allowed way.
    pub hint: Option<String>,
}

impl Refusal {
    /// A refusal without a hint. The part and the reason may quote the question (a name,
    /// DataFusion's message): both are escaped and bounded, so a refusal can neither
    /// carry terminal escapes back to the researcher nor echo a 64 KiB question.
    pub fn new(rule: Rule, part: impl fmt::Display, reason: impl Into<String>) -> Self {
        Refusal {
            rule,
            mistake: false,
            part: shown_bounded(&part.to_string(), MAX_PART_CHARS),
            reason: shown_bounded(&reason.into(), MAX_REASON_CHARS),
            hint: None,
        }
    }

    /// The same, as a mistake in the question (a syntax error, an unknown name, a type
    /// that does not fit), not a disclosure rule broken.
    pub fn as_mistake(mut self) -> Self {
        self.mistake = true;
        self
    }

    /// Adds a hint (escaped and bounded like the reason).
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(shown_bounded(&hint.into(), MAX_REASON_CHARS));
        self
    }
}

/// Longest quoted part of a question in a refusal, in characters.
const MAX_PART_CHARS: usize = 160;

/// Longest reason or hint, in characters (the allowlist hint is the longest written).
const MAX_REASON_CHARS: usize = 1200;
