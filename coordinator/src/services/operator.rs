//! The Operator service: the network's nodes, its users and tokens, its studies, its audit
//! trail.

use std::sync::Arc;

use ern_proto::v1;
use ern_proto::v1::operator_server::Operator;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::core::{Coordinator, echoed, internal};
use crate::db::{Event, StudyAdmission};
use crate::lifecycle::EventKind;
use crate::model::{Role, Study, now_seconds};
use crate::paging::PageRequest;
use crate::services::check_title_purpose;
use ern_queries::ids::is_valid_id;

/// Most recent events one summary returns.
const MAX_RECENT: u32 = 1000;

/// Most researchers named at a study's creation.
const MAX_STUDY_RESEARCHERS: usize = 1000;

/// The study an operator asks for, checked for shape: a well-formed id, a title and a
/// purpose within their lengths, one or more well-formed researcher names (sorted, each
/// once).
fn study_of_request(add: v1::AddStudyRequest, created_by: &str, now: u64) -> Result<Study, Status> {
    let id = add.id.trim().to_string();
    if !is_valid_id(&id) {
        return Err(Status::invalid_argument(format!(
            "study id {} is malformed: a study id is 1-128 ASCII letters, digits, -, _ and . (not first)",
            echoed(&id)
        )));
    }
    let (title, purpose) = (add.title.trim().to_string(), add.purpose.trim().to_string());
    check_title_purpose("study", &title, &purpose, true)?;
    let mut researchers: Vec<String> = add
        .researchers
        .iter()
        .map(|name| name.trim().to_string())
        .collect();
    researchers.sort();
    researchers.dedup();
    if researchers.is_empty() {
        return Err(Status::invalid_argument(
            "a study needs at least one researcher",
        ));
    }
    if researchers.len() > MAX_STUDY_RESEARCHERS {
        return Err(Status::invalid_argument(format!(
            "researchers limit: a study is created with at most {MAX_STUDY_RESEARCHERS} researchers"
        )));
    }
    if let Some(bad) = researchers.iter().find(|name| !is_valid_id(name)) {
        return Err(Status::invalid_argument(format!(
            "no researcher {} is enrolled: a user name is 1-128 ASCII letters, digits, -, _ and . (not first)",
            echoed(bad)
        )));
    }
    Ok(Study {
        id,
        title,
        purpose,
        researchers,
        created_at: now,
        created_by: created_by.to_string(),
    })
}

/// The Operator service over the shared core.
#[derive(Debug, Clone)]
pub struct OperatorService {
    core: Arc<Coordinator>,
}

impl OperatorService {
    /// A service over `core`.
    pub fn new(core: Arc<Coordinator>) -> Self {
        OperatorService { core }
    }
}

impl OperatorService {
    /// What follows a revocation or a rotation: a node user's live stream is closed (its
    /// old token opened it), and the operator's action goes to the audit trail.
    async fn after_credential_change(
        &self,
        operator: &str,
        user: &crate::model::User,
        kind: EventKind,
    ) -> Result<(), Status> {
        if user.role == Role::Node {
            self.core.close_node_stream(&user.site).await;
        }
        tracing::info!(operator, user = %user.name, event = kind.as_str(), "credential changed");
        let event = Event {
            at: now_seconds(),
            actor: operator.to_string(),
            kind,
            query_id: String::new(),
            site: user.site.clone(),
            detail: format!("{} ({})", user.name, user.role.as_str()),
        };
        self.core
            .commit("a credential's event", move |db| db.record_event(&event))
            .await
    }
}

