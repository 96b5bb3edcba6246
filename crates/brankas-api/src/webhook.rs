//! The alert webhook: every alert is also POSTed as JSON to a configured URL, signed with
//! HMAC-SHA256 (`X-Brankas-Signature: sha256=<hex>` over the exact body, which carries its
//! own time so a receiver can refuse replays), and retried with back-off (1, 2, 4, 8, 16 s)
//! while the receiver fails or cannot be reached. Delivery runs on its own task from a
//! bounded queue; an alert that cannot be queued or delivered is still stored and logged.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, Request, Uri, header};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;

/// Alerts waiting for delivery at most.
const QUEUE: usize = 1000;
/// Attempts per alert.
const ATTEMPTS: u32 = 6;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where alerts go, and with which key they are signed.
pub struct WebhookConfig {
    pub url: Uri,
    pub key: brankas_vault::SigningKey,
    /// Extra trusted roots (PEM) for an HTTPS receiver with a private CA.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl WebhookConfig {
    /// From the operator's settings: the URL, the HMAC secret's bytes, extra CA certificates
    /// (PEM) for an HTTPS receiver.
    pub fn new(url: &str, secret: &[u8], ca_pem: Option<&[u8]>) -> Result<Self, String> {
        let url: Uri = url.parse().map_err(|_| "the alert webhook URL is not a URL".to_string())?;
        let key = brankas_vault::SigningKey::new(secret).map_err(|e| e.to_string())?;
        let extra_roots = match ca_pem {
            None => Vec::new(),
            Some(mut pem) => rustls_pemfile::certs(&mut pem).collect::<Result<Vec<_>, _>>().map_err(|_| "the webhook CA file is not PEM certificates".to_string())?,
        };
        Ok(Self { url, key, extra_roots })
    }
}

/// The sending half: alerts are queued here.
#[derive(Clone)]
pub struct Webhook {
    tx: mpsc::Sender<Value>,
}

impl Webhook {
    /// Starts the delivery task (on the current Tokio runtime).
    pub fn start(cfg: WebhookConfig) -> Result<Webhook, String> {
        match cfg.url.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err("the alert webhook URL must be http:// or https://".into()),
        }
        if cfg.url.host().is_none() {
            return Err("the alert webhook URL needs a host".into());
        }
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        for c in &cfg.extra_roots {
            roots.add(c.clone()).map_err(|e| format!("alert webhook CA: {e}"))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(Arc::new(cfg), Arc::new(tls), rx));
        Ok(Webhook { tx })
    }

    /// Queues an alert; never waits.
    pub fn send(&self, alert: Value) {
        if self.tx.try_send(alert).is_err() {
            tracing::error!("alert webhook queue full or closed; the alert is stored and logged only");
        }
    }
}

async fn deliver(cfg: Arc<WebhookConfig>, tls: Arc<rustls::ClientConfig>, mut rx: mpsc::Receiver<Value>) {
    while let Some(alert) = rx.recv().await {
        let body = Bytes::from(serde_json::to_vec(&alert).unwrap_or_default());
        let sig = format!("sha256={}", cfg.key.sign_hex(&body));
        let mut wait = Duration::from_secs(1);
        for attempt in 1..=ATTEMPTS {
            match tokio::time::timeout(TIMEOUT, post(&cfg.url, &tls, body.clone(), &sig)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => break,
                r => {
                    let why = match r {
                        Ok(Ok(s)) => format!("status {s}"),
                        Ok(Err(e)) => e,
                        Err(_) => "timed out".into(),
                    };
                    tracing::warn!(attempt, error = %why, "alert webhook delivery failed");
                    if attempt == ATTEMPTS {
                        tracing::error!("alert webhook: giving up on an alert after {ATTEMPTS} attempts (it is stored and logged)");
                    } else {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        }
    }
}

async fn post(url: &Uri, tls: &Arc<rustls::ClientConfig>, body: Bytes, sig: &str) -> Result<u16, String> {
    let host = url.host().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
    let path = url.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let authority = url.authority().map_or(host.clone(), |a| a.to_string());
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-brankas-signature", sig)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    if https {
        let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?;
        send(TokioIo::new(stream), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
}

async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<u16, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}
