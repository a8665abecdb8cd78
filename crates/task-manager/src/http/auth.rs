//! Bearer-token checks: `API_TOKEN` on the `/v1` API, `WORKER_TOKEN` on the workers'
//! callbacks. Without any token configured, both are open (the server then listens on the
//! loopback address only, see `server::listen_ip`). `/metrics` takes `METRICS_TOKEN` when it
//! is set, and is open otherwise, like `/health`.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, SharedState};
use crate::tokens::Tokens;

/// Lets a `/v1` request through when it carries one of the API tokens.
pub async fn require_api_token(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let required = state.authentication;
    require(required, &state.api_tokens, "API_TOKEN", request, next).await
}

/// Lets a worker callback through when it carries one of the worker tokens.
pub async fn require_worker_token(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let required = state.authentication;
    require(
        required,
        &state.worker_tokens,
        "WORKER_TOKEN",
        request,
        next,
    )
    .await
}

/// Lets a `/metrics` request through when `METRICS_TOKEN` is unset or the request carries it.
pub async fn require_metrics_token(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let required = !state.metrics_tokens.is_empty();
    require(
        required,
        &state.metrics_tokens,
        "METRICS_TOKEN",
        request,
        next,
    )
    .await
}

/// `next` when no token is `required` or the request carries one of `tokens`, else 401.
async fn require(
    required: bool,
    tokens: &Tokens,
    variable: &str,
    request: Request,
    next: Next,
) -> Response {
    if !required {
        return next.run(request).await;
    }
    match bearer_token(request.headers()) {
        Some(token) if tokens.accepts(token.as_bytes()) => next.run(request).await,
        Some(_) => {
            tracing::warn!(path = request.uri().path(), "request refused: wrong token");
            unauthorized(
                format!("invalid token: this endpoint takes a token of the server's {variable}"),
                "Bearer error=\"invalid_token\"",
            )
        }
        None => unauthorized(
            "authentication required: send the header \"Authorization: Bearer <token>\"",
            "Bearer",
        ),
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 401 with a JSON error and the `WWW-Authenticate` challenge.
fn unauthorized(message: impl Into<String>, challenge: &'static str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn bearer_tokens_are_read() {
        let token = |value| bearer_token(&with_authorization(value)).map(str::to_string);
        assert_eq!(token("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(token("bearer  abc ").as_deref(), Some("abc"));
        assert_eq!(token("Basic YWxhZGRpbjpvcGVuc2VzYW1l"), None);
        assert_eq!(token("Bearer"), None);
        assert_eq!(token("Bearer "), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
