//! Built-in demo upstreams for `scopegate demo`.
//!
//! Two small HTTP/1.1 servers stand in for the services scopegate guards, so the
//! demo runs with nothing else installed:
//!
//! - [`serve_completions_mock`]: an OpenAI-compatible completions service (the data
//!   plane). It answers chat completions, legacy completions, embeddings and the
//!   model list with canned JSON, streams chat completions as server-sent events
//!   when asked to, and tells the caller which scopegate identity headers
//!   (`x-scopegate-key-id`, `x-scopegate-workspace-id`) reached it. `GET
//!   /v1/realtime` takes a WebSocket upgrade (the route the example config opts
//!   in with `upgrade: websocket`): after the `101` it sends one text frame and
//!   echoes the client's bytes.
//! - [`serve_admin_echo`]: an admin service (the control plane) that answers every
//!   request with 200 and a Portkey-shaped echo of the method, path, `x-scopegate-*`
//!   headers and body, so the demo shows exactly what the proxy forwarded.
//!
//! Both serve one task per connection with keep-alive, never panic on client
//! input, and stop — connections included — when the future serving the listener
//! is dropped or its task aborted. They are demo fixtures, not production
//! servers: no TLS, no HTTP/2, bodies are read whole (up to [`MAX_BODY_BYTES`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Largest request body either demo upstream reads; larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Content chunks in a streamed chat completion (before the finishing chunk).
const STREAM_CONTENT_CHUNKS: usize = 5;

/// Pause between two streamed events, so streaming is visible in a terminal.
const STREAM_CHUNK_DELAY: Duration = Duration::from_millis(100);

/// How long a client may take to send request headers before the connection
/// is closed (keeps idle or slow connections from piling up).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after an accept error such as running out of file descriptors, so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Model named in answers when the request names none.
const DEFAULT_CHAT_MODEL: &str = "gpt-4o-mini";
const DEFAULT_EMBEDDING_MODEL: &str = "text-embedding-3-small";

/// Models listed by `GET /v1/models`.
const MODELS: [&str; 3] = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"];

/// Embedding length when the request does not ask for `dimensions`.
const DEFAULT_EMBEDDING_DIMENSIONS: usize = 8;
const MAX_EMBEDDING_DIMENSIONS: usize = 3072;

const KEY_ID_HEADER: &str = "x-scopegate-key-id";
const WORKSPACE_ID_HEADER: &str = "x-scopegate-workspace-id";
const SCOPEGATE_HEADER_PREFIX: &str = "x-scopegate-";

/// The path of the mock's WebSocket fixture.
const REALTIME_PATH: &str = "/v1/realtime";

/// RFC 6455 4.2.2: appended to `Sec-WebSocket-Key` before hashing.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Response body of both servers: a whole buffer or a channel-fed stream.
type DemoBody = BoxBody<Bytes, Infallible>;

/// Put in each request's extensions by [`serve`]: `changed()` returns once the
/// server's future is dropped, so work that outlives its connection (an upgraded
/// tunnel) ends with the server too.
#[derive(Clone)]
struct ServerStopped(watch::Receiver<()>);

/// Serves the OpenAI-compatible completions mock on `listener`.
///
/// | request | answer |
/// |---|---|
/// | `POST /v1/chat/completions` | a `chat.completion` echoing `model`; with `"stream": true`, `text/event-stream` of `chat.completion.chunk` events ending in `data: [DONE]` |
/// | `POST /v1/completions` | a `text_completion` |
/// | `POST /v1/embeddings` | a `list` of deterministic `embedding`s, one per input |
/// | `GET /v1/models` | a `list` of `model`s |
/// | `GET /v1/realtime` with `Upgrade: websocket` | `101 Switching Protocols`, then one WebSocket text frame naming the identity headers, then an echo of the client's bytes until it closes (see [`realtime`]); without the upgrade headers, 400 |
/// | anything else under `/v1/` | 200 `{"object": "mock", "method": ..., "path": ...}` |
/// | outside `/v1/` | 404, in `OpenAI`'s error shape |
///
/// The assistant's text names the `x-scopegate-key-id` and
/// `x-scopegate-workspace-id` headers the request carried. A JSON endpoint given
/// a body that is not a JSON object answers 400 in OpenAI's error shape.
///
/// Runs until the returned future is dropped (e.g. its task aborted); open
/// connections and streams end with it.
///
/// # Errors
///
/// Returns the accept error when the listener is unusable (`InvalidInput`, e.g.
/// a socket that is not listening). Other accept errors — a connection reset
/// before it was accepted, running out of file descriptors — are logged and
/// the loop goes on.
pub async fn serve_completions_mock(listener: TcpListener) -> io::Result<()> {
    serve(listener, "completions-mock", completions_mock).await
}

