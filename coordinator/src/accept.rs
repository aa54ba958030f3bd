//! Accepting connections under limits, so that no one source can use up the
//! coordinator's file descriptors.
//!
//! Red team: 200 half-open TLS connections a second, under the common 1,024 open-files
//! limit, gave normal clients 1–10 s latency and deadline errors. Here the coordinator
//! accepts a connection only while fewer than `max_connections` are open (beyond that the
//! kernel's backlog holds new ones: backpressure, not refusal), closes at once a
//! connection from a source that already has `per_source` open or `handshakes_per_source`
//! handshakes unfinished, and gives every handshake `handshake_timeout` to finish. A
//! handshake here is the TLS handshake *and* the client's HTTP/2 preface: red team round
//! 2 held every slot with connections that finished TLS and then sent nothing, which
//! HTTP/2 keep-alive never notices (it starts after the preface). Both are done here
//! (rustls, as tonic would) so that the count of unfinished handshakes is exact; tonic then
//! serves HTTP/2 over the opened stream, the preface replayed. A source is an IPv4 address
//! or an IPv6 /64 (one host commonly holds a whole /64).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::limits::ConnectionLimits;

/// How often refused connections are summarised in the log, at most.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Who is at the other end of a connection: its address and, under TLS, the certificate
/// chain it presented. Handlers find it in their request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The remote address.
    pub remote: Option<SocketAddr>,
    /// The client certificate chain, leaf first; `None` without TLS or without one.
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// Who has called on this connection, shared with the connection's watch.
    caller: Arc<Callers>,
}

/// Nobody has made an authenticated call on the connection yet.
const ANONYMOUS: u8 = 0;
/// A researcher, steward or operator has.
const USER: u8 = 1;
/// A node has (its stream lives for days).
const NODE: u8 = 2;

/// Who calls on one connection, and the count of connections per user it takes part in
/// (red team round 4: one researcher's token, one cheap call per connection, held every
/// connection slot of the coordinator).
#[derive(Debug)]
struct Callers {
    state: AtomicU8,
    user: Mutex<Option<String>>,
    per_user: Arc<PerUser>,
}

/// Connections open per user.
#[derive(Debug)]
struct PerUser {
    open: Mutex<HashMap<String, usize>>,
    cap: usize,
}

impl PerUser {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Callers {
    fn drop(&mut self) {
        let user = self
            .user
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(user) = user {
            let mut open = self.per_user.open();
            if let Some(count) = open.get_mut(&user) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.remove(&user);
                }
            }
        }
    }
}

impl PeerInfo {
    /// Records a call by researcher, steward or operator `name` on this connection (the
    /// authentication gate does, before the call's body is read): the connection then
    /// lives at most the user's connection age, and counts against the user's cap.
    /// Refused with the number of connections the user has open when over the cap.
    pub fn record_user(&self, name: &str) -> Result<(), usize> {
        let callers = &self.caller;
        let mut user = callers.user.lock().unwrap_or_else(|p| p.into_inner());
        if user.is_none() {
            let mut open = callers.per_user.open();
            let count = open.entry(name.to_string()).or_default();
            if *count >= callers.per_user.cap {
                return Err(*count);
            }
            *count += 1;
            *user = Some(name.to_string());
        }
        callers.state.fetch_max(USER, Ordering::Relaxed);
        Ok(())
    }

    /// Records that a node holds this connection, once its token *and* its certificate
    /// were checked: the connection lives on.
    pub fn record_node(&self) {
        self.caller.state.fetch_max(NODE, Ordering::Relaxed);
    }
}

/// How long a connection may live by who uses it: one that has made no authenticated
/// call by `handshake_timeout` after its preface is closed (red team round 3: clients that
/// answered keep-alive pings and never called held every slot); one used by researchers,
/// stewards or operators lives at most `user_connection_max_age` (every call has its own
/// short deadline; the CLI opens a connection per command); a node's lives on.
#[derive(Debug)]
struct Watch {
    caller: Arc<Callers>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    opened: tokio::time::Instant,
    user_max_age: Duration,
    unlimited: bool,
}

