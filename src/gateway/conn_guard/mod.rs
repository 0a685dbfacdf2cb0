//! What a client connection may hold, and for how long. pingora (0.9.1)
//! bounds little of it itself: its TLS handshake at a fixed 60 s, each
//! single read of a request header at 60 s, an HTTP/2 connection not at
//! all unless asked, and the number of connections not at all. This module
//! owns the rules, built from pingora's public API around its HTTP app:
//!
//! - **How many** (`max_client_connections`): every accepted TCP connection,
//!   plain or TLS, takes a [`ConnSlot`] of one [`ConnLimit`] shared by all
//!   listeners, before anything is read from it, and keeps it until it
//!   closes. With none left it is closed at once and counted in
//!   `scopegate_downstream_connections_refused_total{listener}`.
//! - **The TLS handshake** must finish within `header_read_timeout_ms`.
//!   pingora listens on plain TCP for every address; [`GuardedApp`] finds the
//!   listener of each connection by its local address and does the handshake
//!   of a TLS listener itself, with pingora's own acceptor (the resolver,
//!   mTLS verifier and ALPN of `tls_listen`), under that deadline.
//! - **The request header** (HTTP/1): the whole header arrives within
//!   `header_read_timeout_ms`. [`HeaderGuard`] is the connection handed to
//!   pingora: while a header is awaited, a read that would wait races the
//!   deadline; when it passes it writes a 408 `request_timeout` (the
//!   contract's JSON error, `Connection: close`) and fails the read, so
//!   pingora closes the connection. The proxy says where a header ends,
//!   through two small calls: [`mark_header_done`] in its first callback,
//!   [`mark_request_done`] at the end of every request (`logging`). For
//!   HTTP/2 (ALPN `h2`) the guard only times the 24-byte connection preface
//!   the same way (no 408: HTTP/2 has its own framing), then steps aside.
//! - **Idle** (`idle_timeout_ms`): an HTTP/1.1 connection waiting between
//!   requests is closed (quietly, nothing written) when no byte of the next
//!   request arrives in time, by [`HeaderGuard`]; an HTTP/2 connection with
//!   no open stream is closed by pingora's own h2 idle timeout, which
//!   `server` sets to the same value.
//!
//! When the header clock runs: for the first request of a connection, from
//! its hand-over to the proxy (accept, or the TLS handshake, done); for later
//! keep-alive requests, from their first byte (before it, the idle clock
//! runs). Request bodies are never timed here: `body_read_timeout_ms`
//! governs the ones the proxy reads.
//!
//! A connection that ends before a whole HTTP/1 header counts once in
//! `scopegate_downstream_header_errors_total{reason}` ([`Ending`]) and is
//! logged at debug, without any of its bytes (a header can hold keys). A
//! failed or late TLS handshake, a late HTTP/2 preface and an idle close are
//! logged at debug only: a client must not be able to write a log line above
//! debug per connection it opens.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::decision::errors::{self, ErrorCode, ErrorShape};
use crate::ops::metrics::metrics;

mod limit;
#[cfg(test)]
mod tests;

pub use limit::{listener_of, ConnLimit, ConnSlot};

/// How long [`Shutdown`] keeps trying to finish writing a 408 that did not
/// fit at once.
const REPLY_GRACE: Duration = Duration::from_millis(200);

/// The HTTP/2 client connection preface (`PRI * HTTP/2.0…`), in bytes.
const H2_PREFACE_LEN: usize = 24;

/// Phases, in the low two bits of [`HeaderGuard::marks`].
const AWAITING_FIRST: u64 = 0;
const HEADER_DONE: u64 = 1;
const AWAITING_NEXT: u64 = 2;
const PHASE_BITS: u64 = 0b11;

/// How a connection ended before a whole request header arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The header deadline passed: answered 408.
    Timeout,
    /// A response was written before the header was whole: the HTTP layer
    /// refused the header (pingora's 400 for a malformed or oversized one).
    Rejected,
    /// The client closed (or reset) the connection in the middle of a header.
    Closed,
}

impl Ending {
    /// The `reason` label (one of [`crate::ops::metrics::HEADER_ERROR_REASONS`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Timeout => "timeout",
            Ending::Rejected => "rejected",
            Ending::Closed => "closed",
        }
    }
}

