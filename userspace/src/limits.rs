//! Serving HTTP (the API, the metrics port) so that no client can starve the others or take the
//! daemon down: a cap on open connections (the one over it gets a JSON 503 at once), a deadline for every request's
//! head and body, a bounded body, a file-descriptor limit raised to what the system allows, and
//! every rejection answered as JSON `{"error": ...}` like the daemon's own errors.
use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Json, Router,
};
use http_body_util::{BodyExt, Limited};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use axum::serve::Listener;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::Semaphore,
};

use crate::api::ErrorBody;

/// Largest request body the API accepts (its requests are a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest body of a batch (`POST /services/batch`: 10,000 services of 10 backends take about
/// 5 MB). The socket is root's only, so the larger buffer is no lever for anyone else.
pub const MAX_BATCH_BODY: usize = 64 * 1024 * 1024;

/// The largest body the daemon reads for a request to `path` (the CLI checks it before sending).
pub fn max_body(path: &str) -> usize {
    if path.ends_with("/batch") { MAX_BATCH_BODY } else { MAX_BODY }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open client connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// How long a client may take to send a request's head (also: how long an idle connection
    /// is kept), and then its body.
    pub client_timeout: Duration,
}

/// Raises the soft limit on open files to the hard limit (systemd starts services with 1024).
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                log::debug!("raised the open-file limit from {old} to {}", lim.rlim_max);
            }
        }
    }
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: message.into() })).into_response()
}

/// Reads the whole body within the deadline and size limit before any handler sees the request,
/// so a half-sent body can neither hold a connection forever nor reach the daemon's lock.
async fn buffer_body(timeout: Duration, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limit = max_body(parts.uri.path());
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => json_error(StatusCode::REQUEST_TIMEOUT, format!("the request body did not arrive within {timeout:?}")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            json_error(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than {limit} bytes"))
        }
        Ok(Err(e)) => json_error(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")),
        Ok(Ok(collected)) => next.run(Request::from_parts(parts, Body::from(collected.to_bytes()))).await,
    }
}

/// Turns every error response that is not JSON yet (axum's rejections: 400, 405, 413, 415, 422)
/// into `{"error": <its text>}`.
async fn json_errors(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    let is_json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status().is_success() || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = match (text.is_empty(), parts.status) {
        (false, _) => text,
        (true, StatusCode::METHOD_NOT_ALLOWED) => format!("method {method} is not allowed on {path}"),
        (true, status) => status.canonical_reason().unwrap_or("request refused").to_string(),
    };
    let mut out = json_error(parts.status, message);
    // Keep what the rejection said besides its body (Allow on a 405, for one).
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Answers a connection over the cap with a JSON 503 and closes it. Its request is read first
/// (briefly), so the client is not cut off while still writing it.
async fn refuse_busy<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, max: usize) {
    let mut head = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut head)).await;
    let body = serde_json::to_string(&ErrorBody {
        error: format!("the daemon is serving its maximum of {max} connections; try again shortly"),
    })
    .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Serves `app` on `listener` (the API's Unix socket, the metrics' TCP port) until `shutdown`
/// completes, within `limits`. An accept that fails (out of file descriptors) waits before the
/// next try (axum's `Listener`): no busy loop.
pub async fn serve<L>(mut listener: L, app: Router, limits: &Limits, shutdown: impl Future<Output = ()>)
where
    L: Listener,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = limits.client_timeout;
    let app = app
        .layer(middleware::from_fn(move |req, next| buffer_body(timeout, req, next)))
        .layer(middleware::from_fn(json_errors));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            (stream, _) = listener.accept() => stream,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse_busy(stream, limits.max_connections));
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service);
            // A client that vanishes mid-request is its own problem, not the daemon's.
            if let Err(e) = connection.await {
                log::debug!("connection ended: {e}");
            }
        });
    }
}
