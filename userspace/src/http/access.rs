//! Who may read the metrics: basic auth and the configured response
//! headers, applied to every request from the web config in force, and the
//! warning when the port is open to anyone.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
use base64::Engine as _;
use tokio::sync::watch;

use super::web_config::WebConfig;

/// The web config in force; the reloader replaces it.
pub type Current = watch::Receiver<Arc<WebConfig>>;

/// `app` behind the current web config's basic auth and headers.
///
/// Every path needs the credentials, `/healthz` too: an answer without them
/// is one that anyone can keep a connection open for. Probes that carry no
/// password (kubelet's) check the port with a TCP connect instead.
///
/// While the web config fails to load again, every request gets 503: the
/// file no longer says who may read, so nobody may.
pub fn protect(app: Router, web: Current) -> Router {
    app.layer(middleware::from_fn_with_state(web, guard))
}

async fn guard(State(web): State<Current>, request: Request, next: Next) -> Response {
    let config = web.borrow().clone();
    let mut response = match &config.auth {
        _ if config.failed.is_some() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: the exporter's web config no longer loads; see its log\n",
        )
            .into_response(),
        Some(auth) => {
            let allowed = match credentials(request.headers()) {
                Some((user, password)) => auth.check(&user, &password).await,
                None => false,
            };
            if allowed {
                next.run(request).await
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"))],
                    "Unauthorized\n",
                )
                    .into_response()
            }
        }
        _ => next.run(request).await,
    };
    for (name, value) in &config.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// The user and password of an `Authorization: Basic` header.
fn credentials(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// One line saying what an address beyond loopback exposes under `config`,
/// and how to protect it; `None` when there is nothing to say.
pub fn exposure_warning(listen: SocketAddr, config: &WebConfig) -> Option<String> {
    if listen.ip().is_loopback() {
        return None;
    }
    const WHAT: &str = "mount points, file names (with --per-inode-top) and whether each host's kernel has the patch";
    match (config.tls.is_some(), config.open_to_anyone()) {
        (false, true) => Some(format!(
            "serving metrics on {listen} without TLS or authentication: anyone who can reach it reads {WHAT}; protect it with --web.config.file (TLS plus basic_auth_users or client certificates, see docs/exporter-tls.md)"
        )),
        (true, true) => Some(format!(
            "serving metrics on {listen} over TLS but without authentication: anyone who can reach it reads {WHAT}; add basic_auth_users or client_auth_type: RequireAndVerifyClientCert to the web config"
        )),
        (false, false) => Some(format!(
            "serving metrics on {listen} with basic auth but without TLS: passwords and metrics cross the network in clear text; add tls_server_config to the web config"
        )),
        (true, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::web_config::tests::{checked, hash, Pki, GOOD};

    #[test]
    fn basic_credentials_are_parsed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic cHJvbWV0aGV1czpzM2NyZXQ6eA=="),
        );
        assert_eq!(
            credentials(&h),
            Some(("prometheus".into(), b"s3cret:x".to_vec()))
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(credentials(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert_eq!(credentials(&h), None);
    }

    #[test]
    fn beyond_loopback_an_open_port_is_named() {
        let pki = Pki::new("warn");
        let wide: SocketAddr = "0.0.0.0:9948".parse().expect("addr");
        let lo: SocketAddr = "127.0.0.1:9948".parse().expect("addr");
        let plain = WebConfig::plain();
        assert_eq!(exposure_warning(lo, &plain), None);
        let line = exposure_warning(wide, &plain).expect("warned");
        println!("{line}");
        assert!(
            line.contains("without TLS or authentication") && line.contains("--web.config.file")
        );
        let tls = WebConfig::load(&checked(&pki, "tls.yml", GOOD)).expect("tls");
        let line = exposure_warning(wide, &tls).expect("warned");
        println!("{line}");
        assert!(line.contains("over TLS but without authentication"));
        let auth = WebConfig::load(&checked(
            &pki,
            "auth.yml",
            &format!("basic_auth_users:\n  prometheus: {}\n", hash()),
        ))
        .expect("auth");
        let line = exposure_warning(wide, &auth).expect("warned");
        println!("{line}");
        assert!(line.contains("clear text"));
        let both = WebConfig::load(&checked(
            &pki,
            "both.yml",
            &format!("{GOOD}basic_auth_users:\n  prometheus: {}\n", hash()),
        ))
        .expect("both");
        assert_eq!(exposure_warning(wide, &both), None);
        for line in [&plain, &tls, &auth].map(|c| exposure_warning(wide, c).unwrap_or_default()) {
            assert!(!line.contains('\n'));
        }
    }
}
