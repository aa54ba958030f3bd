//! The Researcher service: studies, submit, status, results, list. A researcher sees
//! only the studies they are on and the questions they submitted, and submits only under
//! a study they are on.

use std::sync::Arc;

use ern_proto::v1;
use ern_proto::v1::researcher_server::Researcher;
use ring::rand::{SecureRandom, SystemRandom};
use tonic::{Request, Response, Status};

use crate::auth;
use crate::core::{Coordinator, echoed, internal};
use crate::db::{Admission, Event, QueryFilter, Withdrawal};
use crate::lifecycle::{EventKind, QuestionState};
use crate::limits::{check_open_questions, check_sql_size, open_questions_refusal};
use crate::model::{StoredQuery, User, now_seconds};
use crate::paging::PageRequest;
use crate::services::{StudyTitles, check_title_purpose, study_title};

/// The longest a `GetStatus` call waits for a question to finish: under the clients'
/// call deadline, so a longer wait is a few calls, each waiting on the server.
const MAX_STATUS_WAIT_SECONDS: u32 = 30;

/// The Researcher service over the shared core.
#[derive(Debug, Clone)]
pub struct ResearcherService {
    core: Arc<Coordinator>,
}

impl ResearcherService {
    /// A service over `core`.
    pub fn new(core: Arc<Coordinator>) -> Self {
        ResearcherService { core }
    }

    /// A question of `user`, or NOT_FOUND (another researcher's question looks absent).
    fn own_query(&self, user: &User, query_id: &str) -> Result<StoredQuery, Status> {
        match self.core.db().query(query_id).map_err(internal)? {
            Some(query) if query.submitted_by == user.name => Ok(query),
            _ => Err(Status::not_found(format!(
                "you have no question {}",
                echoed(query_id)
            ))),
        }
    }

    /// Checks that `user` is a researcher on study `study_id`: NOT_FOUND for an unknown
    /// study, PERMISSION_DENIED for one they are not on.
    fn check_on_study(&self, user: &User, study_id: &str) -> Result<(), Status> {
        match self
            .core
            .db()
            .on_study(study_id, &user.name)
            .map_err(internal)?
        {
            Some(true) => Ok(()),
            Some(false) => Err(Status::permission_denied(format!(
                "you are not a researcher on study {}",
                echoed(study_id)
            ))),
            None => Err(Status::not_found(format!(
                "no study {} in this network",
                echoed(study_id)
            ))),
        }
    }

    /// Records a submission's refusal in the event log and makes it the answer.
    async fn refused_at_submit(
        &self,
        user: &User,
        refusal: &ern_queries::Refusal,
        now: u64,
    ) -> Status {
        let event = Event {
            at: now,
            actor: user.name.clone(),
            kind: EventKind::RefusedAtSubmit,
            query_id: String::new(),
            site: String::new(),
            detail: refusal.rule.name().to_string(),
        };
        // The refusal is the answer; a failure to record it is only logged.
        let _ = self
            .core
            .commit("a refusal's event", move |db| db.record_event(&event))
            .await;
        Status::invalid_argument(refusal.to_string())
    }

    /// A question over the public reference tables alone: answered here, row by row,
    /// and stored complete, without a site or a steward (see `ern_queries::public`).
    async fn answer_reference(
        &self,
        user: &User,
        submit: v1::SubmitRequest,
        study_id: String,
        title: String,
        now: u64,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let answered = tokio::time::timeout(
            REFERENCE_TIME_LIMIT,
            ern_queries::public::answer(&submit.sql),
        )
        .await
        .map_err(|_| {
            Status::resource_exhausted(format!(
                "refused by rule 8 (resource-limits): the question over the reference data ran longer than {} seconds",
                REFERENCE_TIME_LIMIT.as_secs()
            ))
        })?;
        let answer = match answered {
            Ok(answer) => answer,
            Err(refusal) => return Err(self.refused_at_submit(user, &refusal, now).await),
        };
        let rows = answer.batches.iter().map(|b| b.num_rows() as u64).sum();
        let arrow_ipc = ern_proto::arrow_ipc::encode(&answer.schema, &answer.batches)
            .map_err(|e| Status::internal(format!("encoding the reference answer: {e}")))?;
        let mut query = new_question(user, submit, study_id, title, now, now)?;
        query.complete = true;
        let result = crate::db::StoredResult {
            arrow_ipc,
            rows,
            merged_at: now,
        };
        let stored = query.clone();
        self.core
            .commit("a reference answer", move |db| {
                db.insert_reference_answer(&stored, &result)
            })
            .await?;
        tracing::info!(query = %query.id, researcher = %user.name, rows, "answered from the reference data");
        Ok(Response::new(v1::SubmitResponse {
            query_id: query.id,
            query_hash: query.query_hash,
            sites: Vec::new(),
            deadline: query.deadline,
            reference_data: true,
        }))
    }