/// The two clocks of a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// `header_read_timeout_ms`: a TLS handshake, a whole HTTP/1 request
    /// header, the HTTP/2 connection preface.
    pub header: Duration,
    /// `idle_timeout_ms`: the gap between HTTP/1.1 keep-alive requests.
    pub idle: Duration,
}

/// One proxy listener, as [`GuardedApp`] needs it.
pub struct ListenerGate {
    /// The address it is bound to.
    pub address: SocketAddr,
    /// The address as written in the config (the metric label).
    pub label: String,
    /// pingora's TLS acceptor for an HTTPS listener; `None`: plain HTTP/1.1.
    pub tls: Option<Arc<Acceptor>>,
}

/// pingora's HTTP app behind the connection rules of this module.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    deadlines: Deadlines,
    limit: ConnLimit,
    /// Bound addresses, in the order of `gates`.
    addresses: Vec<SocketAddr>,
    gates: Vec<Gate>,
}

struct Gate {
    label: String,
    tls: Option<Arc<Acceptor>>,
    refused: Option<IntCounter>,
}

impl<A> GuardedApp<A> {
    /// Wraps `inner` (pingora's `HttpProxy`) for the connections of
    /// `listeners` (pingora listens on each over plain TCP), at most
    /// `limit` open at once.
    pub fn new(
        inner: A,
        deadlines: Deadlines,
        limit: ConnLimit,
        listeners: Vec<ListenerGate>,
    ) -> GuardedApp<A> {
        let addresses = listeners.iter().map(|l| l.address).collect();
        let gates = listeners
            .into_iter()
            .map(|l| Gate {
                refused: metrics().map(|m| m.refused_connections_of(&l.label)),
                label: l.label,
                tls: l.tls,
            })
            .collect();
        GuardedApp {
            inner: Arc::new(inner),
            deadlines,
            limit,
            addresses,
            gates,
        }
    }

    /// A new connection, as pingora accepted it: its listener found, a slot
    /// taken, the TLS handshake done; `None` when it is to be closed.
    async fn admit(&self, stream: Stream) -> Option<Stream> {
        let digest = stream.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr())
            .and_then(|a| a.as_inet())
            .copied();
        // Fail closed: a connection whose listener is unknown could be a
        // TLS one.
        let Some(local) = local else {
            tracing::debug!("connection without a local address (already reset?); closed");
            return None;
        };
        let Some(gate) = listener_of(&self.addresses, &local).and_then(|i| self.gates.get(i))
        else {
            tracing::warn!(%local, "connection on no configured listener; closed");
            return None;
        };
        let Some(slot) = self.limit.try_acquire() else {
            if let Some(c) = &gate.refused {
                c.inc();
            }
            if self.limit.warning_due() {
                tracing::warn!(
                    listener = %gate.label,
                    max_client_connections = self.limit.max(),
                    "max_client_connections are open: new connections are closed at once \
                     (counted in scopegate_downstream_connections_refused_total)"
                );
            }
            return None;
        };
        let stream = match &gate.tls {
            None => stream,
            Some(acceptor) => {
                let peer = digest
                    .as_ref()
                    .and_then(|d| d.peer_addr())
                    .and_then(|a| a.as_inet())
                    .copied();
                tls_accept(acceptor, stream, self.deadlines.header, &gate.label, peer).await?
            }
        };
        let guard = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            HeaderGuard::h2(stream, self.deadlines)
        } else {
            HeaderGuard::http1(stream, self.deadlines)
        };
        Some(Box::new(guard.holding(slot)))
    }
}

