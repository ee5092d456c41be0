//! `GET /admin`: the merchant's back-office, one self-contained page (`web/admin.html`: no
//! framework, no CDN, no cookie). It signs in with an admin or site key kept in the tab's
//! `sessionStorage` and reads the public API with it as a bearer header: transactions, the
//! call journal, statistics, pools' numbers and settings. Served with a Content-Security-Policy
//! that allows only its own inline script and style (by hash) and requests to its own origin.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

const ADMIN_HTML: &str = include_str!("../../web/admin.html");

/// `'sha256-…'` of the text between the first `<tag>` and `</tag>` of the page.
fn hash_of(tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = ADMIN_HTML.find(&open).expect("the page has its tag") + open.len();
    let len = ADMIN_HTML[start..]
        .find(&format!("</{tag}>"))
        .expect("the tag is closed");
    let digest = Sha256::digest(&ADMIN_HTML.as_bytes()[start..start + len]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash_of("script"),
        hash_of("style")
    )
});

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP.as_str()),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        ADMIN_HTML,
    )
        .into_response()
}
