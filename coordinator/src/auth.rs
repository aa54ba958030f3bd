//! Bearer tokens: issued once, stored only as SHA-256 hashes, checked on every call.
//!
//! A token is `ern_` followed by 64 hex characters of ring's SystemRandom. The database
//! finds the user by the token's hash; the stored hash is then compared with the computed
//! one in constant time (`subtle`), so no timing difference depends on how much of a guessed
//! token was right. Tokens never appear in logs or errors.

use ern_queries::ids::is_valid_id;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::Arc;
use subtle::ConstantTimeEq;

use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::accept::PeerInfo;
use crate::db::Db;
use crate::model::{Role, User};

/// Prefix of every token.
pub const TOKEN_PREFIX: &str = "ern_";

/// A new random token.
pub fn new_token() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> Vec<u8> {
    digest(&SHA256, token.as_bytes()).as_ref().to_vec()
}

/// The token of a request's `authorization: Bearer …` metadata. Exactly one such header:
/// with two, which one a proxy or a server reads differs, so neither is trusted.
fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let mut values = metadata.get_all("authorization").iter();
    let value = values.next().ok_or_else(|| {
        Status::unauthenticated("no authorization: send `authorization: Bearer <token>`")
    })?;
    if values.next().is_some() {
        return Err(Status::unauthenticated(
            "more than one authorization header: send exactly one",
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    text.strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))
}

/// The user behind a request, whatever its role.
pub fn authenticate(db: &Db, metadata: &MetadataMap) -> Result<User, Status> {
    let token = bearer(metadata)?;
    let hash = token_hash(token);
    let found = db.user_by_token_hash(&hash).map_err(|error| {
        tracing::error!(%error, "looking up a token");
        Status::internal("the coordinator could not check the token")
    })?;
    match found {
        Some((user, stored)) if bool::from(stored.ct_eq(&hash)) => {
            if user.expired(crate::model::now_seconds()) {
                return Err(Status::unauthenticated(
                    "this token has expired: an operator issues a new one (`ern operator user rotate`)",
                ));
            }
            Ok(user)
        }
        _ => Err(Status::unauthenticated("unknown token")),
    }
}

/// The user behind a request, who must have `role`. A refusal names the roles, never the
/// token's owner (whoever holds a stolen token learns nothing from it).
pub fn require(db: &Db, metadata: &MetadataMap, role: Role) -> Result<User, Status> {
    let user = authenticate(db, metadata)?;
    if user.role != role {
        return Err(Status::permission_denied(format!(
            "this call needs the {} role; this token is a {}'s",
            role.as_str(),
            user.role.as_str()
        )));
    }
    Ok(user)
}

/// The gate in front of one service: checks the token and the role from the request's
/// headers, before its body is read or decoded, so a caller without a valid token costs
/// the coordinator a header lookup, never a decoded message. The user it finds travels
/// to the handler in the request's extensions ([`caller`]).
#[derive(Debug, Clone)]
pub struct Gate {
    db: Arc<Db>,
    role: Role,
}

impl Gate {
    /// A gate letting through users of `role` only.
    pub fn new(db: Arc<Db>, role: Role) -> Self {
        Gate { db, role }
    }
}

/// The authenticated user of a request that passed a [`Gate`].
#[derive(Debug, Clone)]
struct Caller(User);

impl Interceptor for Gate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let user = require(&self.db, request.metadata(), self.role)?;
        // The connection lives by who calls on it (see `accept`); a node's is recorded by
        // the NodeLink service once its certificate is checked too.
        if user.role != Role::Node
            && let Some(peer) = request.extensions().get::<PeerInfo>()
        {
            peer.record_user(&user.name).map_err(|open| {
                Status::resource_exhausted(format!(
                    "connections limit: this user has {open} connections open already"
                ))
            })?;
        }
        request.extensions_mut().insert(Caller(user));
        Ok(request)
    }
}

/// The user a [`Gate`] let through. A request that never passed one is refused, so a
/// service served without its gate fails closed.
pub fn caller<T>(request: &Request<T>) -> Result<User, Status> {
    request
        .extensions()
        .get::<Caller>()
        .map(|caller| caller.0.clone())
        .ok_or_else(|| Status::unauthenticated("this service is served without its gate"))
}