/// The TLS handshake of a connection accepted on a TLS listener, within
/// `within`; `None` (logged at debug) when it fails or is late.
async fn tls_accept(
    acceptor: &Acceptor,
    stream: Stream,
    within: Duration,
    listener: &str,
    peer: Option<SocketAddr>,
) -> Option<Stream> {
    let l4 = match stream.into_any().downcast::<L4Stream>() {
        Ok(l4) => *l4,
        Err(_) => {
            tracing::warn!(
                listener,
                "TLS listener handed a stream that is not TCP; closed"
            );
            return None;
        }
    };
    match tokio::time::timeout(within, acceptor.tls_handshake(l4)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            tracing::debug!(listener, ?peer, error = %e, "TLS handshake failed; connection closed");
            None
        }
        Err(_) => {
            tracing::debug!(
                listener,
                ?peer,
                timeout_ms = within.as_millis() as u64,
                "TLS handshake not finished within header_read_timeout_ms; connection closed"
            );
            None
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A connection handed back for reuse is already admitted.
        let stream = if stream.as_any().is::<HeaderGuard>() {
            stream
        } else {
            self.admit(stream).await?
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Marks the header of the current request whole: its reads are no longer
/// timed. Call it from the first proxy callback. Does nothing on HTTP/2.
pub fn mark_header_done(session: &ServerSession) {
    if let Some(guard) = guard_of(session) {
        guard.header_done();
    }
}

/// Marks the current request finished: the connection waits for the next
/// one, idle (`idle_timeout_ms`) until its first byte, whose header is then
/// timed. Call it at the end of every request (`logging`).
///
/// A request body still unread at this point would be drained by pingora
/// and taken for the start of the next header; such a connection is closed
/// after this response instead (keep-alive off). Does nothing on HTTP/2.
pub fn mark_request_done(session: &mut ServerSession) {
    if session.stream().is_none() {
        return;
    }
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    let Some(backstop) = guard_of(session).map(|guard| {
        guard.request_done();
        guard.keepalive_backstop_secs()
    }) else {
        return;
    };
    // pingora times each read between requests with its keep-alive (60 s
    // from its first request); the guard's clocks are the rule, so pingora's
    // is set just past them (an idle_timeout_ms above 60 s holds).
    if session.get_keepalive().is_some() {
        session.set_keepalive(Some(backstop));
    }
}

/// A `tracing` layer that drops pingora's ERROR lines that any client can
/// cause at will, once per connection it opens: a connection that ended in
/// the middle of a request header (`Fail to proxy: … while reading request
/// headers`; counted and logged at debug by [`HeaderGuard`]) and an HTTP/2
/// connection whose preface was late or not HTTP/2 (`H2 handshake error`).
pub struct QuietHeaderErrors;

/// The messages [`QuietHeaderErrors`] drops.
const QUIET_MESSAGES: [&str; 2] = ["while reading request headers", "H2 handshake error"];

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietHeaderErrors {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if *event.metadata().level() != tracing::Level::ERROR {
            return true;
        }
        let mut seen = ClientCausedError {
            // pingora logs through `log`: the target is then a field.
            from_pingora: event.metadata().target().starts_with("pingora"),
            message: false,
        };
        event.record(&mut seen);
        !(seen.from_pingora && seen.message)
    }
}

/// Whether an event is one of pingora's client-caused errors.
struct ClientCausedError {
    from_pingora: bool,
    message: bool,
}

impl tracing::field::Visit for ClientCausedError {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "log.target" {
            self.from_pingora |= value.starts_with("pingora");
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let text = format!("{value:?}");
            self.message |= QUIET_MESSAGES.iter().any(|m| text.contains(m));
        }
    }
}

fn guard_of(session: &ServerSession) -> Option<&HeaderGuard> {
    session.stream()?.as_ref().as_any().downcast_ref()
}

/// What a timed read is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaited {
    /// The rest of a request header (HTTP/2: of the connection preface).
    Header,
    /// The first byte of the next keep-alive request.
    NextRequest,
}

/// A client connection with the clocks of this module and its slot under
/// `max_client_connections`; every other trait of pingora's `IO` is the
/// inner stream's.
pub struct HeaderGuard {
    inner: Stream,
    deadlines: Deadlines,
    /// HTTP/2: only the connection preface is timed, and nothing is written.
    h2: bool,
    /// `epoch << 2 | phase`, moved on by the proxy's callbacks through
    /// `&self`; each mark starts a new epoch. HTTP/1 only.
    marks: AtomicU64,
    /// The `marks` value the reader last acted on.
    seen: u64,
    /// What is awaited and by when; `None`: reads are not timed.
    waiting: Option<(Awaited, Instant)>,
    /// Wakes a read waiting at the deadline; once made, always set to the
    /// deadline in `waiting` (when there is one).
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes of the awaited header read so far.
    header_bytes: usize,
    ending: Option<Ending>,
    /// Closed for idleness between requests.
    idle_closed: bool,
    /// HTTP/2 preface received: the guard steps aside.
    through: bool,
    /// The 408 and how much of it is written.
    reply: Option<(Vec<u8>, usize)>,
    /// The connection's place under `max_client_connections`.
    _slot: Option<ConnSlot>,
}

