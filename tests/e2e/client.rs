//! A tiny blocking HTTP/1.1 client that writes exactly the bytes a test gives
//! it. Client libraries normalise paths (`/./`, `%2F`, `//`), which is what
//! the proxy must refuse, so the path tests need a client that does not.
//!
//! The same [`Req`] also goes over HTTP/2 ([`Proto::H2`]): TLS with ALPN
//! `h2` to the proxy's HTTPS listener (a [`ProxyBuilder::https`]
//! proxy), through reqwest, with the same method, target, header fields (in
//! order, repeats kept; no `Host`, which HTTP/2 carries as `:authority`) and
//! body: a whole body as one DATA frame with its `content-length`, a chunked
//! one as one DATA frame per piece with no `content-length`, an
//! [`Req::exact`] body with only the length headers the test wrote. So one
//! table of requests runs over both protocols, the protocol a column.
//!
//! [`ProxyBuilder::https`]: super::harness::ProxyBuilder::https

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde_json::Value;

/// Which protocol a request goes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 on the proxy's plain listener: exactly the bytes of the request.
    H1,
    /// HTTP/2 over TLS (ALPN `h2` only) on the proxy's HTTPS listener.
    H2,
}

impl Proto {
    /// Both, for a table whose protocol is a column.
    pub const ALL: [Proto; 2] = [Proto::H1, Proto::H2];
}

/// A proxy's HTTPS listener and the CA its certificate chains to.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    pub addr: SocketAddr,
    pub ca_pem: Arc<str>,
}

/// The runtime every HTTP/2 exchange of the test process runs on: tests stay
/// blocking functions, and connections keep being served between two reads
/// of a streamed body.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("e2e-h2-client")
        .enable_all()
        .build()
        .expect("HTTP/2 client runtime")
});

/// Upper bound on any single read: a hung proxy fails the test instead of
/// hanging the suite.
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// One HTTP response as the client received it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Lowercased names, in order, repeats preserved.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    /// The `x-request-id` header; panics when it is missing.
    pub fn request_id(&self) -> &str {
        self.header("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id on response: {self:?}"))
    }
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// A client connection that can carry several requests (keep-alive) or read
/// a streamed body piece by piece.
pub struct Conn {
    reader: BufReader<TcpStream>,
    framing: Option<Framing>,
    done: bool,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(stream),
            framing: None,
            done: true,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).expect("write request");
        stream.flush().expect("flush request");
    }

    /// Reads a status line and headers; the body is then read with
    /// [`Conn::read_piece`] or [`Conn::read_body`].
    pub fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.read_line();
        let status = parse_status(&status_line);
        let mut headers = Vec::new();
        loop {
            let line = self.read_line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("malformed header line {line:?}"));
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let find = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
        let chunked = find("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        let framing = if chunked {
            Framing::Chunked
        } else if let Some(len) = find("content-length") {
            Framing::Length(len.parse().expect("content-length"))
        } else if status == 204 || status == 304 {
            Framing::Length(0)
        } else {
            Framing::UntilClose
        };
        self.framing = Some(framing);
        self.done = matches!(framing, Framing::Length(0));
        (status, headers)
    }

    /// The next piece of body as it arrives; `None` at the end of the body.
    pub fn read_piece(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        match self.framing.expect("read_head first") {
            Framing::Length(remaining) => {
                let buf = self.reader.fill_buf().expect("read body");
                assert!(!buf.is_empty(), "connection closed inside the body");
                let n = buf.len().min(remaining);
                let piece = buf[..n].to_vec();
                self.reader.consume(n);
                self.framing = Some(Framing::Length(remaining - n));
                self.done = remaining == n;
                Some(piece)
            }
            Framing::Chunked => {
                let size_line = self.read_line();
                let size_hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.read_line().is_empty() {}
                    self.done = true;
                    return None;
                }
                let mut piece = vec![0; size];
                self.reader.read_exact(&mut piece).expect("read chunk");
                let end = self.read_line();
                assert!(end.is_empty(), "chunk not followed by CRLF: {end:?}");
                Some(piece)
            }
            Framing::UntilClose => {
                let buf = self.reader.fill_buf().expect("read body");
                if buf.is_empty() {
                    self.done = true;
                    return None;
                }
                let piece = buf.to_vec();
                self.reader.consume(piece.len());
                Some(piece)
            }
        }
    }

    /// Reads body pieces until `needle` has arrived; returns what was read.
    pub fn read_until(&mut self, needle: &str) -> String {
        let mut seen = String::new();
        while !seen.contains(needle) {
            let piece = self
                .read_piece()
                .unwrap_or_else(|| panic!("body ended before {needle:?}; got {seen:?}"));
            seen.push_str(&String::from_utf8_lossy(&piece));
        }
        seen
    }

    /// Reads the rest of the current body.
    pub fn read_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        while let Some(piece) = self.read_piece() {
            body.extend_from_slice(&piece);
        }
        body
    }

    pub fn read_response(&mut self) -> Response {
        let (status, headers) = self.read_head();
        let body = self.read_body();
        Response {
            status,
            headers,
            body,
        }
    }

    /// Sends `bytes` one at a time, `every` apart, until the peer starts
    /// answering or closes (or all are sent); returns how many were sent.
    /// Stops writing as soon as anything arrives, so that a reset cannot
    /// destroy the answer before it is read.
    pub fn trickle(&mut self, bytes: &[u8], every: Duration) -> usize {
        self.reader
            .get_ref()
            .set_read_timeout(Some(every))
            .expect("read timeout");
        let mut sent = 0;
        for b in bytes {
            if self.reader.get_mut().write_all(&[*b]).is_err() {
                break;
            }
            sent += 1;
            match self.reader.fill_buf() {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                _ => break,
            }
        }
        self.reader
            .get_ref()
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        sent
    }

    /// True when the peer has closed the connection (EOF or reset).
    pub fn is_closed_by_peer(&mut self) -> bool {
        match self.reader.fill_buf() {
            Ok(buf) => buf.is_empty(),
            Err(_) => true,
        }
    }

    fn read_line(&mut self) -> String {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).expect("read line");
        assert!(
            line.ends_with(b"\n"),
            "connection closed mid-line: {:?}",
            String::from_utf8_lossy(&line)
        );
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        String::from_utf8_lossy(&line).into_owned()
    }
}

