//! The Operator service: the network's nodes, its users and tokens, its audit trail.

use std::sync::Arc;

use ern_proto::v1;
use ern_proto::v1::operator_server::Operator;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::core::{Coordinator, internal};
use crate::db::Event;
use crate::lifecycle::EventKind;
use crate::model::{Role, now_seconds};
use crate::paging::PageRequest;

/// Most recent events one summary returns.
const MAX_RECENT: u32 = 1000;

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

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        auth::caller(&request)?;
        let list = request.get_ref();
        let page = PageRequest::parse(list.page_size, &list.page_token)?;
        let mut sites = self
            .core
            .db()
            .sites_page(page.after.as_deref().unwrap_or(""), page.fetch())
            .map_err(internal)?;
        let next_page_token = page.finish(&mut sites, String::clone);
        let mut nodes = Vec::new();
        for site in sites {
            let record = self.core.db().node(&site).map_err(internal)?;
            nodes.push(v1::NodeInfo {
                connected: self.core.is_connected(&site),
                last_seen: record.as_ref().map_or(0, |r| r.last_seen),
                k: record.as_ref().map_or(0, |r| r.k),
                version: record
                    .as_ref()
                    .map(|r| r.version.clone())
                    .unwrap_or_default(),
                audit_head: record.map(|r| r.audit_head).unwrap_or_default(),
                in_flight: self.core.db().in_flight(&site).map_err(internal)?,
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
            users: users
                .into_iter()
                .map(|u| v1::UserInfo {
                    name: u.name,
                    role: u.role.to_proto() as i32,
                    site: u.site,
                    created_at: u.created_at,
                })
                .collect(),
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