/// Serves the admin echo on `listener`.
///
/// Every request is answered with 200 and
/// `{"success": true, "data": {"method", "path", "headers", "body"}}`: `path`
/// includes the query string, `headers` holds only the `x-scopegate-*` request
/// headers (repeated ones joined with `", "`), and `body` is the request body
/// parsed as JSON when it is JSON, else the body as a (lossy UTF-8) string, and
/// `null` when empty. A body over [`MAX_BODY_BYTES`] answers 413 in Portkey's
/// error shape.
///
/// Runs until the returned future is dropped (e.g. its task aborted); open
/// connections end with it.
///
/// # Errors
///
/// As [`serve_completions_mock`].
pub async fn serve_admin_echo(listener: TcpListener) -> io::Result<()> {
    serve(listener, "admin-echo", admin_echo).await
}

/// Accept loop shared by both servers: one task per connection, all owned by a
/// [`JoinSet`] so that dropping this future also closes every connection.
async fn serve<H, F>(listener: TcpListener, name: &'static str, handler: H) -> io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Copy + Send + Sync + 'static,
    F: Future<Output = Response<DemoBody>> + Send + 'static,
{
    let mut connections = JoinSet::new();
    // Dropped with this future: tells upgraded tunnels (no longer connections
    // of the set) to end.
    let (_running, stopped) = watch::channel(());
    loop {
        // Reap finished connections so the set only holds live ones.
        while connections.try_join_next().is_some() {}

        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) if err.kind() == io::ErrorKind::InvalidInput => return Err(err),
            Err(err) => {
                tracing::warn!(server = name, error = %err, "demo upstream: accept failed");
                if !is_connection_error(&err) {
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
                continue;
            }
        };
        let stopped = ServerStopped(stopped.clone());
        connections.spawn(async move {
            let service = service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(stopped.clone());
                async move { Ok::<_, Infallible>(handler(request).await) }
            });
            let result = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(err) = result {
                tracing::debug!(server = name, %peer, error = %err, "demo upstream: connection ended with an error");
            }
        });
    }
}

/// Accept errors that concern one connection only, so retrying at once is right.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

// ---------------------------------------------------------------------------
// Completions mock
// ---------------------------------------------------------------------------

async fn completions_mock(request: Request<Incoming>) -> Response<DemoBody> {
    if request.method() == Method::GET && request.uri().path() == REALTIME_PATH {
        return realtime(request);
    }
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if !path.starts_with("/v1/") {
        return openai_error(
            StatusCode::NOT_FOUND,
            &format!("Unknown path {path}: the demo completions mock serves /v1/ only."),
        );
    }
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return openai_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("Request body is larger than {MAX_BODY_BYTES} bytes."),
            )
        }
        Err(BodyError::Read) => {
            return openai_error(StatusCode::BAD_REQUEST, "Could not read the request body.")
        }
    };
    let identity = Identity::from_headers(&parts.headers);

    match (&parts.method, path) {
        (&Method::POST, "/v1/chat/completions") => {
            with_json_object(&body, |request| chat_completion(request, &identity))
        }
        (&Method::POST, "/v1/completions") => {
            with_json_object(&body, |request| text_completion(request, &identity))
        }
        (&Method::POST, "/v1/embeddings") => with_json_object(&body, embeddings),
        (&Method::POST, "/v1/messages") => {
            with_json_object(&body, |request| anthropic_message(request, &identity))
        }
        (&Method::GET, "/v1/models") => models(),
        (method, path) => json_response(
            StatusCode::OK,
            &json!({"object": "mock", "method": method.as_str(), "path": path}),
        ),
    }
}