fn parse_status(line: &str) -> u16 {
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or("");
    assert!(version.starts_with("HTTP/1."), "bad status line {line:?}");
    parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
}

/// Writes `bytes` on a fresh connection and reads one response.
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut conn = Conn::open(addr);
    conn.send(bytes);
    conn.read_response()
}

/// A request under construction; `send` writes it on a fresh connection.
#[derive(Debug, Clone)]
pub struct Req {
    addr: SocketAddr,
    method: String,
    target: String,
    /// The first is the `host` [`Req::new`] adds (not sent over HTTP/2).
    headers: Vec<(String, String)>,
    body: Body,
    proto: Proto,
    tls: Option<TlsTarget>,
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Full(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
    /// Written as is, with only the framing headers the test added.
    Exact(Vec<u8>),
}

impl Req {
    pub fn new(addr: SocketAddr, method: &str, target: &str) -> Req {
        Req {
            addr,
            method: method.to_string(),
            target: target.to_string(),
            headers: vec![("host".to_string(), addr.to_string())],
            body: Body::None,
            proto: Proto::H1,
            tls: None,
        }
    }

    /// The HTTPS listener [`Proto::H2`] requests go to.
    pub fn with_tls(mut self, tls: Option<TlsTarget>) -> Req {
        self.tls = tls;
        self
    }

    /// Sends it over `proto` (default [`Proto::H1`]).
    pub fn over(mut self, proto: Proto) -> Req {
        self.proto = proto;
        self
    }

    /// Adds a header (repeats allowed, in order).
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Presents `secret` in `x-portkey-api-key`.
    pub fn key(self, secret: &str) -> Req {
        self.header("x-portkey-api-key", secret)
    }

    /// Presents `secret` as `Authorization: Bearer`.
    pub fn bearer(self, secret: &str) -> Req {
        self.header("authorization", &format!("Bearer {secret}"))
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json(self, body: impl AsRef<[u8]>) -> Req {
        self.header("content-type", "application/json").body(body)
    }

    /// A body with `Content-Length` and whatever content type was set.
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Req {
        self.body = Body::Full(body.as_ref().to_vec());
        self
    }

    /// A body written exactly as given, with no framing header added: the
    /// test writes its own `content-length` (HTTP/1.1: a body without one
    /// is not a body). Over HTTP/2 it is one DATA frame.
    pub fn exact(mut self, body: impl AsRef<[u8]>) -> Req {
        self.body = Body::Exact(body.as_ref().to_vec());
        self
    }

    /// A body sent with `Transfer-Encoding: chunked` (HTTP/2: one DATA frame
    /// per piece, no `content-length`), one chunk per piece.
    pub fn chunked<I, P>(mut self, pieces: I) -> Req
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        self.body = Body::Chunked(pieces.into_iter().map(|p| p.as_ref().to_vec()).collect());
        self
    }