impl HeaderGuard {
    /// Wraps an HTTP/1 connection just handed to the app: the first header
    /// is timed from now.
    pub fn http1(inner: Stream, deadlines: Deadlines) -> HeaderGuard {
        HeaderGuard {
            inner,
            deadlines,
            h2: false,
            marks: AtomicU64::new(AWAITING_FIRST),
            seen: AWAITING_FIRST,
            waiting: Some((Awaited::Header, Instant::now() + deadlines.header)),
            sleep: None,
            header_bytes: 0,
            ending: None,
            idle_closed: false,
            through: false,
            reply: None,
            _slot: None,
        }
    }

    /// Wraps an HTTP/2 connection just handed to the app: its 24-byte
    /// preface is timed from now, then nothing is.
    pub fn h2(inner: Stream, deadlines: Deadlines) -> HeaderGuard {
        HeaderGuard {
            h2: true,
            ..HeaderGuard::http1(inner, deadlines)
        }
    }

    /// The guard holding `slot` until it is dropped.
    pub fn holding(mut self, slot: ConnSlot) -> HeaderGuard {
        self._slot = Some(slot);
        self
    }

    /// The header being read is whole (see [`mark_header_done`]).
    pub fn header_done(&self) {
        self.mark(HEADER_DONE);
    }

    /// The request is finished; the next one is awaited (see
    /// [`mark_request_done`]).
    pub fn request_done(&self) {
        self.mark(AWAITING_NEXT);
    }

    /// How the connection ended before a whole header, if it did.
    pub fn ending(&self) -> Option<Ending> {
        self.ending
    }

    /// Whether it was closed for idleness between requests.
    pub fn idle_closed(&self) -> bool {
        self.idle_closed
    }

    /// pingora's per-read keep-alive timeout (whole seconds) that never
    /// fires before one of this guard's clocks does.
    pub fn keepalive_backstop_secs(&self) -> u64 {
        self.deadlines.header.max(self.deadlines.idle).as_secs() + 1
    }

    fn mark(&self, phase: u64) {
        // One writer (the connection's own task): load then store is enough.
        let epoch = (self.marks.load(Ordering::Acquire) >> 2) + 1;
        self.marks.store(epoch << 2 | phase, Ordering::Release);
    }

    /// Takes in the proxy's latest mark: a new epoch starts a new header,
    /// awaited idle when it is the next request's.
    fn sync(&mut self) -> u64 {
        let marks = self.marks.load(Ordering::Acquire);
        if marks != self.seen {
            self.seen = marks;
            self.header_bytes = 0;
            let waiting = (marks & PHASE_BITS == AWAITING_NEXT)
                .then(|| (Awaited::NextRequest, Instant::now() + self.deadlines.idle));
            self.wait_for(waiting);
        }
        marks & PHASE_BITS
    }

    /// Sets what is awaited, keeping the sleep on its deadline.
    fn wait_for(&mut self, waiting: Option<(Awaited, Instant)>) {
        self.waiting = waiting;
        if let (Some(sleep), Some((_, at))) = (self.sleep.as_mut(), waiting) {
            sleep.as_mut().reset(at);
        }
    }

    /// `n` bytes of a header arrived.
    fn received(&mut self, n: usize) {
        if !matches!(self.waiting, Some((Awaited::Header, _))) {
            // A keep-alive request's clock starts at its first byte.
            self.wait_for(Some((
                Awaited::Header,
                Instant::now() + self.deadlines.header,
            )));
        }
        self.header_bytes += n;
        if self.h2 && self.header_bytes >= H2_PREFACE_LEN {
            self.through = true;
            self.wait_for(None);
            self.sleep = None;
        }
    }

    fn timed_out(&self) -> bool {
        self.ending == Some(Ending::Timeout)
    }

    fn end(&mut self, ending: Ending) {
        if self.ending.is_some() {
            return;
        }
        self.ending = Some(ending);
        if self.h2 {
            tracing::debug!(
                reason = ending.as_str(),
                preface_bytes = self.header_bytes,
                timeout_ms = self.deadlines.header.as_millis() as u64,
                "HTTP/2 connection ended before its whole connection preface"
            );
            return;
        }
        if let Some(m) = metrics() {
            m.header_error(ending.as_str());
        }
        tracing::debug!(
            reason = ending.as_str(),
            header_bytes = self.header_bytes,
            timeout_ms = self.deadlines.header.as_millis() as u64,
            "connection ended before a whole request header"
        );
    }

