//! The Steward service: a site's data stewards review and decide the questions that
//! target their site, and no other site's. Approvals are signed on the steward's machine;
//! the coordinator stores them as received and forwards them to the node, which alone
//! verifies them against its own steward keys.

use std::sync::Arc;

use ern_proto::approval::Approval;
use ern_proto::v1;
use ern_proto::v1::steward_server::Steward;
use ern_queries::ValidationReport;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::core::{Coordinator, echoed, internal};
use crate::db::Reapproval;
use crate::lifecycle::SiteStep;
use crate::model::{StoredQuery, Target, User, now_seconds};
use crate::paging::PageRequest;
use crate::services::StudyTitles;

/// Longest rejection reason, in characters.
const MAX_REASON: usize = 2000;

/// The Steward service over the shared core.
#[derive(Debug, Clone)]
pub struct StewardService {
    core: Arc<Coordinator>,
}

impl StewardService {
    /// A service over `core`.
    pub fn new(core: Arc<Coordinator>) -> Self {
        StewardService { core }
    }

    /// A question that targets the steward's site, with that site's target; NOT_FOUND
    /// otherwise (another site's work looks absent).
    fn site_query(&self, user: &User, query_id: &str) -> Result<(StoredQuery, Target), Status> {
        let not_found = || {
            Status::not_found(format!(
                "no question {} for site {}",
                echoed(query_id),
                user.site
            ))
        };
        let query = self
            .core
            .db()
            .query(query_id)
            .map_err(internal)?
            .ok_or_else(not_found)?;
        let target = self
            .core
            .db()
            .targets(query_id)
            .map_err(internal)?
            .into_iter()
            .find(|t| t.site == user.site)
            .ok_or_else(not_found)?;
        Ok((query, target))
    }

    /// The steward's report of a question: the one stored at submission, or (for a
    /// question stored without one) the kept plan's.
    async fn report_of(&self, query: &StoredQuery) -> Result<ValidationReport, Status> {
        let stored = self.core.db().report(&query.id).map_err(internal)?;
        if let Some(report) = stored
            .filter(|json| !json.is_empty())
            .and_then(|json| serde_json::from_str(&json).ok())
        {
            return Ok(report);
        }
        match self.core.plan_of(query).await {
            Ok(plan) => Ok(plan.report().clone()),
            // Accepted at submission, so this means the rules changed since; say so.
            Err(refusal) => Err(Status::failed_precondition(refusal.to_string())),
        }
    }
}

fn not_awaiting(query_id: &str, target: &Target) -> Status {
    Status::failed_precondition(format!(
        "question {query_id} is {} at site {}, not awaiting approval",
        target.state.as_str(),
        target.site
    ))
}

#[tonic::async_trait]
impl Steward for StewardService {
    async fn list_pending(
        &self,
        request: Request<v1::ListPendingRequest>,
    ) -> Result<Response<v1::ListPendingResponse>, Status> {
        let user = auth::caller(&request)?;
        let list = request.get_ref();
        let page = PageRequest::parse(list.page_size, &list.page_token)?;
        let mut pending = self
            .core
            .db()
            .pending_for_site(&user.site, now_seconds(), page.after_row(0)?, page.fetch())
            .map_err(internal)?;
        let next_page_token = page.finish(&mut pending, |(row, _)| row.to_string());
        let mut titles = StudyTitles::default();
        let mut queries = Vec::with_capacity(pending.len());
        for (_, q) in pending {
            let study_title = titles.of(&self.core, &q.study_id)?;
            queries.push(v1::PendingQuery {
                query_id: q.id,
                title: q.title,
                submitted_by: q.submitted_by,
                submitted_at: q.submitted_at,
                deadline: q.deadline,
                study_id: q.study_id,
                study_title,
            });
        }
        Ok(Response::new(v1::ListPendingResponse {
            queries,
            next_page_token,
        }))
    }