/// A user's wire form.
fn user_info(user: crate::model::User) -> v1::UserInfo {
    v1::UserInfo {
        name: user.name,
        role: user.role.to_proto() as i32,
        site: user.site,
        created_at: user.created_at,
    }
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        auth::caller(&request)?;
        let list = request.get_ref();
        let (sites, next_page_token) =
            super::sites_page(&self.core, list.page_size, &list.page_token)?;
        let mut nodes = Vec::new();
        for (site, record) in sites {
            let (unavailable, store_generation) = self.core.node_health(&site).unwrap_or_default();
            nodes.push(v1::NodeInfo {
                unavailable,
                store_generation,
                connected: self.core.is_connected(&site),
                last_seen: record.as_ref().map_or(0, |r| r.last_seen),
                k: record.as_ref().map_or(0, |r| r.k),
                version: record
                    .as_ref()
                    .map(|r| r.version.clone())
                    .unwrap_or_default(),
                audit_head: record.map(|r| r.audit_head).unwrap_or_default(),
                in_flight: self.core.db().in_flight(&site).map_err(internal)?,
                duplicates_refused: self.core.duplicates_refused(&site).0,
                last_duplicate_at: self.core.duplicates_refused(&site).1,
                site,
            });
        }
        Ok(Response::new(v1::ListNodesResponse {
            nodes,
            next_page_token,
        }))
    }

    async fn add_user(
        &self,
        request: Request<v1::AddUserRequest>,
    ) -> Result<Response<v1::AddUserResponse>, Status> {
        let operator = auth::caller(&request)?;
        let add = request.into_inner();
        let role = v1::Role::try_from(add.role)
            .ok()
            .and_then(Role::from_proto)
            .ok_or_else(|| Status::invalid_argument("a user needs a role"))?;
        let now = now_seconds();
        let (name, site) = (add.name.clone(), add.site.trim().to_string());
        let token = self
            .core
            .commit("an enrolment", move |db| {
                auth::enrol(db, &name, role, &site, now)
            })
            .await?;
        let event = Event {
            at: now,
            actor: operator.name,
            kind: EventKind::UserAdded,
            query_id: String::new(),
            site: add.site.trim().to_string(),
            detail: format!("{} ({})", add.name, role.as_str()),
        };
        self.core
            .commit("an enrolment's event", move |db| db.record_event(&event))
            .await?;
        Ok(Response::new(v1::AddUserResponse {
            name: add.name,
            token,
        }))
    }

    async fn list_users(
        &self,
        request: Request<v1::ListUsersRequest>,
    ) -> Result<Response<v1::ListUsersResponse>, Status> {
        auth::caller(&request)?;
        let list = request.get_ref();
        let page = PageRequest::parse(list.page_size, &list.page_token)?;
        let mut users = self
            .core
            .db()
            .users(page.after.as_deref().unwrap_or(""), page.fetch())
            .map_err(internal)?;
        let next_page_token = page.finish(&mut users, |user| user.name.clone());
        Ok(Response::new(v1::ListUsersResponse {
            next_page_token,
            users: users.into_iter().map(user_info).collect(),
        }))
    }

    async fn revoke_user(
        &self,
        request: Request<v1::UserRequest>,
    ) -> Result<Response<v1::UserInfo>, Status> {
        let operator = auth::caller(&request)?;
        let name = request.into_inner().name;
        if name == operator.name {
            return Err(Status::failed_precondition(
                "an operator does not revoke their own token: another operator does",
            ));
        }
        let user = self
            .core
            .db()
            .user(&name)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no user named {}", echoed(&name))))?;
        let removed_name = name.clone();
        if !self
            .core
            .commit("a revocation", move |db| db.remove_user(&removed_name))
            .await?
        {
            return Err(Status::not_found(format!(
                "no user named {}",
                echoed(&name)
            )));
        }
        self.after_credential_change(&operator.name, &user, EventKind::UserRevoked)
            .await?;
        Ok(Response::new(user_info(user)))
    }

    async fn rotate_user(
        &self,
        request: Request<v1::UserRequest>,
    ) -> Result<Response<v1::AddUserResponse>, Status> {
        let operator = auth::caller(&request)?;
        let name = request.into_inner().name;
        let (user, token) = self
            .core
            .commit("a token rotation", move |db| auth::rotate(db, &name))
            .await?;
        self.after_credential_change(&operator.name, &user, EventKind::UserRotated)
            .await?;
        Ok(Response::new(v1::AddUserResponse {
            name: user.name,
            token,
        }))
    }

    async fn add_study(
        &self,
        request: Request<v1::AddStudyRequest>,
    ) -> Result<Response<v1::Study>, Status> {
        let operator = auth::caller(&request)?;
        let study = study_of_request(request.into_inner(), &operator.name, now_seconds())?;
        let stored = study.clone();
        let admission = self
            .core
            .commit("a study", move |db| db.add_study(&stored))
            .await?;
        match admission {
            StudyAdmission::Added => {}
            StudyAdmission::Exists => {
                return Err(Status::already_exists(format!(
                    "a study {} exists",
                    study.id
                )));
            }
            StudyAdmission::UnknownUser(name) => {
                return Err(Status::invalid_argument(format!(
                    "no researcher {name} is enrolled (`ern operator user add {name} --role researcher` enrols one)"
                )));
            }
            StudyAdmission::NotResearcher(name) => {
                return Err(Status::invalid_argument(format!(
                    "user {name} is not a researcher: only researchers are put on a study"
                )));
            }
        }
        tracing::info!(study = %study.id, operator = %operator.name, researchers = study.researchers.len(), "study added");
        Ok(Response::new(study.to_proto()))
    }

    async fn list_studies(
        &self,
        request: Request<v1::ListStudiesRequest>,
    ) -> Result<Response<v1::ListStudiesResponse>, Status> {
        auth::caller(&request)?;
        let list = request.get_ref();
        let page = PageRequest::parse(list.page_size, &list.page_token)?;
        let mut studies = self
            .core
            .db()
            .studies(None, page.after.as_deref().unwrap_or(""), page.fetch())
            .map_err(internal)?;
        let next_page_token = page.finish(&mut studies, |study| study.id.clone());
        Ok(Response::new(v1::ListStudiesResponse {
            studies: studies.iter().map(|study| study.to_proto()).collect(),
            next_page_token,
        }))
    }

    async fn audit_summary(
        &self,
        request: Request<v1::AuditSummaryRequest>,
    ) -> Result<Response<v1::AuditSummaryResponse>, Status> {
        auth::caller(&request)?;
        let recent = match request.get_ref().recent {
            0 => 20,
            n => n.min(MAX_RECENT),
        };
        let summary = self.core.db().audit_summary(recent).map_err(internal)?;
        Ok(Response::new(v1::AuditSummaryResponse {
            counts: summary
                .counts
                .into_iter()
                .map(|(kind, count)| v1::EventCount { kind, count })
                .collect(),
            recent: summary
                .recent
                .into_iter()
                .map(|e| v1::AuditEvent {
                    at: e.at,
                    actor: e.actor,
                    kind: e.kind.to_string(),
                    query_id: e.query_id,
                    site: e.site,
                    detail: e.detail,
                })
                .collect(),
        }))
    }
}