    /// The clock of what is awaited ran out.
    fn expire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if matches!(self.waiting, Some((Awaited::NextRequest, _))) {
            self.idle_closed = true;
            tracing::debug!(
                idle_timeout_ms = self.deadlines.idle.as_millis() as u64,
                "idle keep-alive connection closed"
            );
            return Poll::Ready(Err(idle_error()));
        }
        self.fire(cx)
    }

    /// The header deadline passed: answer 408 (HTTP/1, best effort, without
    /// waiting) and fail the read so that pingora closes the connection.
    fn fire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.end(Ending::Timeout);
        if !self.h2 {
            self.reply = Some((timeout_reply(self.deadlines.header), 0));
            let _ = self.drive_reply(cx);
        }
        Poll::Ready(Err(timeout_error()))
    }

    /// Writes what is left of the 408, then flushes (pingora buffers
    /// writes). Ready once it is all out or cannot be.
    fn drive_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.reply {
            let result = if *written < bytes.len() {
                match ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..])) {
                    Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        *written += n;
                        continue;
                    }
                    Err(e) => Err(e),
                }
            } else {
                ready!(Pin::new(&mut self.inner).poll_flush(cx))
            };
            self.reply = None;
            return Poll::Ready(result);
        }
        Poll::Ready(Ok(()))
    }
}

impl std::fmt::Debug for HeaderGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderGuard")
            .field("inner", &self.inner)
            .field("h2", &self.h2)
            .field("phase", &(self.seen & PHASE_BITS))
            .field("ending", &self.ending)
            .field("idle_closed", &self.idle_closed)
            .finish()
    }
}

fn timeout_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request header not received within header_read_timeout_ms",
    )
}

fn idle_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "keep-alive connection idle for idle_timeout_ms",
    )
}

/// The complete 408 response: the contract's JSON error in OpenAI's shape
/// (no route is known yet), a fresh `x-request-id`, `Connection: close`.
fn timeout_reply(timeout: Duration) -> Vec<u8> {
    let message = format!(
        "The request header did not arrive within {} ms.",
        timeout.as_millis()
    );
    let body = errors::render(ErrorCode::RequestTimeout, &message, ErrorShape::OpenAi);
    let mut out = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nx-request-id: {}\r\nconnection: close\r\n\r\n",
        body.len(),
        crate::gateway::request_id::next()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

impl AsyncRead for HeaderGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.timed_out() {
            return Poll::Ready(Err(timeout_error()));
        }
        if this.idle_closed {
            return Poll::Ready(Err(idle_error()));
        }
        if this.through || this.sync() == HEADER_DONE {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // A late header fails even with bytes waiting; an idle connection
        // still gets a request that is already in.
        if matches!(this.waiting, Some((Awaited::Header, at)) if Instant::now() >= at) {
            return this.expire(cx);
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n == 0 {
                    if this.header_bytes > 0 {
                        this.end(Ending::Closed);
                    }
                } else {
                    this.received(n);
                }
            }
            Poll::Ready(Err(_)) => {
                if this.header_bytes > 0 {
                    this.end(Ending::Closed);
                }
            }
            Poll::Pending => {
                if let Some((_, at)) = this.waiting {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        return this.expire(cx);
                    }
                }
            }
        }
        result
    }
}

impl AsyncWrite for HeaderGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.before_write()?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.before_write()?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reply.is_some() {
            return this.drive_reply(cx);
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A 408 still on its way goes out before the connection closes.
        let _ = ready!(this.drive_reply(cx));
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl HeaderGuard {
    /// Nothing more goes out after a 408; a response to an HTTP/1 header
    /// that is not whole is the HTTP layer refusing it. (An HTTP/2 server
    /// writes its SETTINGS before the client's preface is in.)
    fn before_write(&mut self) -> io::Result<()> {
        if self.timed_out() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection closing: request header deadline passed",
            ));
        }
        if !self.h2 && self.sync() != HEADER_DONE && self.header_bytes > 0 {
            self.end(Ending::Rejected);
        }
        Ok(())
    }
}

#[async_trait]
impl Shutdown for HeaderGuard {
    async fn shutdown(&mut self) {
        if self.reply.is_some() {
            let _ =
                tokio::time::timeout(REPLY_GRACE, std::future::poll_fn(|cx| self.drive_reply(cx)))
                    .await;
        }
        Shutdown::shutdown(self.inner.as_mut()).await;
    }
}

impl UniqueID for HeaderGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderGuard {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderGuard {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderGuard {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeaderGuard {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest);
    }
}

#[async_trait]
impl Peek for HeaderGuard {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