    fn status_of(&self, query: &StoredQuery) -> Result<v1::QueryStatus, Status> {
        let targets = self.core.db().targets(&query.id).map_err(internal)?;
        let study_title = study_title(&self.core, &query.study_id)?;
        let (mode, mode_note) = self
            .core
            .db()
            .mode(&query.id)
            .map_err(internal)?
            .unwrap_or_default();
        Ok(v1::QueryStatus {
            query_id: query.id.clone(),
            title: query.title.clone(),
            state: query_state(query) as i32,
            sites: targets.iter().map(|t| t.to_proto()).collect(),
            submitted_at: query.submitted_at,
            deadline: query.deadline,
            query_hash: query.query_hash.clone(),
            failure: query.failure.clone(),
            mode,
            mode_note,
            study_id: query.study_id.clone(),
            study_title,
        })
    }
}

fn query_state(query: &StoredQuery) -> v1::QueryState {
    query.state().to_proto()
}

/// A question's state in a word, for messages.
fn query_state_name(query: &StoredQuery) -> &'static str {
    match query.state() {
        QuestionState::Open => "running",
        QuestionState::Merged => "complete",
        QuestionState::MergeFailed => "failed",
        QuestionState::Withdrawn => "withdrawn",
    }
}

/// How long the coordinator works on a question over the reference data at most.
const REFERENCE_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A fresh question id: `q-` and 12 hex characters.
fn new_query_id() -> Result<String, Status> {
    let mut bytes = [0u8; 6];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Status::internal("no random source for a question id"))?;
    Ok(format!("q-{}", hex::encode(bytes)))
}

#[tonic::async_trait]
impl Researcher for ResearcherService {
    async fn list_studies(
        &self,
        request: Request<v1::ListStudiesRequest>,
    ) -> Result<Response<v1::ListStudiesResponse>, Status> {
        let user = auth::caller(&request)?;
        let list = request.get_ref();
        let page = PageRequest::parse(list.page_size, &list.page_token)?;
        let mut studies = self
            .core
            .db()
            .studies(
                Some(&user.name),
                page.after.as_deref().unwrap_or(""),
                page.fetch(),
            )
            .map_err(internal)?;
        let next_page_token = page.finish(&mut studies, |study| study.id.clone());
        Ok(Response::new(v1::ListStudiesResponse {
            studies: studies.iter().map(|study| study.to_proto()).collect(),
            next_page_token,
        }))
    }