impl Watch {
    fn new(caller: Arc<Callers>, grace: Duration, user_max_age: Duration) -> Watch {
        let opened = tokio::time::Instant::now();
        Watch {
            caller,
            sleep: Box::pin(tokio::time::sleep_until(opened + grace)),
            opened,
            user_max_age,
            unlimited: false,
        }
    }

    /// True once the connection has outlived what its callers allow; otherwise arranges
    /// to be polled again at the next deadline.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.unlimited || self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let user_deadline = self.opened + self.user_max_age;
            match self.caller.state.load(Ordering::Relaxed) {
                NODE => self.unlimited = true,
                USER if self.sleep.deadline() < user_deadline => {
                    self.sleep.as_mut().reset(user_deadline);
                }
                _ => return true,
            }
        }
    }
}

/// Open connections and unfinished handshakes per source address.
#[derive(Debug, Default)]
struct Sources {
    counts: Mutex<HashMap<IpAddr, SourceCount>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct SourceCount {
    connections: usize,
    handshakes: usize,
}

impl Sources {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, SourceCount>> {
        // A panic while holding this lock leaves plain counters, still usable.
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a connection slot (and a handshake slot, under TLS) for `ip`, or `None` when
    /// the source is at one of its caps.
    fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &ConnectionLimits,
        handshake: bool,
        permit: OwnedSemaphorePermit,
    ) -> Option<(SourceSlot, Option<HandshakeSlot>)> {
        let mut counts = self.counts();
        let now = counts.get(&ip).copied().unwrap_or_default();
        if now.connections >= limits.per_source
            || (handshake && now.handshakes >= limits.handshakes_per_source)
        {
            return None;
        }
        let count = counts.entry(ip).or_default();
        count.connections += 1;
        let handshake = handshake.then(|| {
            count.handshakes += 1;
            HandshakeSlot {
                sources: Arc::clone(self),
                ip,
            }
        });
        let slot = SourceSlot {
            sources: Arc::clone(self),
            ip,
            _permit: permit,
        };
        Some((slot, handshake))
    }

