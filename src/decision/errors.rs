//! Error codes and the JSON bodies the proxy writes (the reference on the decision order and the responses the proxy writes).
//!
//! Every refusal is an [`ErrorCode`] plus a message; [`render`] is the one
//! place where that becomes a status and a body in the shape the caller's
//! client library parses (Portkey's on control-plane paths, OpenAI's
//! elsewhere).

use serde_json::json;

use crate::limits::{RateKind, Refusal, Scope};

/// Every way a request can be refused or fail, in decision order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: path not canonical.
    InvalidPath,
    /// 400: the request's framing is ambiguous: `Content-Length` repeated,
    /// a list, or not a number.
    InvalidRequest,
    /// 401: no key.
    MissingApiKey,
    /// 401: key unknown or header repeated.
    InvalidApiKey,
    /// 401: key or secret past `expires_at`.
    ExpiredApiKey,
    /// 401: status `revoked`.
    RevokedApiKey,
    /// 503: an identity token whose organisation's signing keys have not
    /// been loaded yet.
    IdentityUnavailable,
    /// 404: no route for the path.
    RouteNotFound,
    /// 405: path known, method not.
    MethodNotAllowed,
    /// 400: a protocol upgrade (WebSocket) on a route that does not take one.
    UpgradeNotAllowed,
    /// 403: admin key on a data-plane route.
    AdminKeyNotAllowed,
    /// 412: status `exhausted`, or a usage limit used up or about to be
    /// passed by this request's reservation (the reference on usage counting).
    BudgetExhausted,
    /// 403: scopes missing.
    MissingScope,
    /// 415: control-plane body that is not JSON.
    UnsupportedMediaType,
    /// 408: a body the proxy reads before forwarding did not arrive in time.
    RequestTimeout,
    /// 413: inspected body too large.
    BodyTooLarge,
    /// 400: inspected body not JSON, or bad/repeated `workspace_id`.
    InvalidJson,
    /// 400: workspace sources disagree.
    ConflictingWorkspace,
    /// 403: workspace key names another workspace.
    WorkspaceMismatch,
    /// 404: admin key names an unknown or foreign workspace.
    WorkspaceNotFound,
    /// 400: the key or its workspace restricts models and the request names none.
    MissingModel,
    /// 403: a model the request names is not allowed.
    ModelNotAllowed,
    /// 403: a key whose tokens are counted asks for tokens the proxy cannot
    /// see (batches, stored-prompt completions, background responses).
    UsageNotMetered,
    /// 403: a key or workspace with a cost budget names a model no
    /// `model_prices` pattern prices.
    ModelNotPriced,
    /// 429: rate limit exceeded.
    RateLimited,
    /// 429: `max_concurrent_requests` of the key already in flight.
    ConcurrencyLimited,
    /// 503: the shared-state store is unreachable and `on_error: deny`.
    LimitsUnavailable,
    /// 502: upstream refused or reset the connection.
    UpstreamUnavailable,
    /// 504: upstream timed out.
    UpstreamTimeout,
}

/// Which JSON shape an error body takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error": {"message", "type", "code"}}`.
    OpenAi,
    /// `{"success": false, "data": {"message", "errorCode", "code"}}`.
    Portkey,
}

impl ErrorCode {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidPath | InvalidRequest | InvalidJson | ConflictingWorkspace
            | UpgradeNotAllowed | MissingModel => 400,
            MissingApiKey | InvalidApiKey | ExpiredApiKey | RevokedApiKey => 401,
            AdminKeyNotAllowed | MissingScope | WorkspaceMismatch | ModelNotAllowed
            | UsageNotMetered | ModelNotPriced => 403,
            RouteNotFound | WorkspaceNotFound => 404,
            MethodNotAllowed => 405,
            BudgetExhausted => 412,
            RequestTimeout => 408,
            BodyTooLarge => 413,
            UnsupportedMediaType => 415,
            RateLimited | ConcurrencyLimited => 429,
            UpstreamUnavailable => 502,
            LimitsUnavailable | IdentityUnavailable => 503,
            UpstreamTimeout => 504,
        }
    }

    /// The `code` field, and the metrics `code` label.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidPath => "invalid_path",
            InvalidRequest => "invalid_request",
            MissingApiKey => "missing_api_key",
            InvalidApiKey => "invalid_api_key",
            ExpiredApiKey => "expired_api_key",
            RevokedApiKey => "revoked_api_key",
            IdentityUnavailable => "identity_unavailable",
            RouteNotFound => "route_not_found",
            MethodNotAllowed => "method_not_allowed",
            UpgradeNotAllowed => "upgrade_not_allowed",
            AdminKeyNotAllowed => "admin_key_not_allowed",
            BudgetExhausted => "budget_exhausted",
            MissingScope => "missing_scope",
            UnsupportedMediaType => "unsupported_media_type",
            RequestTimeout => "request_timeout",
            BodyTooLarge => "body_too_large",
            InvalidJson => "invalid_json",
            ConflictingWorkspace => "conflicting_workspace",
            WorkspaceMismatch => "workspace_mismatch",
            WorkspaceNotFound => "workspace_not_found",
            MissingModel => "missing_model",
            ModelNotAllowed => "model_not_allowed",
            UsageNotMetered => "usage_not_metered",
            ModelNotPriced => "model_not_priced",
            RateLimited => "rate_limited",
            ConcurrencyLimited => "concurrency_limited",
            LimitsUnavailable => "limits_unavailable",
            UpstreamUnavailable => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
        }
    }

    /// Portkey's `errorCode`.
    pub fn portkey_error_code(self) -> &'static str {
        match self.status() {
            401 => "AB05",
            403 => "AB03",
            404 => "AB08",
            429 => "AB06",
            502..=504 => "AB04",
            _ => "AB01",
        }
    }

    /// OpenAI's `type`.
    pub fn openai_type(self) -> &'static str {
        match self.status() {
            401 => "authentication_error",
            403 => "permission_error",
            412 => "insufficient_quota",
            429 => "rate_limit_error",
            502..=504 => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 29] = {
        use ErrorCode::*;
        [
            InvalidPath,
            InvalidRequest,
            MissingApiKey,
            InvalidApiKey,
            ExpiredApiKey,
            RevokedApiKey,
            IdentityUnavailable,
            RouteNotFound,
            MethodNotAllowed,
            UpgradeNotAllowed,
            AdminKeyNotAllowed,
            BudgetExhausted,
            MissingScope,
            UnsupportedMediaType,
            RequestTimeout,
            BodyTooLarge,
            InvalidJson,
            ConflictingWorkspace,
            WorkspaceMismatch,
            WorkspaceNotFound,
            MissingModel,
            ModelNotAllowed,
            UsageNotMetered,
            ModelNotPriced,
            RateLimited,
            ConcurrencyLimited,
            LimitsUnavailable,
            UpstreamUnavailable,
            UpstreamTimeout,
        ]
    };
}

