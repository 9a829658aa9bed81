//! The CLI's side of the API: one HTTP/1.1 request per call over the daemon's unix socket.
use std::path::Path;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Method, Request};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    api::ErrorBody,
    limits::max_body,
};

/// Why a call failed: the daemon could not be reached (`status: None`) or answered with an
/// error status and message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

pub struct Client<'a> {
    socket: &'a Path,
}

impl<'a> Client<'a> {
    pub fn new(socket: &'a Path) -> Self {
        Self { socket }
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<T> {
        // A body over the daemon's limit would be refused (413) while still being written: say
        // so here rather than die writing it.
        let len = body.as_ref().map_or(0, Vec::len);
        let limit = max_body(path);
        if len > limit {
            let hint = if path.starts_with("/services") { " (`bpfnet service apply` sends services in batches)" } else { "" };
            return Err(ApiError {
                status: Some(413),
                message: format!("the request is {len} bytes, more than the {limit} bytes the daemon accepts{hint}"),
            }
            .into());
        }
        let stream = tokio::net::UnixStream::connect(self.socket).await.map_err(|e| ApiError {
            status: None,
            message: format!(
                "cannot reach the bpfnet daemon at {}: {e}\n(is `bpfnet daemon` running? set --socket or BPFNET_SOCKET to its socket)",
                self.socket.display()
            ),
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "bpfnet")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await.context("sending the request to the daemon")?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(err) => err.error,
                Err(_) => format!("daemon answered {status}: {}", String::from_utf8_lossy(&bytes)),
            };
            return Err(ApiError { status: Some(status.as_u16()), message }.into());
        }
        serde_json::from_slice(&bytes).context("parsing the daemon's answer")
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::POST, path, Some(serde_json::to_vec(body)?)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::DELETE, path, None).await
    }
}