/// `GET /v1/realtime`: a WebSocket handshake answered `101 Switching Protocols`
/// (`Sec-WebSocket-Accept` computed per RFC 6455), after which a task sends one
/// unmasked text frame naming the identity headers the handshake carried, then
/// writes back whatever bytes the client sends until it closes (or the server
/// stops). A demo fixture, not a WebSocket implementation: the client's frames
/// are echoed as they are (masked, so not valid server frames), close frames
/// are not answered, and nothing is parsed. A request without `Upgrade:
/// websocket` and a `Sec-WebSocket-Key` answers 400 in OpenAI's error shape.
fn realtime(mut request: Request<Incoming>) -> Response<DemoBody> {
    let headers = request.headers();
    let wants_websocket = headers
        .get(hyper::header::UPGRADE)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = headers.get(hyper::header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (wants_websocket, key) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "{REALTIME_PATH} is a WebSocket endpoint: send `Connection: Upgrade`, \
                 `Upgrade: websocket` and a `Sec-WebSocket-Key`."
            ),
        );
    };
    let greeting = Identity::from_headers(headers).websocket_greeting();
    let stopped = request.extensions_mut().remove::<ServerStopped>();
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let tunnel = async move {
            let Ok(upgraded) = upgrade.await else {
                return;
            };
            echo_after_greeting(TokioIo::new(upgraded), &greeting).await;
        };
        match stopped {
            Some(ServerStopped(mut stopped)) => {
                tokio::select! {
                    () = tunnel => {}
                    _ = stopped.changed() => {}
                }
            }
            None => tunnel.await,
        }
    });

    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let out = response.headers_mut();
    out.insert(
        hyper::header::UPGRADE,
        HeaderValue::from_static("websocket"),
    );
    out.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(accept) = HeaderValue::from_str(&websocket_accept(key.as_bytes())) {
        out.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// RFC 6455 4.2.2: base64(SHA-1(key + GUID)).
fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

/// One unmasked, final WebSocket text frame carrying `text` (RFC 6455 5.2).
fn websocket_text_frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    let mut frame = vec![0x81];
    match payload.len() {
        len @ 0..=125 => frame.push(len as u8),
        len => match u16::try_from(len) {
            Ok(len) => {
                frame.push(126);
                frame.extend_from_slice(&len.to_be_bytes());
            }
            Err(_) => {
                frame.push(127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        },
    }
    frame.extend_from_slice(payload);
    frame
}

/// Sends the greeting frame, then echoes the client's bytes until it closes.
async fn echo_after_greeting<S>(mut io: S, greeting: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if io.write_all(&websocket_text_frame(greeting)).await.is_err() {
        return;
    }
    let mut buffer = [0_u8; 8192];
    loop {
        match io.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => {
                if io.write_all(&buffer[..read]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The scopegate identity headers a request reached the mock with.
struct Identity {
    key_id: Option<String>,
    workspace_id: Option<String>,
}

impl Identity {
    fn from_headers(headers: &HeaderMap) -> Self {
        let get = |name: &str| {
            headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        };
        Self {
            key_id: get(KEY_ID_HEADER),
            workspace_id: get(WORKSPACE_ID_HEADER),
        }
    }

    /// The canned assistant answer, naming what scopegate told the upstream.
    fn assistant_text(&self) -> String {
        format!(
            "Hello from the scopegate demo completions mock! This request arrived with {}.",
            self.described()
        )
    }

    /// The first frame of a [`realtime`] tunnel.
    fn websocket_greeting(&self) -> String {
        // Kept under 126 bytes for the demo's keys, so the frame's header is two
        // bytes and the text reads cleanly in a terminal.
        format!(
            "Demo mock, WebSocket open: the upgrade arrived with {}.",
            self.described()
        )
    }

    fn described(&self) -> String {
        let show = |value: &Option<String>| value.clone().unwrap_or_else(|| "(absent)".to_owned());
        format!(
            "{KEY_ID_HEADER}: {} and {WORKSPACE_ID_HEADER}: {}",
            show(&self.key_id),
            show(&self.workspace_id),
        )
    }
}

fn chat_completion(request: &Map<String, Value>, identity: &Identity) -> Response<DemoBody> {
    let model = requested_model(request, DEFAULT_CHAT_MODEL);
    let text = identity.assistant_text();
    let id = format!("chatcmpl-mock-{}", next_id());
    let created = unix_now();
    let messages = request.get("messages").cloned().unwrap_or(Value::Null);
    let prompt_tokens = estimate_tokens(&messages);
    let completion_tokens = text.split_whitespace().count();
    // The mock plays a prompt cache: the system messages are "read from
    // the cache", as OpenAI reports it (part of `prompt_tokens`).
    let cached_tokens = cached_system_tokens(&messages).min(prompt_tokens);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    });

    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        let include_usage = request
            .get("stream_options")
            .and_then(|options| options.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
        let chunk = |delta: Value, finish_reason: Value| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_scopegate_demo",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
            })
        };
        let mut events: Vec<Value> = split_words(&text, STREAM_CONTENT_CHUNKS)
            .into_iter()
            .enumerate()
            .map(|(index, piece)| {
                let delta = if index == 0 {
                    json!({"role": "assistant", "content": piece})
                } else {
                    json!({"content": piece})
                };
                chunk(delta, Value::Null)
            })
            .collect();
        events.push(chunk(json!({}), json!("stop")));
        if include_usage {
            let mut last = chunk(json!({}), Value::Null);
            last["choices"] = json!([]);
            last["usage"] = usage;
            events.push(last);
        }
        return sse_response(events);
    }

    json_response(
        StatusCode::OK,
        &json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_scopegate_demo",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
        }),
    )
}

