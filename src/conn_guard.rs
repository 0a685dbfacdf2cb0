//! A total deadline on every HTTP/1 request header (issue 12: "headers
//! trickled one byte a second").
//!
//! pingora bounds each single read of a request header (its 60 s
//! keep-alive timeout) but not the whole header, so a client sending one
//! byte a second holds a connection and a file descriptor for as long as it
//! likes. This module owns the rule that the whole header arrives within
//! `header_read_timeout_ms`, built from pingora's public API:
//!
//! - [`GuardedApp`] wraps pingora's HTTP proxy app and wraps every HTTP/1
//!   connection it is handed (plain, or TLS after the handshake) in a
//!   [`HeaderGuard`] before the proxy reads from it. HTTP/2 (ALPN `h2`) has
//!   its own framing and passes through untouched.
//! - [`HeaderGuard`] is that connection: while a header is awaited, a read
//!   that would wait races the deadline; when the deadline passes it writes
//!   a 408 `request_timeout` (the contract's JSON error, `Connection:
//!   close`) and fails the read, so pingora closes the connection.
//! - The proxy says where a header ends, through two small calls:
//!   [`mark_header_done`] in its first callback, [`mark_request_done`] at
//!   the end of every request (`logging`).
//!
//! When the clock runs: for the first request of a connection, from its
//! hand-over to the proxy (accept, or the TLS handshake, done); for later
//! keep-alive requests, from their first byte (the idle gap between requests
//! is pingora's keep-alive timeout). Request bodies are never timed here:
//! `body_read_timeout_ms` governs the ones the proxy reads.
//!
//! A connection that ends before a whole header counts once in
//! `scopegate_downstream_header_errors_total{reason}` ([`Ending`]) and is
//! logged at debug, without any of its bytes (a header can hold keys).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::errors::{self, ErrorCode, ErrorShape};
use crate::metrics::metrics;

#[cfg(test)]
mod tests;

/// How long [`Shutdown`] keeps trying to finish writing a 408 that did not
/// fit at once.
const REPLY_GRACE: Duration = Duration::from_millis(200);

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
    /// The `reason` label (one of [`crate::metrics::HEADER_ERROR_REASONS`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Timeout => "timeout",
            Ending::Rejected => "rejected",
            Ending::Closed => "closed",
        }
    }
}

/// pingora's HTTP app with a header deadline on each HTTP/1 connection.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    header_timeout: Duration,
}

impl<A> GuardedApp<A> {
    /// Wraps `inner` (pingora's `HttpProxy`); `header_timeout` is
    /// `header_read_timeout_ms`.
    pub fn new(inner: A, header_timeout: Duration) -> GuardedApp<A> {
        GuardedApp {
            inner: Arc::new(inner),
            header_timeout,
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
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let stream: Stream = if h2 || stream.as_any().is::<HeaderGuard>() {
            stream
        } else {
            Box::new(HeaderGuard::new(stream, self.header_timeout))
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

/// Marks the current request finished: the next header is awaited, timed
/// from its first byte. Call it at the end of every request (`logging`).
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
    if let Some(guard) = guard_of(session) {
        guard.request_done();
    }
}

/// A `tracing` layer that drops pingora's ERROR line for each connection
/// that ended in the middle of a request header (`Fail to proxy: … while
/// reading request headers`). Those are counted and logged at debug here
/// instead: a client must not be able to write an ERROR line per
/// connection it opens.
pub struct QuietHeaderErrors;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietHeaderErrors {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if *event.metadata().level() != tracing::Level::ERROR {
            return true;
        }
        let mut seen = HeaderReadFailure {
            // pingora logs through `log`: the target is then a field.
            from_pingora: event.metadata().target().starts_with("pingora_proxy"),
            message: false,
        };
        event.record(&mut seen);
        !(seen.from_pingora && seen.message)
    }
}

/// Whether an event is pingora's header-read failure.
struct HeaderReadFailure {
    from_pingora: bool,
    message: bool,
}

impl tracing::field::Visit for HeaderReadFailure {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "log.target" {
            self.from_pingora |= value.starts_with("pingora_proxy");
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message |= format!("{value:?}").contains("while reading request headers");
        }
    }
}

fn guard_of(session: &ServerSession) -> Option<&HeaderGuard> {
    session.stream()?.as_ref().as_any().downcast_ref()
}

/// A downstream connection with a deadline on each request header; every
/// other trait of pingora's `IO` is the inner stream's.
pub struct HeaderGuard {
    inner: Stream,
    timeout: Duration,
    /// `epoch << 2 | phase`, moved on by the proxy's callbacks through
    /// `&self`; each mark starts a new epoch.
    marks: AtomicU64,
    /// The `marks` value the reader last acted on.
    seen: u64,
    /// When the awaited header must be whole; `None`: not timed (yet).
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes of the awaited header read so far.
    header_bytes: usize,
    ending: Option<Ending>,
    /// The 408 and how much of it is written.
    reply: Option<(Vec<u8>, usize)>,
}

impl HeaderGuard {
    /// Wraps a connection just handed to the app: the first header is
    /// timed from now.
    pub fn new(inner: Stream, timeout: Duration) -> HeaderGuard {
        HeaderGuard {
            inner,
            timeout,
            marks: AtomicU64::new(AWAITING_FIRST),
            seen: AWAITING_FIRST,
            deadline: Some(Instant::now() + timeout),
            sleep: None,
            header_bytes: 0,
            ending: None,
            reply: None,
        }
    }