/// Checks a user name, role and site before enrolment.
pub fn check_new_user(name: &str, role: Role, site: &str) -> Result<(), String> {
    if !is_valid_id(name) {
        return Err("a user name is 1-128 ASCII letters, digits, -, _ and . (not first)".into());
    }
    match (role.has_site(), site.is_empty()) {
        (true, true) => Err(format!("a {} needs a site", role.as_str())),
        (false, false) => Err(format!("a {} has no site", role.as_str())),
        (true, false) if !is_valid_id(site) => {
            Err("a site id is 1-128 ASCII letters, digits, -, _ and . (not first)".into())
        }
        _ => Ok(()),
    }
}

/// Gives the user named `name` a new token and returns it (shown once); the old token
/// stops working at once. The new one expires at `expires_at` (0: never).
pub fn rotate(db: &Db, name: &str, expires_at: u64) -> Result<(User, String), Status> {
    let stored = |error: crate::db::DbError| {
        tracing::error!(%error, "replacing a token");
        Status::internal("the coordinator could not store the token")
    };
    let mut user = db
        .user(name)
        .map_err(stored)?
        .ok_or_else(|| Status::not_found(format!("no user named {}", crate::core::echoed(name))))?;
    let token = new_token().map_err(|_| Status::internal("no random source for a token"))?;
    if !db
        .replace_token(name, &token_hash(&token), expires_at)
        .map_err(stored)?
    {
        return Err(Status::not_found(format!(
            "no user named {}",
            crate::core::echoed(name)
        )));
    }
    user.expires_at = expires_at;
    Ok((user, token))
}

/// A user to enrol.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// Unique user name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its site, for stewards and nodes; empty otherwise.
    pub site: String,
    /// Whether the operator means a site the network does not know yet (a steward or
    /// node for an unknown site is refused without it: a typo would enrol a site of its
    /// own).
    pub new_site: bool,
    /// When its token stops working; 0 if never.
    pub expires_at: u64,
}

impl Enrolment {
    /// A user of a site the network knows, whose token never expires.
    pub fn new(name: &str, role: Role, site: &str) -> Self {
        Enrolment {
            name: name.to_string(),
            role,
            site: site.to_string(),
            new_site: false,
            expires_at: 0,
        }
    }

    /// The same, for a site new to the network.
    pub fn with_new_site(mut self) -> Self {
        self.new_site = true;
        self
    }
}

/// Enrols a user, records who did it in the audit trail (`actor`), and returns its token
/// (shown once; only its hash is kept).
pub fn enrol(db: &Db, actor: &str, enrolment: &Enrolment, now: u64) -> Result<String, Status> {
    let Enrolment {
        name,
        role,
        site,
        new_site,
        expires_at,
    } = enrolment;
    check_new_user(name, *role, site).map_err(Status::invalid_argument)?;
    let failed = |error: crate::db::DbError| {
        tracing::error!(%error, "adding a user");
        Status::internal("the coordinator could not store the user")
    };
    if role.has_site() && !new_site && !db.site_known(site).map_err(failed)? {
        return Err(Status::failed_precondition(format!(
            "the network has no site {site} (no steward or node is enrolled for it); check its spelling, or add --new-site to enrol the first user of a new site"
        )));
    }
    let token = new_token().map_err(|_| Status::internal("no random source for a token"))?;
    let user = User {
        name: name.clone(),
        role: *role,
        site: site.clone(),
        created_at: now,
        expires_at: *expires_at,
    };
    if !db.add_user(&user, &token_hash(&token)).map_err(failed)? {
        return Err(Status::already_exists(format!(
            "a user named {name} exists"
        )));
    }
    let expiry = match expires_at {
        0 => String::new(),
        at => format!(", expires at {at}"),
    };
    db.record_event(&crate::db::Event {
        at: now,
        actor: actor.to_string(),
        kind: crate::lifecycle::EventKind::UserAdded,
        query_id: String::new(),
        site: site.clone(),
        detail: format!("{name} ({}{expiry})", role.as_str()),
    })
    .map_err(failed)?;
    Ok(token)
}