/// Anthropic's Messages API: a `message` object, or with `stream: true` its
/// named events (`message_start` … `message_stop`), usage included.
fn anthropic_message(request: &Map<String, Value>, identity: &Identity) -> Response<DemoBody> {
    let model = requested_model(request, "claude-sonnet-4-5");
    let text = identity.assistant_text();
    let input_tokens = estimate_tokens(&request.get("messages").cloned().unwrap_or(Value::Null));
    let output_tokens = text.split_whitespace().count();
    // The mock plays a prompt cache: the `system` prompt is read from it,
    // reported beside `input_tokens` as Anthropic does.
    let cache_read = request.get("system").map_or(0, estimate_tokens);
    let usage = |output: usize| {
        json!({"input_tokens": input_tokens, "cache_read_input_tokens": cache_read,
            "cache_creation_input_tokens": 0, "output_tokens": output})
    };
    let id = format!("msg_demo_{}", next_id());
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        let mut events = vec![
            (
                "message_start".to_string(),
                json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": usage(1)}}),
            ),
            (
                "content_block_start".to_string(),
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
        ];
        for piece in split_words(&text, 3) {
            events.push((
                "content_block_delta".to_string(),
                json!({"type": "content_block_delta",
                "index": 0, "delta": {"type": "text_delta", "text": piece}}),
            ));
        }
        events.push((
            "content_block_stop".to_string(),
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push((
            "message_delta".to_string(),
            json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}}),
        ));
        events.push(("message_stop".to_string(), json!({"type": "message_stop"})));
        return named_sse_response(events);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": usage(output_tokens),
        }),
    )
}

/// An SSE response of named events (`event:` + `data:`), as Anthropic sends.
fn named_sse_response(events: Vec<(String, Value)>) -> Response<DemoBody> {
    sse_frames(
        events
            .iter()
            .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
            .collect(),
    )
}

fn text_completion(request: &Map<String, Value>, identity: &Identity) -> Response<DemoBody> {
    let text = identity.assistant_text();
    let prompt_tokens = estimate_tokens(&request.get("prompt").cloned().unwrap_or(Value::Null));
    let completion_tokens = text.split_whitespace().count();
    json_response(
        StatusCode::OK,
        &json!({
            "id": format!("cmpl-mock-{}", next_id()),
            "object": "text_completion",
            "created": unix_now(),
            "model": requested_model(request, DEFAULT_CHAT_MODEL),
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }),
    )
}

fn embeddings(request: &Map<String, Value>) -> Response<DemoBody> {
    // `input` is a string, a list of strings, a token list or a list of token lists.
    let inputs: Vec<Value> = match request.get("input") {
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![Value::Array(items.clone())]
        }
        Some(Value::Array(items)) => items.clone(),
        Some(other) => vec![other.clone()],
        None => Vec::new(),
    };
    let dimensions = request
        .get("dimensions")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .map_or(DEFAULT_EMBEDDING_DIMENSIONS, |d| {
            d.clamp(1, MAX_EMBEDDING_DIMENSIONS)
        });
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            json!({
                "object": "embedding",
                "index": index,
                "embedding": pseudo_embedding(&input.to_string(), dimensions),
            })
        })
        .collect();
    let tokens: usize = inputs.iter().map(estimate_tokens).sum();
    json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": requested_model(request, DEFAULT_EMBEDDING_MODEL),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    )
}

fn models() -> Response<DemoBody> {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "scopegate-demo"}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// The request's `model` when it is a non-empty string, else `default`.
fn requested_model(request: &Map<String, Value>, default: &str) -> String {
    match request.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        _ => default.to_owned(),
    }
}

/// The tokens of the `system` messages of a chat request: what the mock
/// reports as read from its pretend prompt cache.
fn cached_system_tokens(messages: &Value) -> usize {
    messages.as_array().map_or(0, |list| {
        list.iter()
            .filter(|m| m.get("role").and_then(Value::as_str) == Some("system"))
            .map(|m| m.get("content").map_or(0, estimate_tokens))
            .sum()
    })
}

/// A rough token count (about four characters a token), good enough for a mock.
fn estimate_tokens(value: &Value) -> usize {
    match value {
        Value::Null => 0,
        Value::String(text) => text.len().div_ceil(4),
        Value::Array(items) if items.iter().all(Value::is_number) => items.len(),
        other => other.to_string().len().div_ceil(4),
    }
}

/// A deterministic unit-ish vector derived from `text` (FNV-1a seeded xorshift).
fn pseudo_embedding(text: &str, dimensions: usize) -> Vec<f64> {
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Top 52 bits as the mantissa of a float in [1, 2), shifted to [0, 1),
            // then mapped to [-1, 1) and rounded to 4 decimals.
            let unit = f64::from_bits(0x3ff0_0000_0000_0000 | (state >> 12)) - 1.0;
            ((unit * 2.0 - 1.0) * 10_000.0).round() / 10_000.0
        })
        .collect()
}

/// Splits `text` at spaces into `pieces` parts of about as many words each
/// (fewer when there are fewer words) that concatenate back to it.
fn split_words(text: &str, pieces: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let pieces = pieces.min(words.len());
    (0..pieces)
        .map(|piece| {
            let start = piece * words.len() / pieces;
            let end = (piece + 1) * words.len() / pieces;
            words[start..end].concat()
        })
        .collect()
}

/// A `text/event-stream` response whose events are sent by a task, one every
/// [`STREAM_CHUNK_DELAY`], then `data: [DONE]`. The body is fed through a channel
/// so each event leaves as soon as it is produced; the task stops when the
/// client goes away (the body, and with it the receiver, is dropped).
fn sse_response(events: Vec<Value>) -> Response<DemoBody> {
    let frames = events
        .iter()
        .map(|event| format!("data: {event}\n\n"))
        .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
        .collect();
    sse_frames(frames)
}

