//! What the query tests share: the planner's entry point under short names.

#![allow(dead_code, unreachable_pub)]

use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use ern_queries::split::SplitError;
use ern_queries::{Dominance, Planner, QueryPlan, Refusal, SiteFacts};

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