    /// The header being read is whole (see [`mark_header_done`]).
    pub fn header_done(&self) {
        self.mark(HEADER_DONE);
    }

    /// The request is finished; the next header is awaited (see
    /// [`mark_request_done`]).
    pub fn request_done(&self) {
        self.mark(AWAITING_NEXT);
    }

    /// How the connection ended before a whole header, if it did.
    pub fn ending(&self) -> Option<Ending> {
        self.ending
    }

    fn mark(&self, phase: u64) {
        // One writer (the connection's own task): load then store is enough.
        let epoch = (self.marks.load(Ordering::Acquire) >> 2) + 1;
        self.marks.store(epoch << 2 | phase, Ordering::Release);
    }

    /// Takes in the proxy's latest mark: a new epoch starts a new header.
    fn sync(&mut self) -> u64 {
        let marks = self.marks.load(Ordering::Acquire);
        if marks != self.seen {
            self.seen = marks;
            self.header_bytes = 0;
            self.deadline = None;
            self.sleep = None;
        }
        marks & PHASE_BITS
    }

    fn timed_out(&self) -> bool {
        self.ending == Some(Ending::Timeout)
    }

    fn end(&mut self, ending: Ending) {
        if self.ending.is_some() {
            return;
        }
        self.ending = Some(ending);
        if let Some(m) = metrics() {
            m.header_error(ending.as_str());
        }
        tracing::debug!(
            reason = ending.as_str(),
            header_bytes = self.header_bytes,
            timeout_ms = self.timeout.as_millis() as u64,
            "connection ended before a whole request header"
        );
    }

    /// The deadline passed: answer 408 (best effort, without waiting) and
    /// fail the read so that pingora closes the connection.
    fn fire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.end(Ending::Timeout);
        self.reply = Some((timeout_reply(self.timeout), 0));
        let _ = self.drive_reply(cx);
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
            .field("phase", &(self.seen & PHASE_BITS))
            .field("ending", &self.ending)
            .finish()
    }
}

fn timeout_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request header not received within header_read_timeout_ms",
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
        crate::request_id::next()
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
        if this.sync() == HEADER_DONE {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.deadline.is_some_and(|d| Instant::now() >= d) {
            return this.fire(cx);
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
                    if this.deadline.is_none() {
                        // A keep-alive request's clock starts at its first byte.
                        this.deadline = Some(Instant::now() + this.timeout);
                    }
                    this.header_bytes += n;
                }
            }
            Poll::Ready(Err(_)) => {
                if this.header_bytes > 0 {
                    this.end(Ending::Closed);
                }
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        return this.fire(cx);
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
    /// Nothing more goes out after a 408; a response to a header that is
    /// not whole is the HTTP layer refusing it.
    fn before_write(&mut self) -> io::Result<()> {
        if self.timed_out() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection closing: request header deadline passed",
            ));
        }
        if self.sync() != HEADER_DONE && self.header_bytes > 0 {
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
