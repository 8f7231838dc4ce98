//! Optional bearer-token authentication (SPEC §6), one check for the OTLP
//! receivers and the dashboard. The dashboard also takes the token as the
//! password of HTTP Basic authentication (any user name), so a browser can
//! sign in; `/healthz`, `/readyz` and `/metrics` stay open for probes and
//! scrapers.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

/// Whether an `Authorization` header value carries `token`: `Bearer TOKEN`,
/// or `Basic` with TOKEN as the password.
pub fn authorized(header: Option<&str>, token: &str) -> bool {
    let Some(header) = header else {
        return false;
    };
    if let Some(given) = header.strip_prefix("Bearer ") {
        return constant_time_eq(given.trim().as_bytes(), token.as_bytes());
    }
    if let Some(encoded) = header.strip_prefix("Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let password = match decoded.iter().position(|&b| b == b':') {
            Some(i) => &decoded[i + 1..],
            None => return false,
        };
        return constant_time_eq(password, token.as_bytes());
    }
    false
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `router` behind the token when there is one (every route and the
/// fallback); unchanged otherwise.
pub fn protect(router: Router, token: Option<Arc<str>>) -> Router {
    match token {
        Some(token) => router.layer(middleware::from_fn_with_state(token, require)),
        None => router,
    }
}

async fn require(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if authorized(header, &token) {
        return next.run(req).await;
    }
    tracing::debug!(path = %req.uri().path(), "dashboard request without the token");
    (
        StatusCode::UNAUTHORIZED,
        [(WWW_AUTHENTICATE, r#"Basic realm="herdwatch", charset="UTF-8""#)],
        "missing or wrong token: send `Authorization: Bearer TOKEN`, or sign in with the token as the password\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    fn basic(user_password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
    }

    #[test]
    fn bearer_or_basic_password_and_nothing_else() {
        assert!(authorized(Some("Bearer s3cret"), "s3cret"));
        assert!(authorized(Some(&basic("anyone:s3cret")), "s3cret"));
        assert!(authorized(Some(&basic(":s3cret")), "s3cret"));
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("bearer s3cret"),
            Some("s3cret"),
            Some("Basic not-base64!"),
            Some(basic("s3cret").as_str()), // no colon: a user name only
            Some(basic("s3cret:other").as_str()),
        ] {
            assert!(!authorized(wrong, "s3cret"), "{wrong:?}");
        }
    }

    async fn status(router: &Router, path: &str, header: Option<&str>) -> (StatusCode, bool) {
        let mut req = Request::builder().uri(path);
        if let Some(h) = header {
            req = req.header(AUTHORIZATION, h);
        }
        let res = router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        (res.status(), res.headers().contains_key(WWW_AUTHENTICATE))
    }

    #[tokio::test]
    async fn protected_routes_and_fallback_ask_for_the_token() {
        let app = || Router::new().route("/", get(|| async { "ok" }));
        let open = protect(app(), None);
        assert_eq!(status(&open, "/", None).await, (StatusCode::OK, false));
        let closed = protect(app(), Some(Arc::from("t0ken")));
        assert_eq!(
            status(&closed, "/", None).await,
            (StatusCode::UNAUTHORIZED, true)
        );
        assert_eq!(
            status(&closed, "/nowhere", None).await,
            (StatusCode::UNAUTHORIZED, true),
            "the 404 page is behind the token too"
        );
        assert_eq!(
            status(&closed, "/", Some("Bearer t0ken")).await,
            (StatusCode::OK, false)
        );
        assert_eq!(
            status(&closed, "/", Some(&basic("sre:t0ken"))).await,
            (StatusCode::OK, false)
        );
        assert_eq!(
            status(&closed, "/", Some("Bearer nope")).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
}
