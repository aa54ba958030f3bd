//! The coordinator's limits: how big a message and a question may be, how often one user
//! may submit, how long any call may take. They keep one careless or hostile caller from
//! starving everyone else; each refusal names the limit, never anyone's data.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tonic::Status;

/// The limits, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message a researcher, steward or operator may send, in bytes. Checked
    /// after the caller's token (a caller without one is refused before any byte of the
    /// body is read).
    pub max_user_message_bytes: usize,
    /// Largest message a node may send (its released partials), in bytes.
    pub max_node_message_bytes: usize,
    /// Largest SQL text of one question, in bytes: the one SQL size limit of the network
    /// (nodes and `ern validate` bound the work of a question by its tokens and nesting).
    pub max_sql_bytes: usize,
    /// Submissions one user may make per minute (also the burst).
    pub submits_per_minute: u32,
    /// Questions one researcher may have open (neither complete nor failed) at once.
    pub max_open_questions: u32,
    /// Longest any call may take before it fails with DEADLINE_EXCEEDED (node streams,
    /// which live for days, are exempt once opened).
    pub rpc_timeout: Duration,
    /// How many connections are accepted, from where, and how long a handshake may take.
    pub connections: ConnectionLimits,
}

/// Limits on connections, so that half-open TLS connections from one source cannot use up
/// the coordinator's file descriptors and starve everyone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, from everyone; beyond it, no connection is accepted
    /// until one closes (the kernel's backlog holds the rest).
    pub max_connections: usize,
    /// Connections open at once from one IP address; more are closed on accept.
    pub per_source: usize,
    /// Unfinished TLS handshakes at once from one IP address; more are closed on accept.
    pub handshakes_per_source: usize,
    /// How long a client has to finish its TLS handshake and send its HTTP/2 preface,
    /// and then to make its first authenticated call.
    pub handshake_timeout: Duration,
    /// How long a connection used by researchers, stewards or operators may live (their
    /// calls each have a short deadline; the CLI opens one connection per command).
    /// Nodes' connections are exempt.
    pub user_connection_max_age: Duration,
    /// Connections one researcher, steward or operator may hold at once.
    pub per_user: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            per_source: 32,
            handshakes_per_source: 8,
            handshake_timeout: Duration::from_secs(10),
            user_connection_max_age: Duration::from_secs(300),
            per_user: 16,
        }
    }
}

/// Room a message needs beside its SQL (title, purpose, sites, framing), in bytes.
pub const MESSAGE_ROOM_BESIDE_SQL: usize = 16 << 10;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_user_message_bytes: 256 << 10,
            max_node_message_bytes: 4 << 20,
            max_sql_bytes: 64 << 10,
            submits_per_minute: 60,
            max_open_questions: 100,
            rpc_timeout: Duration::from_secs(30),
            connections: ConnectionLimits::default(),
        }
    }
}

/// Per-user submission rate limiting (a token bucket per user).
#[derive(Debug)]
pub struct SubmitLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl SubmitLimiter {
    /// A limiter allowing `per_minute` submissions per user per minute, in bursts of
    /// up to as many.
    pub fn new(per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        SubmitLimiter {
            limiter: DefaultKeyedRateLimiter::hashmap(Quota::per_minute(per_minute)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one submission from `user`'s allowance, or says RESOURCE_EXHAUSTED with the
    /// time to wait.
    pub fn check(&self, user: &str) -> Result<(), Status> {
        match self.limiter.check_key(&user.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(Status::resource_exhausted(format!(
                    "submission rate limit: too many questions in the last minute; \
                     try again in {:.1} s",
                    wait.as_secs_f64().max(0.1)
                )))
            }
        }
    }
}

/// Refuses a new question of a researcher who has `open` questions already, naming the
/// limit and what frees it.
pub fn check_open_questions(open: u64, limits: &Limits) -> Result<(), Status> {
    if open >= u64::from(limits.max_open_questions) {
        return Err(open_questions_refusal(open, limits));
    }
    Ok(())
}

/// The refusal of a question over the open-questions limit.
pub fn open_questions_refusal(open: u64, limits: &Limits) -> Status {
    Status::resource_exhausted(format!(
        "open questions limit: you have {open} questions still open; this network \
         allows {} per researcher. Wait for one to complete or pass its deadline",
        limits.max_open_questions
    ))
}

/// Refuses SQL longer than the limit, naming the limit and the size (never the text).
pub fn check_sql_size(sql: &str, limits: &Limits) -> Result<(), Status> {
    if sql.len() > limits.max_sql_bytes {
        return Err(Status::invalid_argument(format!(
            "SQL size limit: the question is {} bytes; this network accepts at most {}",
            sql.len(),
            limits.max_sql_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_their_own_allowance() {
        let limiter = SubmitLimiter::new(3);
        for _ in 0..3 {
            limiter.check("ana").expect("within the burst");
        }
        let refused = limiter.check("ana").expect_err("over the burst");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("rate limit"));
        limiter.check("ben").expect("another user is unaffected");
    }

    #[test]
    fn sql_over_the_limit_is_refused_by_size() {
        let limits = Limits {
            max_sql_bytes: 10,
            ..Limits::default()
        };
        check_sql_size("SELECT 1", &limits).expect("small");
        let refused = check_sql_size("SELECT 12345", &limits).expect_err("large");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("12 bytes"));
        assert!(!refused.message().contains("SELECT"));
    }
}