/// An SSE response that sends each prepared frame, `STREAM_CHUNK_DELAY` apart.
fn sse_frames(frames: Vec<String>) -> Response<DemoBody> {
    let (sender, receiver) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        for (index, frame) in frames.into_iter().enumerate() {
            if index > 0 {
                tokio::time::sleep(STREAM_CHUNK_DELAY).await;
            }
            if sender.send(Bytes::from(frame)).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(ChannelBody { receiver }.boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A response body that yields whatever arrives on a channel, and ends when
/// every sender is gone.
struct ChannelBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.receiver
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Answers with `answer` applied to the body parsed as a JSON object, or with
/// the 400 that `OpenAI` gives when the body is not one.
fn with_json_object(
    body: &[u8],
    answer: impl FnOnce(&Map<String, Value>) -> Response<DemoBody>,
) -> Response<DemoBody> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => answer(&object),
        Ok(_) => openai_error(
            StatusCode::BAD_REQUEST,
            "The request body must be a JSON object.",
        ),
        Err(err) => openai_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "We could not parse the JSON body of your request. (HINT: This likely means \
                 you aren't using your HTTP library correctly.) Parser error: {err}"
            ),
        ),
    }
}

/// An error in OpenAI's shape; the mock's errors have `code: null`, so they can
/// be told apart from scopegate's own (which always carry a code).
fn openai_error(status: StatusCode, message: &str) -> Response<DemoBody> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

// ---------------------------------------------------------------------------
// Admin echo
// ---------------------------------------------------------------------------