    /// The exact bytes this request puts on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        match &self.body {
            Body::None => out.extend_from_slice(b"\r\n"),
            Body::Full(body) => {
                out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            Body::Exact(body) => {
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(body);
            }
            Body::Chunked(pieces) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                for piece in pieces.iter().filter(|p| !p.is_empty()) {
                    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        out
    }

    /// Sends it over its protocol on a fresh connection; reads the response.
    pub fn send(self) -> Response {
        match self.proto {
            Proto::H1 => raw_request(self.addr, &self.to_bytes()),
            Proto::H2 => {
                let mut open = self.open();
                let body = open.read_body();
                Response {
                    status: open.status,
                    headers: open.headers,
                    body,
                }
            }
        }
    }

    /// Sends the request and returns the connection after reading only the
    /// response head, to read a streamed body piece by piece (HTTP/1.1).
    pub fn send_streaming(self) -> (Conn, u16, Vec<(String, String)>) {
        assert_eq!(
            self.proto,
            Proto::H1,
            "send_streaming is HTTP/1.1: use open()"
        );
        let mut conn = Conn::open(self.addr);
        conn.send(&self.to_bytes());
        let (status, headers) = conn.read_head();
        (conn, status, headers)
    }

    /// Sends the request over its protocol and reads only the response head;
    /// the body is then read piece by piece. Dropping it closes the
    /// connection (HTTP/1.1) or cancels the stream (HTTP/2).
    pub fn open(self) -> Streaming {
        match self.proto {
            Proto::H1 => {
                let (conn, status, headers) = self.send_streaming();
                Streaming {
                    status,
                    headers,
                    body: StreamBody::H1(conn),
                }
            }
            Proto::H2 => {
                let request = self.h2_request();
                let resp = RUNTIME
                    .block_on(async {
                        tokio::time::timeout(IO_TIMEOUT, request.send())
                            .await
                            .expect("no HTTP/2 response head in time")
                    })
                    .unwrap_or_else(|e| panic!("HTTP/2 request failed: {e:?}"));
                assert_eq!(resp.version(), reqwest::Version::HTTP_2);
                Streaming {
                    status: resp.status().as_u16(),
                    headers: resp
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body: StreamBody::H2(resp),
                }
            }
        }
    }

    /// Sends it over HTTP/2 and returns what went wrong, for requests the
    /// HTTP/2 layer itself must refuse (a malformed request is a stream
    /// error, RFC 9113 8.1.1): `Err` when the stream was reset, `Ok` with
    /// the response otherwise.
    pub fn try_send_h2(self) -> Result<Response, String> {
        assert_eq!(self.proto, Proto::H2);
        let request = self.h2_request();
        RUNTIME.block_on(async {
            let resp = tokio::time::timeout(IO_TIMEOUT, request.send())
                .await
                .expect("no HTTP/2 answer in time")
                .map_err(|e| format!("{e:?}"))?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = resp.bytes().await.map_err(|e| format!("{e:?}"))?.to_vec();
            Ok(Response {
                status,
                headers,
                body,
            })
        })
    }

    /// The reqwest request for [`Proto::H2`].
    fn h2_request(&self) -> reqwest::RequestBuilder {
        let tls = self.tls.as_ref().unwrap_or_else(|| {
            panic!("an HTTP/2 request needs a proxy started with ProxyBuilder::https()")
        });
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).expect("test CA"),
            )
            .resolve("localhost", tls.addr)
            .http2_prior_knowledge()
            .connect_timeout(IO_TIMEOUT)
            .build()
            .expect("HTTP/2 client");
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).expect("method");
        let url = format!("https://localhost:{}{}", tls.addr.port(), self.target);
        let mut b = client.request(method, url);
        // Skip the `host` of Req::new: HTTP/2 has `:authority`.
        for (name, value) in self.headers.iter().skip(1) {
            b = b.header(name.as_str(), value.as_str());
        }
        let frames = |pieces: Vec<Vec<u8>>| {
            reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces.into_iter().map(Ok::<_, std::io::Error>),
            ))
        };
        match &self.body {
            Body::None => b,
            Body::Full(body) => b.body(body.clone()),
            Body::Exact(body) => b.body(frames(vec![body.clone()])),
            Body::Chunked(pieces) => b.body(frames(
                pieces.iter().filter(|p| !p.is_empty()).cloned().collect(),
            )),
        }
    }
}

/// A response whose body is read as it arrives, over either protocol.
pub struct Streaming {
    pub status: u16,
    /// Lowercased names, in order.
    pub headers: Vec<(String, String)>,
    body: StreamBody,
}

enum StreamBody {
    H1(Conn),
    H2(reqwest::Response),
}

impl Streaming {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next piece of body as it arrives; `None` at its end.
    pub fn read_piece(&mut self) -> Option<Vec<u8>> {
        match &mut self.body {
            StreamBody::H1(conn) => conn.read_piece(),
            StreamBody::H2(resp) => RUNTIME.block_on(async {
                tokio::time::timeout(IO_TIMEOUT, resp.chunk())
                    .await
                    .expect("no HTTP/2 body piece in time")
                    .expect("HTTP/2 body")
                    .map(|b| b.to_vec())
            }),
        }
    }

    /// Reads body pieces until `needle` has arrived; returns what was read.
    pub fn read_until(&mut self, needle: &str) -> String {
        let mut seen = String::new();
        while !seen.contains(needle) {
            let piece = self
                .read_piece()
                .unwrap_or_else(|| panic!("body ended before {needle:?}; got {seen:?}"));
            seen.push_str(&String::from_utf8_lossy(&piece));
        }
        seen
    }

    /// Reads the rest of the body.
    pub fn read_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        while let Some(piece) = self.read_piece() {
            body.extend_from_slice(&piece);
        }
        body
    }
}