    async fn show_query(
        &self,
        request: Request<v1::ShowQueryRequest>,
    ) -> Result<Response<v1::QueryReview>, Status> {
        let user = auth::caller(&request)?;
        let (query, target) = self.site_query(&user, &request.get_ref().query_id)?;
        let report = self.report_of(&query).await?;
        let study = self
            .core
            .db()
            .study(&query.study_id)
            .map_err(internal)?
            .unwrap_or_default();
        let k = self
            .core
            .db()
            .node(&user.site)
            .map_err(internal)?
            .map_or(0, |node| node.k);
        let privacy =
            self.core
                .site_privacy(&user.site)
                .map_or_else(v1::SitePrivacy::default, |site| v1::SitePrivacy {
                    reported: true,
                    enabled: site.policy.enabled,
                    mechanism: site.policy.mechanism.clone(),
                    epsilon_micro: site.policy.epsilon_micro,
                    budget_micro: site.policy.budget_micro,
                    spent_micro: site.spent_micro.get(&query.study_id).copied().unwrap_or(0),
                });
        Ok(Response::new(v1::QueryReview {
            query_id: query.id,
            title: query.title,
            purpose: query.purpose,
            sql: query.sql,
            query_hash: query.query_hash,
            site: user.site.clone(),
            tables: report.tables.into_iter().collect(),
            columns: report.columns.into_iter().collect(),
            aggregates: report.aggregates,
            group_by: report.group_by,
            k,
            submitted_by: query.submitted_by,
            deadline: query.deadline,
            status: Some(target.to_proto()),
            mode: report.mode,
            domain: report.domain,
            cells: report.cells,
            per_site_reason: report.per_site_reason.unwrap_or_default(),
            study_id: query.study_id,
            study_title: study.title,
            study_purpose: study.purpose,
            study_researchers: study.researchers,
            privacy: Some(privacy),
        }))
    }

    async fn approve(
        &self,
        request: Request<v1::ApproveRequest>,
    ) -> Result<Response<v1::DecisionResponse>, Status> {
        let user = auth::caller(&request)?;
        let approve = request.into_inner();
        let (query, target) = self.site_query(&user, &approve.query_id)?;
        let now = now_seconds();
        // The study is the question's, as the steward's review showed it: the statement
        // the steward signed names it, and the node checks it against the work's.
        let approval = Approval::received(approve, &user.site, &query.study_id, &query.query_hash)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if approval.expires_at <= now {
            return Err(Status::invalid_argument("the approval has already expired"));
        }
        let (id, steward) = (query.id.clone(), user.name.clone());
        // A part that no longer awaits approval may be approved again when its refusal
        // was the approval's (expired, unknown key, ...) or this steward rejected it.
        let decided = self
            .core
            .commit("an approval", move |db| {
                if db.approve(&id, &steward, &approval, now)? {
                    return Ok(Reapproval::Reapproved);
                }
                if target.state.is_final() {
                    db.reapprove(&id, &steward, &approval, now)
                } else {
                    Ok(Reapproval::Refused(String::new()))
                }
            })
            .await?;
        match decided {
            Reapproval::Reapproved => {}
            Reapproval::Refused(why) if why.is_empty() => {
                let (_, target) = self.site_query(&user, &query.id)?;
                return Err(not_awaiting(&query.id, &target));
            }
            Reapproval::Refused(why) => return Err(Status::failed_precondition(why)),
        }
        tracing::info!(query = %query.id, site = %user.site, steward = %user.name, "approved");
        self.core.dispatch(&user.site).await?;
        self.core.advance_secure(&query.id).await?;
        let (_, target) = self.site_query(&user, &query.id)?;
        Ok(Response::new(v1::DecisionResponse {
            status: Some(target.to_proto()),
        }))
    }

    async fn reject(
        &self,
        request: Request<v1::RejectRequest>,
    ) -> Result<Response<v1::DecisionResponse>, Status> {
        let user = auth::caller(&request)?;
        let reject = request.into_inner();
        let reason = reject.reason.trim().to_string();
        if reason.is_empty() || reason.chars().count() > MAX_REASON {
            return Err(Status::invalid_argument(format!(
                "a rejection needs a reason of 1-{MAX_REASON} characters"
            )));
        }
        let (query, target) = self.site_query(&user, &reject.query_id)?;
        let (id, site, steward) = (query.id.clone(), user.site.clone(), user.name.clone());
        let moved = self
            .core
            .commit("a rejection", move |db| {
                db.step(
                    &id,
                    &site,
                    SiteStep::Reject,
                    &steward,
                    &reason,
                    now_seconds(),
                )
            })
            .await?;
        if !moved {
            return Err(not_awaiting(&query.id, &target));
        }
        self.core.advance_secure(&query.id).await?;
        self.core.finalize(&query.id).await?;
        let (_, target) = self.site_query(&user, &query.id)?;
        Ok(Response::new(v1::DecisionResponse {
            status: Some(target.to_proto()),
        }))
    }
}