/// A refusal: the code and a message for the caller. Messages never hold a
/// secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// What went wrong.
    pub code: ErrorCode,
    /// Words for the caller.
    pub message: String,
    /// For 405: the `Allow` header value.
    pub allow: Option<std::sync::Arc<str>>,
}

impl Denial {
    /// A denial with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Denial {
        Denial {
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// The denial of a request the counter store refused.
    pub fn of_refusal(refusal: Refusal) -> Denial {
        let whose = |scope| match scope {
            Scope::Key => "this API key",
            Scope::Workspace => "this API key's workspace",
            Scope::Token => "this token's subject",
        };
        match refusal {
            Refusal::Budget { scope } => Denial::new(
                ErrorCode::BudgetExhausted,
                match scope {
                    Scope::Key => {
                        "This request would pass this API key's usage limit for this period."
                    }
                    Scope::Workspace => {
                        "This request would pass the usage limit of this API key's workspace for this period."
                    }
                    Scope::Token => {
                        "This request would pass the usage limit of this token's subject for this period."
                    }
                },
            ),
            Refusal::Rate {
                kind,
                scope,
                retry_after,
                never,
            } => {
                let whose = whose(scope);
                let secs = retry_after.as_secs().max(1);
                Denial::new(
                    ErrorCode::RateLimited,
                    match kind {
                        RateKind::Requests => format!(
                            "Rate limit exceeded for {whose}: requests; retry after {secs} s."
                        ),
                        RateKind::Tokens if never => format!(
                            "This request's estimated tokens are more than the whole token rate \
                             limit of {whose}; it can never pass: send a smaller request or a \
                             smaller max_tokens."
                        ),
                        RateKind::Tokens => format!(
                            "Token rate limit exceeded for {whose}; retry after {secs} s."
                        ),
                    },
                )
            }
            Refusal::Concurrency => Denial::new(
                ErrorCode::ConcurrencyLimited,
                "This API key already has its max_concurrent_requests in flight; retry when one ends.",
            ),
            Refusal::Unavailable => Denial::new(
                ErrorCode::LimitsUnavailable,
                "The shared limits store is unavailable; the request was not forwarded.",
            ),
        }
    }
}

/// The words for an upstream that failed before answering: timed out
/// (`upstream_timeout`), or unavailable (any other code).
pub fn upstream_failure_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UpstreamTimeout => "The upstream service timed out.",
        _ => "The upstream service is unavailable.",
    }
}

/// The JSON body of an error in the given shape.
pub fn render(code: ErrorCode, message: &str, shape: ErrorShape) -> Vec<u8> {
    let value = match shape {
        ErrorShape::OpenAi => json!({
            "error": {
                "message": message,
                "type": code.openai_type(),
                "code": code.as_str(),
            }
        }),
        ErrorShape::Portkey => json!({
            "success": false,
            "data": {
                "message": message,
                "errorCode": code.portkey_error_code(),
                "code": code.as_str(),
            }
        }),
    };
    // Serialising a `Value` of strings cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_contract() {
        let body = render(ErrorCode::InvalidApiKey, "bad key", ErrorShape::Portkey);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            json!({"success": false, "data": {"message": "bad key", "errorCode": "AB05", "code": "invalid_api_key"}})
        );
        let body = render(ErrorCode::BudgetExhausted, "spent", ErrorShape::OpenAi);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            json!({"error": {"message": "spent", "type": "insufficient_quota", "code": "budget_exhausted"}})
        );
    }

    #[test]
    fn all_lists_every_code_once_in_declaration_order() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code:?}");
        }
        assert_eq!(
            ErrorCode::ALL.len(),
            ErrorCode::UpstreamTimeout as usize + 1
        );
    }

    #[test]
    fn error_codes_follow_the_status_mapping() {
        for code in ErrorCode::ALL {
            let (pk, oa) = (code.portkey_error_code(), code.openai_type());
            match code.status() {
                400 | 405 | 413 | 415 => {
                    assert_eq!(pk, "AB01");
                    assert_eq!(oa, "invalid_request_error");
                }
                404 => assert_eq!((pk, oa), ("AB08", "invalid_request_error")),
                412 => assert_eq!(oa, "insufficient_quota"),
                _ => {}
            }
        }
    }
}