async fn admin_echo(request: Request<Incoming>) -> Response<DemoBody> {
    let (parts, body) = request.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(error) => {
            let (status, message) = match error {
                BodyError::TooLarge => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("Request body is larger than {MAX_BODY_BYTES} bytes."),
                ),
                BodyError::Read => (
                    StatusCode::BAD_REQUEST,
                    "Could not read the request body.".to_owned(),
                ),
            };
            return json_response(
                status,
                &json!({"success": false, "data": {"message": message, "errorCode": "AB01"}}),
            );
        }
    };

    let mut headers = Map::new();
    for name in parts.headers.keys() {
        if !name.as_str().starts_with(SCOPEGATE_HEADER_PREFIX) {
            continue;
        }
        let values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice::<Value>(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    let path = parts.uri.path_and_query().map_or_else(
        || parts.uri.path(),
        |path_and_query| path_and_query.as_str(),
    );

    json_response(
        StatusCode::OK,
        &json!({
            "success": true,
            "data": {
                "method": parts.method.as_str(),
                "path": path,
                "headers": headers,
                "body": body,
            },
        }),
    )
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

enum BodyError {
    TooLarge,
    Read,
}

/// Reads a whole request body, refusing more than [`MAX_BODY_BYTES`].
async fn read_body(body: Incoming) -> Result<Bytes, BodyError> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Read),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<DemoBody> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A process-wide counter for response ids, so each answer is distinct.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;

    use super::*;

    /// A demo server on an ephemeral port, aborted when the test ends.
    struct Running {
        addr: SocketAddr,
        task: JoinHandle<io::Result<()>>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start<F, Fut>(serve: F) -> Running
    where
        F: FnOnce(TcpListener) -> Fut,
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        Running {
            addr,
            task: tokio::spawn(serve(listener)),
        }
    }

    /// One response as read off the wire; `chunks` holds each decoded chunk of a
    /// chunked body together with the moment its last byte arrived.
    struct RawResponse {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        chunks: Vec<(Instant, Vec<u8>)>,
    }

    impl RawResponse {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap_or_else(|err| {
                panic!(
                    "body is not JSON ({err}): {}",
                    String::from_utf8_lossy(&self.body)
                )
            })
        }
    }

    /// A bare HTTP/1.1 client over one TCP connection: writes request bytes as
    /// given and parses responses by hand, so tests see exactly what was sent.
    struct RawClient {
        stream: TcpStream,
        buffer: Vec<u8>,
    }

    impl RawClient {
        async fn connect(addr: SocketAddr) -> Self {
            Self {
                stream: TcpStream::connect(addr).await.expect("connect"),
                buffer: Vec::new(),
            }
        }

        async fn request(&mut self, raw: &str) -> RawResponse {
            self.stream
                .write_all(raw.as_bytes())
                .await
                .expect("write request");
            self.read_response().await
        }

        /// Reads more bytes into the buffer; returns when they arrived.
        async fn fill(&mut self) -> Instant {
            let mut chunk = [0_u8; 8192];
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("response within 10 s")
                .expect("read");
            assert!(read > 0, "connection closed mid-response");
            self.buffer.extend_from_slice(&chunk[..read]);
            Instant::now()
        }

        /// Takes `len` bytes off the front of the buffer, reading as needed.
        async fn take(&mut self, len: usize) -> (Instant, Vec<u8>) {
            let mut at = Instant::now();
            while self.buffer.len() < len {
                at = self.fill().await;
            }
            (at, self.buffer.drain(..len).collect())
        }

        /// Takes one CRLF-terminated line (without the CRLF).
        async fn line(&mut self) -> String {
            loop {
                if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                    let line: Vec<u8> = self.buffer.drain(..end + 2).take(end).collect();
                    return String::from_utf8(line).expect("ASCII line");
                }
                self.fill().await;
            }
        }

        async fn read_response(&mut self) -> RawResponse {
            let status_line = self.line().await;
            let status = status_line
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            let mut headers = Vec::new();
            loop {
                let line = self.line().await;
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').expect("header line");
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            let mut response = RawResponse {
                status,
                headers,
                body: Vec::new(),
                chunks: Vec::new(),
            };
            if let Some(length) = response.header("content-length") {
                let length = length.parse().expect("content-length");
                response.body = self.take(length).await.1;
            } else if response.header("transfer-encoding") == Some("chunked") {
                loop {
                    let size_line = self.line().await;
                    let size = usize::from_str_radix(size_line.split(';').next().unwrap_or(""), 16)
                        .expect("chunk size");
                    if size == 0 {
                        self.line().await; // the empty trailer section
                        break;
                    }
                    let (at, data) = self.take(size).await;
                    self.line().await;
                    response.body.extend_from_slice(&data);
                    response.chunks.push((at, data));
                }
            }
            response
        }
    }

    fn post_json(path: &str, extra_headers: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nhost: demo\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n{extra_headers}\r\n{body}",
            body.len()
        )
    }

    fn sse_events(body: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(body)
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| event.strip_prefix("data: ").expect("data event").to_owned())
            .collect()
    }

    #[tokio::test]
    async fn chat_completion_answers_json_naming_the_identity_headers() {
        let server = start(serve_completions_mock).await;
        let mut client = RawClient::connect(server.addr).await;
        let response = client
            .request(&post_json(
                "/v1/chat/completions",
                "x-scopegate-key-id: key_research_bot\r\nx-scopegate-workspace-id: ws_research\r\n",
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
            ))
            .await;

        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        let answer = response.json();
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["model"], "gpt-4o");
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        let content = answer["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        assert!(
            content.contains("x-scopegate-key-id: key_research_bot"),
            "{content}"
        );
        assert!(
            content.contains("x-scopegate-workspace-id: ws_research"),
            "{content}"
        );
        assert!(answer["usage"]["total_tokens"].as_u64().expect("usage") > 0);
    }

    #[tokio::test]
    async fn chat_completion_stream_arrives_in_chunks_over_time() {
        let server = start(serve_completions_mock).await;
        let mut client = RawClient::connect(server.addr).await;
        let response = client
            .request(&post_json(
                "/v1/chat/completions",
                "x-scopegate-key-id: key_alice\r\n",
                r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
            ))
            .await;

        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("text/event-stream"));
        assert!(
            response.chunks.len() >= 3,
            "expected several separate chunks, got {}",
            response.chunks.len()
        );
        let first = response.chunks.first().expect("first chunk").0;
        let last = response.chunks.last().expect("last chunk").0;
        // The server pauses STREAM_CHUNK_DELAY between events; a buffered answer
        // would deliver everything at once.
        let spread = last - first;
        assert!(
            spread >= STREAM_CHUNK_DELAY * 3,
            "first chunk should come well before the last, spread {spread:?}"
        );

        let events = sse_events(&response.body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|event| serde_json::from_str(event).expect("chunk JSON"))
            .collect();
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(text.contains("x-scopegate-key-id: key_alice"), "{text}");
        assert!(
            text.contains("x-scopegate-workspace-id: (absent)"),
            "{text}"
        );
        assert!(chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop"));
        assert!(chunks.last().expect("usage chunk")["usage"]["total_tokens"].is_u64());
    }

    #[tokio::test]
    async fn invalid_json_is_400_in_openai_shape_and_keeps_the_connection() {
        let server = start(serve_completions_mock).await;
        let mut client = RawClient::connect(server.addr).await;

        let bad = client
            .request(&post_json("/v1/chat/completions", "", "{not json"))
            .await;
        assert_eq!(bad.status, 400);
        assert_eq!(bad.json()["error"]["type"], "invalid_request_error");

        let not_object = client
            .request(&post_json("/v1/embeddings", "", "[1, 2]"))
            .await;
        assert_eq!(not_object.status, 400);
        assert_eq!(
            not_object.json()["error"]["message"],
            "The request body must be a JSON object."
        );

        // Same connection: keep-alive survives error answers.
        let models = client
            .request("GET /v1/models HTTP/1.1\r\nhost: demo\r\n\r\n")
            .await;
        assert_eq!(models.status, 200);
        assert_eq!(models.json()["object"], "list");
        assert_eq!(models.json()["data"][0]["object"], "model");
    }

    #[tokio::test]
    async fn completions_embeddings_and_other_v1_paths_answer_plausible_json() {
        let server = start(serve_completions_mock).await;
        let mut client = RawClient::connect(server.addr).await;

        let completion = client
            .request(&post_json(
                "/v1/completions",
                "",
                r#"{"model":"m","prompt":"hi"}"#,
            ))
            .await
            .json();
        assert_eq!(completion["object"], "text_completion");
        assert_eq!(completion["model"], "m");

        let embeddings = client
            .request(&post_json("/v1/embeddings", "", r#"{"input":["a","b"]}"#))
            .await
            .json();
        assert_eq!(embeddings["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(embeddings["data"][1]["index"], 1);
        assert_eq!(
            embeddings["data"][0]["embedding"].as_array().map(Vec::len),
            Some(DEFAULT_EMBEDDING_DIMENSIONS)
        );

        let other = client
            .request("DELETE /v1/files/file-1?x=1 HTTP/1.1\r\nhost: demo\r\n\r\n")
            .await;
        assert_eq!(other.status, 200);
        assert_eq!(
            other.json(),
            json!({"object": "mock", "method": "DELETE", "path": "/v1/files/file-1"})
        );

        let outside = client
            .request("GET /health HTTP/1.1\r\nhost: demo\r\n\r\n")
            .await;
        assert_eq!(outside.status, 404);
    }

    #[tokio::test]
    async fn admin_echo_returns_scopegate_headers_and_json_body() {
        let server = start(serve_admin_echo).await;
        let mut client = RawClient::connect(server.addr).await;
        let response = client
            .request(&post_json(
                "/v1/admin/workspaces?page=2",
                "x-scopegate-key-id: key_admin\r\nx-scopegate-organisation-id: org_acme\r\n\
                 x-request-id: r-1\r\nauthorization: Bearer provider\r\n",
                r#"{"name":"New","workspace_id":"ws_prod"}"#,
            ))
            .await;

        assert_eq!(response.status, 200);
        assert_eq!(
            response.json(),
            json!({
                "success": true,
                "data": {
                    "method": "POST",
                    "path": "/v1/admin/workspaces?page=2",
                    "headers": {
                        "x-scopegate-key-id": "key_admin",
                        "x-scopegate-organisation-id": "org_acme",
                    },
                    "body": {"name": "New", "workspace_id": "ws_prod"},
                },
            })
        );
    }

    #[tokio::test]
    async fn admin_echo_returns_non_json_body_as_string_and_empty_as_null() {
        let server = start(serve_admin_echo).await;
        let mut client = RawClient::connect(server.addr).await;

        let text = client
            .request("PUT /v1/configs/c1 HTTP/1.1\r\nhost: demo\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .json();
        assert_eq!(text["data"]["body"], "hello");
        assert_eq!(text["data"]["headers"], json!({}));

        let empty = client
            .request("GET /v1/audit-logs HTTP/1.1\r\nhost: demo\r\n\r\n")
            .await
            .json();
        assert_eq!(empty["data"]["method"], "GET");
        assert_eq!(empty["data"]["body"], Value::Null);
    }

    #[tokio::test]
    async fn garbage_request_gets_an_http_error_and_the_server_keeps_serving() {
        let server = start(serve_admin_echo).await;
        let mut garbage = RawClient::connect(server.addr).await;
        garbage
            .stream
            .write_all(b"\x00\x01 not http at all\r\n\r\n")
            .await
            .expect("write");
        let mut rest = Vec::new();
        // hyper answers 400 and closes; either way the connection ends.
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            garbage.stream.read_to_end(&mut rest),
        )
        .await;

        let mut client = RawClient::connect(server.addr).await;
        let response = client
            .request("GET /v1/x HTTP/1.1\r\nhost: demo\r\n\r\n")
            .await;
        assert_eq!(response.status, 200);
    }

    #[tokio::test]
    async fn aborting_the_server_closes_its_open_connections() {
        let mut server = start(serve_admin_echo).await;
        let mut client = RawClient::connect(server.addr).await;
        let response = client
            .request("GET /v1/x HTTP/1.1\r\nhost: demo\r\n\r\n")
            .await;
        assert_eq!(response.status, 200);

        server.task.abort();
        let ended = (&mut server.task).await;
        assert!(ended.is_err_and(|err| err.is_cancelled()));
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            client.stream.read_to_end(&mut rest),
        )
        .await
        .expect("connection closed within 10 s");
        assert!(
            read.is_err() || rest.is_empty(),
            "unexpected bytes {rest:?}"
        );
    }

    /// Reads one unmasked server text frame (7- or 16-bit length) off `client`.
    async fn read_text_frame(client: &mut RawClient) -> String {
        let (_, head) = client.take(2).await;
        assert_eq!(head[0], 0x81, "a final text frame");
        assert!(head[1] < 127, "unmasked, with a 7- or 16-bit length");
        let len = match head[1] {
            126 => {
                let (_, len) = client.take(2).await;
                usize::from(u16::from_be_bytes([len[0], len[1]]))
            }
            len => usize::from(len),
        };
        let (_, payload) = client.take(len).await;
        String::from_utf8(payload).expect("UTF-8 text")
    }

    #[tokio::test]
    async fn realtime_switches_protocols_greets_with_the_identity_and_echoes() {
        let server = start(serve_completions_mock).await;
        let mut client = RawClient::connect(server.addr).await;
        let response = client
            .request(
                "GET /v1/realtime HTTP/1.1\r\nhost: demo\r\nconnection: Upgrade\r\n\
                 upgrade: websocket\r\nsec-websocket-version: 13\r\n\
                 sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 x-scopegate-key-id: key_alice\r\nx-scopegate-workspace-id: ws_prod\r\n\r\n",
            )
            .await;

        assert_eq!(response.status, 101);
        assert_eq!(response.header("upgrade"), Some("websocket"));
        // RFC 6455 1.3's worked example.
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        let greeting = read_text_frame(&mut client).await;
        assert!(
            greeting
                .contains("x-scopegate-key-id: key_alice and x-scopegate-workspace-id: ws_prod"),
            "{greeting}"
        );

        // Whatever the client sends comes back as it is.
        let masked_hello = [
            0x81,
            0x85,
            1,
            2,
            3,
            4,
            b'h' ^ 1,
            b'e' ^ 2,
            b'l' ^ 3,
            b'l' ^ 4,
            b'o' ^ 1,
        ];
        client.stream.write_all(&masked_hello).await.expect("write");
        let (_, echoed) = client.take(masked_hello.len()).await;
        assert_eq!(echoed, masked_hello);

        client.stream.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            client.stream.read_to_end(&mut rest),
        )
        .await
        .expect("the mock closes after the client does");
        assert!(read.is_ok_and(|n| n == 0), "{rest:?}");
    }

    #[tokio::test]
    async fn realtime_without_the_upgrade_is_400_and_keeps_the_connection() {
        let server = start(serve_completions_mock).await;
        let mut client = RawClient::connect(server.addr).await;
        let plain = client
            .request("GET /v1/realtime HTTP/1.1\r\nhost: demo\r\n\r\n")
            .await;
        assert_eq!(plain.status, 400);
        assert_eq!(plain.json()["error"]["type"], "invalid_request_error");

        let keyless = client
            .request("GET /v1/realtime HTTP/1.1\r\nhost: demo\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
            .await;
        assert_eq!(keyless.status, 400);

        let models = client
            .request("GET /v1/models HTTP/1.1\r\nhost: demo\r\n\r\n")
            .await;
        assert_eq!(models.status, 200);
    }

    #[tokio::test]
    async fn aborting_the_server_ends_its_open_tunnels() {
        let mut server = start(serve_completions_mock).await;
        let mut client = RawClient::connect(server.addr).await;
        let response = client
            .request(
                "GET /v1/realtime HTTP/1.1\r\nhost: demo\r\nconnection: Upgrade\r\n\
                 upgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .await;
        assert_eq!(response.status, 101);
        read_text_frame(&mut client).await;

        server.task.abort();
        let _ = (&mut server.task).await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            client.stream.read_to_end(&mut rest),
        )
        .await
        .expect("tunnel closed within 10 s");
        assert!(
            read.is_err() || rest.is_empty(),
            "unexpected bytes {rest:?}"
        );
    }

    #[test]
    fn websocket_text_frames_use_the_7_16_and_64_bit_lengths() {
        assert_eq!(websocket_text_frame("hi"), [0x81, 2, b'h', b'i']);
        let medium = websocket_text_frame(&"a".repeat(300));
        assert_eq!(&medium[..4], &[0x81, 126, 1, 44]);
        assert_eq!(medium.len(), 4 + 300);
        let large = websocket_text_frame(&"a".repeat(70_000));
        assert_eq!(&large[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn the_system_messages_are_what_the_mock_reports_as_cached() {
        let messages = json!([
            {"role": "system", "content": "abcdefgh"},
            {"role": "user", "content": "hello there"},
            {"role": "system", "content": "ijkl"},
        ]);
        assert_eq!(cached_system_tokens(&messages), 3);
        assert_eq!(
            cached_system_tokens(&json!([{"role": "user", "content": "x"}])),
            0
        );
        assert_eq!(cached_system_tokens(&Value::Null), 0);
    }

    #[test]
    fn split_words_keeps_the_text_and_the_piece_count() {
        let text = "one two three four five six seven";
        let pieces = split_words(text, 5);
        assert_eq!(pieces.len(), 5, "{pieces:?}");
        assert_eq!(pieces.concat(), text);
        assert_eq!(split_words("two words", 5), ["two ", "words"]);
        assert!(split_words("", 5).is_empty());
    }
}
