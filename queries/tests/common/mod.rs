//! What the query tests share: the planner's entry point under short names.

#![allow(dead_code, unreachable_pub)]

use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use ern_queries::split::SplitError;
use ern_queries::{Dominance, Planner, QueryPlan, Refusal, Rule, SiteFacts};

/// Plans and validates `sql` as the coordinator and nodes do.
pub async fn validate(sql: &str, state: &SessionState) -> Result<QueryPlan, Refusal> {
    Planner::new().plan(sql, state).await
}

/// The site plan of `query` for a site with `facts` and the default dominance rule.
pub fn site_plan(query: &QueryPlan, facts: &SiteFacts) -> Result<LogicalPlan, SplitError> {
    query
        .site_plan(facts, Dominance::default())
        .map(|site| site.plan)
}

/// Asserts that every question in `sqls` is refused by `rule`, with `reason` (when
/// given) in what the researcher reads.
pub async fn assert_all_refused(
    sqls: &[&str],
    state: &SessionState,
    rule: Rule,
    reason: Option<&str>,
) {
    for sql in sqls {
        let refusal = validate(sql, state).await.expect_err(sql);
        assert_eq!(refusal.rule, rule, "{sql}: {refusal}");
        if let Some(reason) = reason {
            assert!(refusal.to_string().contains(reason), "{sql}: {refusal}");
        }
    }
}

/// Asserts that every question in `sqls` is accepted.
pub async fn assert_all_accepted(sqls: &[&str], state: &SessionState) {
    for sql in sqls {
        validate(sql, state)
            .await
            .unwrap_or_else(|refusal| panic!("{sql}: {refusal}"));
    }
}
