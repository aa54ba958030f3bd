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
        expires_at: user.expires_at,
    }
}

/// The longest lifetime a token may be given: ten years.
const MAX_TOKEN_SECONDS: u64 = 10 * 366 * 86_400;

/// When a token given now for `seconds` expires (0 seconds: never).
fn expiry(now: u64, seconds: u64) -> Result<u64, Status> {
    match seconds {
        0 => Ok(0),
        s if s > MAX_TOKEN_SECONDS => Err(Status::invalid_argument(
            "a token lives at most ten years (or give no expiry)",
        )),
        s => Ok(now.saturating_add(s)),
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
                certificate_serial: self
                    .core
                    .db()
                    .last_certificate(&site)
                    .map_err(internal)?
                    .unwrap_or_default(),
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
        let enrolment = auth::Enrolment {
            name: add.name.clone(),
            role,
            site: add.site.trim().to_string(),
            new_site: add.new_site,
            expires_at: expiry(now, add.expires_in_seconds)?,
        };
        let token = self
            .core
            .commit("an enrolment", move |db| {
                auth::enrol(db, &operator.name, &enrolment, now)
            })
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
        let rotate = request.into_inner();
        let expires_at = expiry(now_seconds(), rotate.expires_in_seconds)?;
        let (user, token) = self
            .core
            .commit("a token rotation", move |db| {
                auth::rotate(db, &rotate.name, expires_at)
            })
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

    async fn revoke_node_certificate(
        &self,
        request: Request<v1::RevokeCertificateRequest>,
    ) -> Result<Response<v1::RevokeCertificateResponse>, Status> {
        let operator = auth::caller(&request)?;
        let revoke = request.into_inner();
        let site = revoke.site.trim().to_string();
        let serial = match revoke.serial.trim() {
            "" => self
                .core
                .db()
                .last_certificate(&site)
                .map_err(internal)?
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "no node of site {} has presented a certificate yet: give its serial (--serial)",
                        echoed(&site)
                    ))
                })?,
            text => crate::pki::parse_serial(text).ok_or_else(|| {
                Status::invalid_argument("a certificate serial is up to 64 hex digits")
            })?,
        };
        let now = now_seconds();
        let event = Event {
            at: now,
            actor: operator.name.clone(),
            kind: EventKind::CertificateRevoked,
            query_id: String::new(),
            site: site.clone(),
            detail: format!("serial {serial}"),
        };
        let (stored_site, stored_serial) = (site.clone(), serial.clone());
        self.core
            .commit("a certificate revocation", move |db| {
                db.revoke_certificate(&stored_serial, &stored_site, now, &operator.name)?;
                db.record_event(&event)
            })
            .await?;
        let stream_closed = self.core.close_certificate_stream(&serial).await;
        tracing::warn!(target: "ern::link", site, serial, stream_closed, "node certificate revoked");
        Ok(Response::new(v1::RevokeCertificateResponse {
            site,
            serial,
            stream_closed,
        }))
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
