//! Forwarding a request whose body scopegate has already read.
//!
//! pingora replays at most 64 KiB of a body read in `request_filter` (its
//! retry buffer), and a body the proxy changed (the reference on usage in streams) has another
//! length. So when the body was read, the proxy does the upstream exchange
//! itself: the prepared request header, exactly the bytes it checked (with a
//! `Content-Length` of their size), then the response streamed back chunk by
//! chunk as it arrives. Connections come from pingora's own HTTP/1.1
//! connector (the upstream peers offer only HTTP/1.1) and go back to its
//! pool when the exchange ends cleanly.

use bytes::Bytes;
use pingora::connectors::http::v1::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::protocols::http::client::HttpSession;
use pingora::{Error, Result};

/// What happened to one exchange, for the caller's logs and metrics.
pub enum Exchange {
    /// The upstream answered; the response (maybe cut short) went to the client.
    Answered,
    /// Nothing reached the client: the upstream could not be reached or did
    /// not answer; the caller writes the error.
    Failed(Box<Error>),
}

/// Hooks into the response as it passes.
pub trait ResponseHooks {
    /// The upstream's response header, before it is written to the client.
    ///
    /// # Errors
    /// When a header cannot be set.
    fn header(&mut self, resp: &mut ResponseHeader) -> Result<()>;
    /// One chunk of the upstream's body; returns what the client gets.
    fn chunk(&mut self, chunk: Bytes) -> Bytes;
    /// The end of the upstream's body (`complete`: it ended as framed, not
    /// cut); returns anything still held for the client.
    fn end(&mut self, complete: bool) -> Bytes;
}

/// A request sent, or why not.
// Returned once per forward and matched at once: boxing the session would
// cost an allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
pub enum Sent {
    /// The request went out and the upstream's (final) response header is read.
    Ready(HttpSession),
    /// A pooled connection failed before the upstream answered: an upstream
    /// that closed an idle connection never saw the request, so the caller
    /// may build the request again and send it with `retry: false`.
    Stale,
    /// Nothing reached an upstream that answered; the caller writes the error.
    Failed(Box<Error>),
}

/// Sends `req` and `body` to `peer`, on a pooled connection if there is one.
///
/// `req` is moved into the connection (no copy is kept): when a pooled
/// connection fails before the upstream answered and `retry` is set, the
/// answer is [`Sent::Stale`] and the caller sends a new header once more.
pub async fn send(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    body: &Bytes,
    retry: bool,
) -> Sent {
    // A pooled connection first: making a new one (TCP, maybe TLS) is a
    // large future, boxed so that only a request that needs it pays for
    // moving it (and the caller's future stays small).
    let (mut up, reused) = match connector.reused_http_session(peer).await {
        Some(h1) => (HttpSession::H1(h1), true),
        None => match Box::pin(connector.get_http_session(peer)).await {
            Ok((h1, reused)) => (HttpSession::H1(h1), reused),
            Err(e) => return Sent::Failed(e),
        },
    };
    // The upstream's timeouts apply here as on pingora's own path (a hung
    // upstream is 504, not a request that never ends).
    up.set_read_timeout(peer.options.read_timeout);
    up.set_write_timeout(peer.options.write_timeout);
    match send_request(&mut up, req, body).await {
        Ok(()) => Sent::Ready(up),
        Err(_) if reused && retry => Sent::Stale,
        Err(e) => Sent::Failed(e),
    }
}

/// Streams the answer on `up` (sent by [`send`]) to `session`, through
/// `hooks`, and gives the connection back to the pool when the exchange
/// ended cleanly.
pub async fn relay(
    connector: &Connector,
    peer: &HttpPeer,
    mut up: HttpSession,
    session: &mut Session,
    hooks: &mut (dyn ResponseHooks + Send),
) -> Exchange {
    let Some(mut resp) = up.response_header().cloned() else {
        return Exchange::Failed(Error::explain(
            pingora::ErrorType::InvalidHTTPHeader,
            "upstream sent no response header",
        ));
    };
    if hooks.header(&mut resp).is_err() {
        return Exchange::Failed(Error::explain(
            pingora::ErrorType::InternalError,
            "response header could not be prepared",
        ));
    }
    let head_only = resp.status.as_u16() == 304 || resp.status.as_u16() == 204;
    if session
        .write_response_header(Box::new(resp), head_only && up.response_done())
        .await
        .is_err()
    {
        session.set_keepalive(None);
        hooks.end(false);
        return Exchange::Answered;
    }

    let mut complete = false;
    loop {
        match up.read_response_body().await {
            Ok(Some(chunk)) => {
                let out = hooks.chunk(chunk);
                if !out.is_empty() && session.write_response_body(Some(out), false).await.is_err() {
                    // The client went away: the upstream connection is
                    // mid-response and cannot be reused.
                    session.set_keepalive(None);
                    hooks.end(false);
                    return Exchange::Answered;
                }
            }
            Ok(None) => {
                complete = up.response_done();
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "upstream body ended early");
                break;
            }
        }
    }
    let tail = hooks.end(complete);
    let tail = (!tail.is_empty()).then_some(tail);
    if complete {
        let _ = session.write_response_body(tail, true).await;
        if let HttpSession::H1(h1) = up {
            connector
                .release_http_session(h1, peer, peer.options.idle_timeout)
                .await;
        }
    } else {
        // A cut response must reach the client as cut, not as complete.
        if let Some(t) = tail {
            let _ = session.write_response_body(Some(t), false).await;
        }
        session.set_keepalive(None);
        up.shutdown().await;
    }
    Exchange::Answered
}

async fn send_request(up: &mut HttpSession, req: RequestHeader, body: &Bytes) -> Result<()> {
    up.write_request_header(Box::new(req)).await?;
    if !body.is_empty() {
        up.write_request_body(body.clone(), true).await?;
    }
    up.finish_request_body().await?;
    up.read_response_header().await?;
    // Skip informational answers (the client already had its 100 Continue
    // from the proxy if it asked).
    while up
        .response_header()
        .is_some_and(|r| r.status.is_informational())
    {
        up.read_response_header().await?;
    }
    Ok(())
}