    async fn list_sites(
        &self,
        request: Request<v1::ListSitesRequest>,
    ) -> Result<Response<v1::ListSitesResponse>, Status> {
        auth::caller(&request)?;
        let list = request.get_ref();
        let (sites, next_page_token) =
            super::sites_page(&self.core, list.page_size, &list.page_token)?;
        let mut infos = Vec::with_capacity(sites.len());
        for (site, record) in sites {
            let privacy = self
                .core
                .site_privacy(&site)
                .map(|privacy| privacy.policy)
                .filter(|policy| policy.enabled);
            infos.push(v1::SiteInfo {
                online: self.core.is_connected(&site),
                last_seen: record.as_ref().map_or(0, |r| r.last_seen),
                k: record.as_ref().map_or(0, |r| r.k),
                noised: privacy.is_some(),
                epsilon_micro: privacy.map_or(0, |policy| policy.epsilon_micro),
                site,
            });
        }
        Ok(Response::new(v1::ListSitesResponse {
            sites: infos,
            next_page_token,
        }))
    }

    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let user = auth::caller(&request)?;
        self.core.submissions().check(&user.name)?;
        let submit = request.into_inner();
        check_sql_size(&submit.sql, self.core.limits())?;
        let study_id = submit.study_id.trim().to_string();
        if study_id.is_empty() {
            return Err(Status::invalid_argument(
                "a question belongs to a study: name one you are a researcher on (`ern studies` lists them)",
            ));
        }
        self.check_on_study(&user, &study_id)?;
        let title = submit.title.trim().to_string();
        check_title_purpose("question", &title, &submit.purpose, false)?;
        let max_deadline = self.core.timing().max_deadline.as_secs();
        if submit.deadline_seconds > max_deadline {
            return Err(Status::invalid_argument(format!(
                "deadline limit: a question may wait at most {} hours for its answers",
                max_deadline / 3600
            )));
        }
        // A first look, before the validation's work; the insert below checks again,
        // atomically, so concurrent submissions cannot pass the cap together.
        let open = self
            .core
            .db()
            .open_questions_of(&user.name)
            .map_err(internal)?;
        check_open_questions(open, self.core.limits())?;
        let now = now_seconds();
        if ern_queries::public::reads_only_reference_tables(&submit.sql) {
            return self
                .answer_reference(&user, submit, study_id, title, now)
                .await;
        }
        let plan = match self.core.plan_submission(&submit.sql).await {
            Ok(plan) => Arc::new(plan),
            Err(refusal) => return Err(self.refused_at_submit(&user, &refusal, now).await),
        };
        let enrolled = self.core.db().sites().map_err(internal)?;
        let mut sites = if submit.sites.is_empty() {
            enrolled.clone()
        } else {
            submit.sites.iter().map(|s| s.trim().to_string()).collect()
        };
        sites.sort();
        sites.dedup();
        if let Some(unknown) = sites.iter().find(|s| !enrolled.contains(s)) {
            return Err(Status::invalid_argument(format!(
                "no site {} is enrolled in this network",
                echoed(unknown)
            )));
        }
        if sites.is_empty() {
            return Err(Status::failed_precondition(
                "no site is enrolled in this network yet",
            ));
        }
        let wait = if submit.deadline_seconds == 0 {
            self.core.timing().default_deadline.as_secs()
        } else {
            submit.deadline_seconds
        };
        let query = new_question(
            &user,
            submit,
            study_id,
            title,
            now,
            now.saturating_add(wait),
        )?;
        let (stored, targets, report) = (query.clone(), sites.clone(), report_json(&plan));
        let mode = plan.mode().name();
        let max_open = u64::from(self.core.limits().max_open_questions);
        let admitted = self
            .core
            .commit("a submission", move |db| {
                db.insert_query_capped(&stored, &targets, &report, mode, max_open)
            })
            .await?;
        if let Admission::OverLimit { open } = admitted {
            return Err(open_questions_refusal(open, self.core.limits()));
        }
        self.core.keep_plan(&query.id, plan);
        tracing::info!(query = %query.id, study = %query.study_id, researcher = %user.name, sites = sites.len(), "submitted");
        Ok(Response::new(v1::SubmitResponse {
            query_id: query.id,
            query_hash: query.query_hash,
            sites,
            deadline: query.deadline,
            reference_data: false,
        }))
    }

    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::QueryStatus>, Status> {
        let user = auth::caller(&request)?;
        let mut query = self.own_query(&user, &request.get_ref().query_id)?;
        let wait = request.get_ref().wait_seconds.min(MAX_STATUS_WAIT_SECONDS);
        if wait > 0 && !query.complete {
            let merged = self.core.wait_merged(&query.id);
            // Waiting ends at the limit with the status as it is then.
            if let Ok(waited) =
                tokio::time::timeout(std::time::Duration::from_secs(u64::from(wait)), merged).await
            {
                waited?;
            }
            query = self.own_query(&user, &query.id)?;
        }
        Ok(Response::new(self.status_of(&query)?))
    }

    async fn withdraw(
        &self,
        request: Request<v1::WithdrawRequest>,
    ) -> Result<Response<v1::QueryStatus>, Status> {
        let user = auth::caller(&request)?;
        let query = self.own_query(&user, &request.get_ref().query_id)?;
        let (id, name) = (query.id.clone(), user.name.clone());
        let withdrawal = self
            .core
            .commit("a withdrawal", move |db| {
                db.withdraw(&id, &name, now_seconds())
            })
            .await?;
        match withdrawal {
            Withdrawal::Withdrawn => {
                tracing::info!(query = %query.id, researcher = %user.name, "withdrawn");
                self.core.withdrawn(&query.id);
            }
            Withdrawal::Finished => {
                return Err(Status::failed_precondition(format!(
                    "question {} has already finished ({}); there is nothing to withdraw",
                    query.id,
                    query_state_name(&query)
                )));
            }
            Withdrawal::NotFound => {
                return Err(Status::not_found(format!(
                    "no question {} of yours",
                    echoed(&query.id)
                )));
            }
        }
        let query = self.own_query(&user, &query.id)?;
        Ok(Response::new(self.status_of(&query)?))
    }

    async fn get_results(
        &self,
        request: Request<v1::GetResultsRequest>,
    ) -> Result<Response<v1::QueryResults>, Status> {
        let user = auth::caller(&request)?;
        let query = self.own_query(&user, &request.get_ref().query_id)?;
        let targets = self.core.db().targets(&query.id).map_err(internal)?;
        if query.withdrawn_at != 0 {
            return Err(Status::failed_precondition(format!(
                "question {} was withdrawn by its researcher; nothing was merged",
                query.id
            )));
        }
        if !query.failure.is_empty() {
            return Err(Status::failed_precondition(format!(
                "question {} could not be merged: {}",
                query.id, query.failure
            )));
        }
        let Some(result) = self.core.db().result(&query.id).map_err(internal)? else {
            let waiting = targets.iter().filter(|t| !t.state.is_final()).count();
            return Err(Status::failed_precondition(format!(
                "question {} is not complete: {waiting} of {} sites have not finished",
                query.id,
                targets.len()
            )));
        };
        let (mode, _) = self
            .core
            .db()
            .mode(&query.id)
            .map_err(internal)?
            .unwrap_or_default();
        let noise = crate::noise::noise_of_result(&result.arrow_ipc)
            .into_iter()
            .map(v1::AggregateNoise::from)
            .collect();
        Ok(Response::new(v1::QueryResults {
            query_id: query.id,
            arrow_ipc: result.arrow_ipc,
            rows: result.rows,
            coverage: targets.iter().map(|t| t.to_proto()).collect(),
            merged_at: result.merged_at,
            mode,
            noise,
        }))
    }

    async fn list_queries(
        &self,
        request: Request<v1::ListQueriesRequest>,
    ) -> Result<Response<v1::ListQueriesResponse>, Status> {
        let user = auth::caller(&request)?;
        let list = request.get_ref();
        let page = PageRequest::parse(list.page_size, &list.page_token)?;
        let study = list.study_id.trim();
        let study = (!study.is_empty()).then_some(study);
        if let Some(study) = study {
            self.check_on_study(&user, study)?;
        }
        let state = match v1::QueryState::try_from(list.state) {
            Ok(v1::QueryState::Unspecified) => None,
            Ok(v1::QueryState::Running) => Some(QuestionState::Open),
            Ok(v1::QueryState::Complete) => Some(QuestionState::Merged),
            Ok(v1::QueryState::Failed) => Some(QuestionState::MergeFailed),
            Ok(v1::QueryState::Withdrawn) => Some(QuestionState::Withdrawn),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "no question state {}",
                    list.state
                )));
            }
        };
        let filter = QueryFilter {
            study,
            state,
            submitted_after: list.submitted_after,
            submitted_before: list.submitted_before,
        };
        let mut rows = self
            .core
            .db()
            .queries_by(&user.name, &filter, page.after_row(i64::MAX)?, page.fetch())
            .map_err(internal)?;
        let next_page_token = page.finish(&mut rows, |(row, _)| row.to_string());
        let mut queries = Vec::new();
        let mut titles = StudyTitles::default();
        for (_, query) in rows {
            let targets = self.core.db().targets(&query.id).map_err(internal)?;
            let state = query_state(&query) as i32;
            let study_title = titles.of(&self.core, &query.study_id)?;
            queries.push(v1::QuerySummary {
                query_id: query.id,
                title: query.title,
                state,
                submitted_at: query.submitted_at,
                sites: targets.len() as u32,
                answered: targets.iter().filter(|t| t.state.contributed()).count() as u32,
                study_id: query.study_id,
                study_title,
            });
        }
        Ok(Response::new(v1::ListQueriesResponse {
            queries,
            next_page_token,
        }))
    }
}

/// The steward's report of a plan as stored with the question.
fn report_json(plan: &ern_queries::QueryPlan) -> String {
    // A report is sets and lists of strings: it always serialises.
    serde_json::to_string(plan.report()).unwrap_or_default()
}

/// A question as stored when it is submitted: open, neither merged, failed nor withdrawn
/// (one constructor for questions sent to the sites and those answered here).
fn new_question(
    user: &User,
    submit: v1::SubmitRequest,
    study_id: String,
    title: String,
    now: u64,
    deadline: u64,
) -> Result<StoredQuery, Status> {
    Ok(StoredQuery {
        id: new_query_id()?,
        study_id,
        title,
        purpose: submit.purpose.trim().to_string(),
        query_hash: ern_queries::query_hash(&submit.sql),
        sql: submit.sql,
        submitted_by: user.name.clone(),
        submitted_at: now,
        deadline,
        complete: false,
        failure: String::new(),
        withdrawn_at: 0,
    })
}
