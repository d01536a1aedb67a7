//! The web console: static files embedded in the binary (no build step,
//! no CDN), served without authentication since they hold no data: the
//! page signs in with a token and reads everything through the API.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/app.css"),
    ),
    (
        "vendor/uplot.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/vendor/uplot.min.js"),
    ),
    (
        "vendor/uplot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/vendor/uplot.min.css"),
    ),
];

/// Scripts only from this server; no inline script, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut r = Router::new()
        .route("/", get(|| async { Redirect::temporary("/console/") }))
        .route(
            "/console",
            get(|| async { Redirect::temporary("/console/") }),
        );
    for (name, mime, body) in FILES {
        let serve = move || async move {
            (
                [
                    (header::CONTENT_TYPE, *mime),
                    (header::CONTENT_SECURITY_POLICY, CSP),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                *body,
            )
                .into_response()
        };
        let path = if *name == "index.html" {
            "/console/".to_string()
        } else {
            format!("/console/{name}")
        };
        r = r.route(&path, get(serve));
    }
    r
}