    fn release(&self, ip: IpAddr, connection: bool) {
        let mut counts = self.counts();
        if let Some(count) = counts.get_mut(&ip) {
            if connection {
                count.connections = count.connections.saturating_sub(1);
            } else {
                count.handshakes = count.handshakes.saturating_sub(1);
            }
            if count.connections == 0 && count.handshakes == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// One open connection's place in the counts; given back when the connection closes.
#[derive(Debug)]
struct SourceSlot {
    sources: Arc<Sources>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.sources.release(self.ip, true);
    }
}

/// One unfinished handshake's place in the counts; given back when it ends either way.
#[derive(Debug)]
struct HandshakeSlot {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.sources.release(self.ip, false);
    }
}

/// A TCP connection holding its slot.
#[derive(Debug)]
pub struct Counted {
    stream: TcpStream,
    _slot: SourceSlot,
}

/// The client connection preface every HTTP/2 connection starts with (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream whose HTTP/2 preface was read here, replayed to the first reads.
#[derive(Debug)]
pub struct Prefaced<S> {
    replayed: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> Prefaced<S> {
    /// Reads the client's preface from `inner`; anything else is refused.
    async fn read(mut inner: S) -> io::Result<Self> {
        let mut preface = [0u8; 24];
        inner.read_exact(&mut preface).await?;
        if &preface != HTTP2_PREFACE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an HTTP/2 connection preface",
            ));
        }
        Ok(Prefaced { replayed: 0, inner })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefaced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replayed < HTTP2_PREFACE.len() {
            let rest = &HTTP2_PREFACE[self.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefaced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An opened connection's stream.
#[derive(Debug)]
enum Io {
    /// Plaintext (loopback only).
    Plain(Prefaced<Counted>),
    /// TLS, handshake finished.
    Tls(Box<Prefaced<TlsStream<Counted>>>),
}

/// An accepted connection, ready for HTTP/2, under its [`Watch`].
#[derive(Debug)]
pub struct Accepted {
    io: Io,
    watch: Watch,
}

impl Connected for Accepted {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let caller = Arc::clone(&self.watch.caller);
        match &self.io {
            Io::Plain(counted) => PeerInfo {
                remote: counted.inner.stream.peer_addr().ok(),
                certificates: None,
                caller,
            },
            Io::Tls(tls) => {
                let (counted, session) = tls.inner.get_ref();
                PeerInfo {
                    remote: counted.stream.peer_addr().ok(),
                    certificates: session
                        .peer_certificates()
                        .map(|chain| Arc::new(chain.to_vec())),
                    caller,
                }
            }
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.watch.expired(cx) {
            // End of stream: HTTP/2 closes the connection.
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Plain(counted) => Pin::new(counted).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.watch.expired(cx) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        match &mut this.io {
            Io::Plain(counted) => Pin::new(counted).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(counted) => Pin::new(counted).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(counted) => Pin::new(counted).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Descriptors the coordinator needs beside its connections: its database, logs, the
/// listener, the runtime's own.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft open-files limit to the hard one (as servers commonly do) and warns
/// when it is still below `max_connections` plus [`RESERVED_DESCRIPTORS`]: past that, an
/// accept fails with "too many open files" before the connection limits apply. Returns
/// the soft limit in force, if known.
pub fn raise_open_files_limit(limits: &ConnectionLimits) -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let mut soft = current.current;
    if let (Some(now), Some(hard)) = (current.current, current.maximum)
        && now < hard
    {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = Some(hard),
            Err(error) => tracing::debug!(%error, "raising the open-files limit"),
        }
    }
    let needed = limits.max_connections as u64 + RESERVED_DESCRIPTORS;
    match soft {
        Some(soft) if soft < needed => tracing::warn!(
            open_files_limit = soft,
            max_connections = limits.max_connections,
            "the open-files limit is below max_connections + {RESERVED_DESCRIPTORS}: raise it \
             (ulimit -n, or LimitNOFILE= in a systemd unit) or lower max_connections"
        ),
        _ => {}
    }
    soft
}

/// Connections accepted under `limits` from `listener`, TLS-terminated by `tls` if given,
/// as a stream for tonic's `serve_with_incoming`, and the task accepting them (abort it
/// when serving ends).
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
) -> (ReceiverStream<io::Result<Accepted>>, JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(limits.max_connections.clamp(1, 1024));
    let task = tokio::spawn(accept_loop(listener, tls, limits, sender));
    (ReceiverStream::new(receiver), task)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    sender: mpsc::Sender<io::Result<Accepted>>,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let sources = Arc::new(Sources::default());
    let per_user = Arc::new(PerUser {
        open: Mutex::new(HashMap::new()),
        cap: limits.per_user,
    });
    let mut refused = 0u64;
    let mut last_report = Instant::now();
    loop {
        // Backpressure: with every slot taken, stop accepting until a connection closes.
        let Ok(permit) = Arc::clone(&open).acquire_owned().await else {
            return;
        };
        let (stream, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors or a transient error: wait rather than spin.
                tracing::warn!(%error, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = source_of(address.ip());
        let Some((slot, handshake)) = sources.admit(ip, &limits, true, permit) else {
            drop(stream);
            refused += 1;
            if last_report.elapsed() >= REFUSAL_LOG_INTERVAL {
                tracing::warn!(
                    refused,
                    source = %ip,
                    "closed connections over the per-source limits"
                );
                refused = 0;
                last_report = Instant::now();
            }
            continue;
        };
        // Latency matters more than packet count for small gRPC messages.
        let _ = stream.set_nodelay(true);
        let counted = Counted {
            stream,
            _slot: slot,
        };
        let tls = tls.clone();
        let sender = sender.clone();
        let timeout = limits.handshake_timeout;
        let user_max_age = limits.user_connection_max_age;
        let per_user = Arc::clone(&per_user);
        tokio::spawn(async move {
            let opened = tokio::time::timeout(timeout, open_connection(counted, tls)).await;
            drop(handshake);
            match opened {
                Ok(Ok(io)) => {
                    let callers = Arc::new(Callers {
                        state: AtomicU8::new(ANONYMOUS),
                        user: Mutex::new(None),
                        per_user: Arc::clone(&per_user),
                    });
                    let watch = Watch::new(callers, timeout, user_max_age);
                    let _ = sender.send(Ok(Accepted { io, watch })).await;
                }
                Ok(Err(error)) => tracing::debug!(%error, source = %ip, "handshake failed"),
                Err(_) => tracing::debug!(source = %ip, "handshake timed out"),
            }
        });
    }
}

/// The TLS handshake (if any) and the HTTP/2 preface of one connection.
async fn open_connection(counted: Counted, tls: Option<TlsAcceptor>) -> io::Result<Io> {
    match tls {
        None => Ok(Io::Plain(Prefaced::read(counted).await?)),
        Some(acceptor) => {
            let stream = acceptor.accept(counted).await?;
            Ok(Io::Tls(Box::new(Prefaced::read(stream).await?)))
        }
    }
}

/// The source a connection counts against: its IPv4 address, or its IPv6 /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_source_at_its_caps_is_refused_and_others_are_not() {
        let limits = ConnectionLimits {
            max_connections: 10,
            per_source: 2,
            handshakes_per_source: 1,
            handshake_timeout: Duration::from_secs(1),
            user_connection_max_age: Duration::from_secs(5),
            per_user: 2,
        };
        let open = Arc::new(Semaphore::new(10));
        let sources = Arc::new(Sources::default());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let permit = || Arc::clone(&open).try_acquire_owned().expect("permit");
        let (first, first_handshake) = sources.admit(a, &limits, true, permit()).expect("first");
        assert!(
            sources.admit(a, &limits, true, permit()).is_none(),
            "second handshake"
        );
        let other = sources
            .admit(b, &limits, true, permit())
            .expect("another source");
        drop(first_handshake);
        let second = sources
            .admit(a, &limits, true, permit())
            .expect("handshake done");
        assert!(
            sources.admit(a, &limits, false, permit()).is_none(),
            "third connection"
        );
        drop((first, second, other));
        assert!(sources.counts().is_empty(), "every slot given back");
        assert_eq!(open.available_permits(), 10);
    }

    #[test]
    fn a_user_holds_at_most_their_cap_of_connections() {
        let per_user = Arc::new(PerUser {
            open: Mutex::new(HashMap::new()),
            cap: 2,
        });
        let peer = || PeerInfo {
            remote: None,
            certificates: None,
            caller: Arc::new(Callers {
                state: AtomicU8::new(ANONYMOUS),
                user: Mutex::new(None),
                per_user: Arc::clone(&per_user),
            }),
        };
        let (a, b, c) = (peer(), peer(), peer());
        a.record_user("ada").expect("first");
        a.record_user("ada").expect("the same connection again");
        b.record_user("ada").expect("second");
        assert_eq!(c.record_user("ada"), Err(2), "third");
        peer().record_user("ben").expect("another user");
        drop(a);
        c.record_user("ada").expect("a connection closed");
    }

    #[test]
    fn an_ipv6_host_is_one_source_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(source_of(mapped), "10.0.0.1".parse::<IpAddr>().expect("ip"));
    }

    #[tokio::test]
    async fn the_preface_is_checked_and_replayed() {
        let (mut client, server) = tokio::io::duplex(64);
        use tokio::io::AsyncWriteExt;
        client.write_all(HTTP2_PREFACE).await.expect("write");
        client.write_all(b"rest").await.expect("write");
        let mut opened = Prefaced::read(server).await.expect("preface");
        let mut all = vec![0u8; 28];
        opened.read_exact(&mut all).await.expect("replayed");
        assert_eq!(&all[..24], HTTP2_PREFACE);
        assert_eq!(&all[24..], b"rest");
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&[0x16; 24]).await.expect("write");
        assert!(
            Prefaced::read(server).await.is_err(),
            "a TLS record is not a preface"
        );
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_one() {
        let limits = ConnectionLimits::default();
        let soft = raise_open_files_limit(&limits);
        let after = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(soft, after.current);
        if after.maximum.is_some() {
            assert_eq!(after.current, after.maximum, "soft raised to hard");
        }
    }
}
