//! A real OTLP trace receiver for tests: OTLP/HTTP (`POST /v1/traces`,
//! protobuf) or OTLP/gRPC (`TraceService/Export`), decoding what it gets
//! with the official protobuf definitions (`opentelemetry-proto`).
//!
//! Like the recording upstreams, it runs its own tokio runtime on its own
//! thread, so tests stay plain blocking functions. [`OtlpReceiver::set_mode`]
//! makes it answer as a failing collector would: 503 / UNAVAILABLE, or
//! ten seconds late.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How the receiver answers exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Accepts and keeps the spans.
    Ok,
    /// 503 (HTTP) or UNAVAILABLE (gRPC); keeps nothing.
    Unavailable,
    /// Waits [`SLOW_EXPORT`] per export, then accepts.
    Slow,
}

/// How long a [`Mode::Slow`] export takes.
pub const SLOW_EXPORT: Duration = Duration::from_secs(10);

/// One span as received, with its resource and scope.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// The resource's attributes (`service.name`, …).
    pub resource: Vec<KeyValue>,
    /// The instrumentation scope's name.
    pub scope: String,
    /// The span.
    pub span: Span,
}

impl ReceivedSpan {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&any_value::Value> {
        find(&self.span.attributes, key)
    }

    /// A string attribute.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        match self.attr(key)? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// An integer attribute.
    pub fn int_attr(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        }
    }

    /// A string attribute of the resource.
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        match find(&self.resource, key)? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }

    /// The span id as 16 hex digits.
    pub fn span_id(&self) -> String {
        hex::encode(&self.span.span_id)
    }

    /// The parent span id as 16 hex digits ("" for a root).
    pub fn parent_span_id(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }
}

fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

#[derive(Default)]
struct State {
    spans: Mutex<Vec<ReceivedSpan>>,
    mode: Mutex<Option<Mode>>,
    exports: AtomicUsize,
    /// Header names and values of the last export request.
    last_headers: Mutex<Vec<(String, String)>>,
    /// Every export's protobuf bytes, one after the other (gRPC: the
    /// decoded request encoded again, the same fields and strings).
    raw: Mutex<Vec<u8>>,
}

impl State {
    fn mode(&self) -> Mode {
        self.mode.lock().unwrap().unwrap_or(Mode::Ok)
    }

    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                for span in ss.spans {
                    spans.push(ReceivedSpan {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        span,
                    });
                }
            }
        }
    }

    fn saw_headers<'a>(&self, headers: impl Iterator<Item = (&'a str, &'a [u8])>) {
        *self.last_headers.lock().unwrap() = headers
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned()))
            .collect();
    }
}

/// A running OTLP receiver on a fresh loopback port; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// OTLP/HTTP: spans are POSTed to `/v1/traces` as protobuf.
    pub fn start_http() -> OtlpReceiver {
        OtlpReceiver::start(false)
    }

    /// OTLP/gRPC: the `TraceService`.
    pub fn start_grpc() -> OtlpReceiver {
        OtlpReceiver::start(true)
    }

    fn start(grpc: bool) -> OtlpReceiver {
        let state = Arc::new(State::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let st = state.clone();
        let thread = thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                    ready_tx.send(listener.local_addr().unwrap()).unwrap();
                    if grpc {
                        serve_grpc(listener, st, stopped).await;
                    } else {
                        serve_http(listener, st, stopped).await;
                    }
                });
                // Dropping the runtime cancels exports still sleeping.
            })
            .unwrap();
        let addr = ready_rx.recv().unwrap();
        OtlpReceiver {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: the `otlp_endpoint` to configure (for
    /// OTLP/HTTP, `/v1/traces` is appended by the exporter).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span accepted so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state.spans.lock().unwrap().clone()
    }

    /// Export requests received, whatever the answer.
    pub fn exports(&self) -> usize {
        self.state.exports.load(Ordering::SeqCst)
    }

    /// The protobuf bytes of every accepted export so far, concatenated.
    pub fn raw(&self) -> Vec<u8> {
        self.state.raw.lock().unwrap().clone()
    }

    /// The headers (gRPC: metadata) of the last export request.
    pub fn last_headers(&self) -> Vec<(String, String)> {
        self.state.last_headers.lock().unwrap().clone()
    }

    /// How exports are answered from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = Some(mode);
    }

    /// Waits (polling) until at least `n` spans arrived; returns them all.
    pub fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let arrived = super::harness::poll_until(timeout, || self.spans().len() >= n);
        let spans = self.spans();
        assert!(
            arrived,
            "expected {n} spans within {timeout:?}, got {}",
            spans.len()
        );
        spans
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_http(listener: TcpListener, state: Arc<State>, mut stopped: oneshot::Receiver<()>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = &mut stopped => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(http_export(req, &state).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn http_export(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let answer = |status: StatusCode, body: Bytes| {
        Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(body))
            .unwrap()
    };
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/traces" {
        return answer(StatusCode::NOT_FOUND, Bytes::new());
    }
    state.exports.fetch_add(1, Ordering::SeqCst);
    state.saw_headers(
        req.headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes())),
    );
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.as_bytes().to_vec());
    let mode = state.mode();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return answer(StatusCode::BAD_REQUEST, Bytes::new()),
    };
    match mode {
        Mode::Unavailable => return answer(StatusCode::SERVICE_UNAVAILABLE, Bytes::new()),
        Mode::Slow => tokio::time::sleep(SLOW_EXPORT).await,
        Mode::Ok => {}
    }
    if content_type.as_deref() != Some(b"application/x-protobuf".as_slice()) {
        return answer(StatusCode::UNSUPPORTED_MEDIA_TYPE, Bytes::new());
    }
    state.raw.lock().unwrap().extend_from_slice(&body);
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return answer(StatusCode::BAD_REQUEST, Bytes::new());
    };
    state.keep(request);
    let reply = ExportTraceServiceResponse::default().encode_to_vec();
    answer(StatusCode::OK, Bytes::from(reply))
}

struct GrpcTraces(Arc<State>);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let state = &self.0;
        state.exports.fetch_add(1, Ordering::SeqCst);
        let headers = request.metadata().clone().into_headers();
        state.saw_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
        match state.mode() {
            Mode::Unavailable => return Err(tonic::Status::unavailable("receiver is down")),
            Mode::Slow => tokio::time::sleep(SLOW_EXPORT).await,
            Mode::Ok => {}
        }
        let request = request.into_inner();
        state
            .raw
            .lock()
            .unwrap()
            .extend_from_slice(&request.encode_to_vec());
        state.keep(request);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn serve_grpc(listener: TcpListener, state: Arc<State>, mut stopped: oneshot::Receiver<()>) {
    let service = TraceServiceServer::new(GrpcTraces(state));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = &mut stopped => return,
        };
        let service = hyper_util::service::TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
        });
    }
}
