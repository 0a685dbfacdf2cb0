//! Recording upstreams: small HTTP/1.1 servers that remember exactly what the
//! proxy sent them and answer the way a test asks.
//!
//! Each upstream runs its own tokio runtime on its own thread, so tests stay
//! plain blocking `#[test]` functions and can drive a stream through an
//! unbounded channel without a runtime of their own.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target exactly as received: path and query.
    pub target: String,
    /// Lowercased names, in order, repeats preserved.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which TCP connection carried it (0, 1, 2… in accept order).
    pub connection: usize,
}

impl Recorded {
    /// The only value of a header: panics when it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "header {name} repeated upstream: {all:?} in {self:?}"
        );
        all.into_iter().next()
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Header names starting with `prefix`.
    pub fn header_names_with_prefix(&self, prefix: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// How the upstream answers.
#[derive(Clone)]
enum Reply {
    Canned {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Streams chunks the test sends through a [`StreamControl`]; the first
    /// request takes the stream, later ones get the default reply.
    Stream {
        content_type: String,
        chunks: Arc<Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>>,
    },
    /// Never sends response headers.
    Hang,
    /// Reads the request head, then closes the connection without a byte.
    Abort,
}

const DEFAULT_BODY: &[u8] = br#"{"ok":true}"#;

impl Reply {
    fn default_ok() -> Reply {
        Reply::Canned {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from_static(DEFAULT_BODY),
        }
    }
}

struct Shared {
    recorded: Mutex<Vec<Recorded>>,
    reply: Mutex<Reply>,
    connections: AtomicUsize,
}

/// A recording HTTP/1.1 server on `127.0.0.1:0`; stops on Drop.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The test's end of a streamed response.
pub struct StreamControl {
    tx: mpsc::UnboundedSender<Bytes>,
}

impl StreamControl {
    /// Queues one chunk; the upstream writes it as soon as the response is
    /// under way.
    pub fn send(&self, chunk: &str) {
        // The receiver is gone only when the upstream stopped.
        let _ = self.tx.send(Bytes::copy_from_slice(chunk.as_bytes()));
    }

    /// Ends the response body.
    pub fn finish(self) {}
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            recorded: Mutex::new(Vec::new()),
            reply: Mutex::new(Reply::default_ok()),
            connections: AtomicUsize::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        let thread = thread::Builder::new()
            .name(format!("upstream-{}", addr.port()))
            .spawn({
                let shared = shared.clone();
                move || serve(listener, shared, stopped)
            })
            .expect("spawn upstream thread");
        Upstream {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, for the proxy config.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, what `Host` must say upstream.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.recorded.lock().unwrap().len()
    }

    /// The single request received; panics unless there was exactly one.
    pub fn only_request(&self) -> Recorded {
        let all = self.requests();
        assert_eq!(
            all.len(),
            1,
            "expected exactly one upstream request: {all:#?}"
        );
        all.into_iter().next().unwrap()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Answer every request with this status, headers and body.
    pub fn reply(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        *self.shared.reply.lock().unwrap() = Reply::Canned {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Bytes::copy_from_slice(body),
        };
    }

    /// Stream the next response: headers at once, then each chunk the test
    /// sends, ending when the [`StreamControl`] is dropped.
    pub fn stream(&self, content_type: &str) -> StreamControl {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.shared.reply.lock().unwrap() = Reply::Stream {
            content_type: content_type.to_string(),
            chunks: Arc::new(Mutex::new(Some(rx))),
        };
        StreamControl { tx }
    }

    /// Never answer (to make the proxy time out).
    pub fn hang(&self) {
        *self.shared.reply.lock().unwrap() = Reply::Hang;
    }

    /// Close each connection without answering.
    pub fn abort(&self) {
        *self.shared.reply.lock().unwrap() = Reply::Abort;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A URL nothing listens on: bound once, then closed, so connecting is refused.
pub fn closed_port_url() -> String {
    // A TCP socket bound but never listening: connections to its port are
    // refused, and no other test can bind the port while it is held. (A
    // port freed after a probe could be taken by another test's listener.)
    // The descriptor is kept open for the rest of the test process.
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket()");
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        addr.sin_port = 0;
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(
            fd,
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        );
        assert_eq!(rc, 0, "bind()");
        let mut bound: libc::sockaddr_in = std::mem::zeroed();
        let mut bound_len = len;
        let rc = libc::getsockname(
            fd,
            &mut bound as *mut libc::sockaddr_in as *mut libc::sockaddr,
            &mut bound_len,
        );
        assert_eq!(rc, 0, "getsockname()");
        format!("http://127.0.0.1:{}", u16::from_be(bound.sin_port))
    }
}

fn serve(listener: StdTcpListener, shared: Arc<Shared>, stopped: oneshot::Receiver<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("upstream runtime");
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        tokio::select! {
            _ = stopped => {}
            _ = accept_loop(listener, shared) => {}
        }
    });
    // Dropping the runtime cancels every connection still open (hung ones too).
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            continue;
        };
        let connection = shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            let abort = matches!(*shared.reply.lock().unwrap(), Reply::Abort);
            if abort {
                close_after_head(stream).await;
                return;
            }
            let service = service_fn(move |req| handle(req, connection, shared.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Reads until the end of the request head (or EOF), then drops the socket.
async fn close_after_head(mut stream: TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

type RespBody = BoxBody<Bytes, Infallible>;

async fn handle(
    req: hyper::Request<Incoming>,
    connection: usize,
    shared: Arc<Shared>,
) -> Result<hyper::Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let recorded = Recorded {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_else(|| parts.uri.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        connection,
    };
    shared.recorded.lock().unwrap().push(recorded);

    let reply = shared.reply.lock().unwrap().clone();
    let response = match reply {
        Reply::Canned {
            status,
            headers,
            body,
        } => canned(status, &headers, body),
        Reply::Stream {
            content_type,
            chunks,
        } => match chunks.lock().unwrap().take() {
            Some(rx) => streamed(&content_type, rx),
            None => default_response(),
        },
        Reply::Hang => std::future::pending::<hyper::Response<RespBody>>().await,
        // Connections accepted before the switch to Abort are served normally.
        Reply::Abort => canned(200, &[], Bytes::new()),
    };
    Ok(response)
}

fn default_response() -> hyper::Response<RespBody> {
    let headers = [("content-type".to_string(), "application/json".to_string())];
    canned(200, &headers, Bytes::from_static(DEFAULT_BODY))
}

fn canned(status: u16, headers: &[(String, String)], body: Bytes) -> hyper::Response<RespBody> {
    let mut builder = hyper::Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(body).boxed())
        .expect("canned response")
}

fn streamed(content_type: &str, rx: mpsc::UnboundedReceiver<Bytes>) -> hyper::Response<RespBody> {
    let frames = stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    hyper::Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("streamed response")
}

/// An upstream whose every connection answers its first request and closes,
/// unanswered, when its second arrives: each request the proxy sends on a
/// pooled connection meets a connection that is gone. Records each request
/// as (connection, raw bytes).
pub struct ClosesPooled {
    addr: std::net::SocketAddr,
    seen: Seen,
}

/// Each request received: its connection's number and its raw bytes.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(usize, Vec<u8>)>>>;

impl ClosesPooled {
    /// Answers each first request with `answer` (JSON).
    pub fn start(answer: &'static str) -> ClosesPooled {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Seen::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            for (conn, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { return };
                let record = record.clone();
                std::thread::spawn(move || {
                    for n in 0.. {
                        let mut raw = Vec::new();
                        let mut byte = [0u8; 1];
                        while !raw.ends_with(b"\r\n\r\n") {
                            match stream.read(&mut byte) {
                                Ok(1) => raw.push(byte[0]),
                                _ => return,
                            }
                        }
                        let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        let mut body = vec![0u8; len];
                        if stream.read_exact(&mut body).is_err() {
                            return;
                        }
                        raw.extend_from_slice(&body);
                        record.lock().unwrap().push((conn, raw));
                        if n == 1 {
                            return; // closed, unanswered
                        }
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ClosesPooled { addr, seen }
    }

    /// The upstream's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in order: (connection number, raw bytes).
    pub fn seen(&self) -> Vec<(usize, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }
}
