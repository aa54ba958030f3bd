//! How every client (a node, the command line, a load test) reaches the coordinator: one
//! rule for TLS and plaintext, and bearer tokens that never print.
//!
//! `https://` URLs need the network CA, and only that CA is trusted (the network is
//! pinned: no system roots). A node also presents its client certificate. `http://` is
//! allowed only to a loopback host (`127.0.0.1`, `::1`, `localhost`): plaintext never
//! crosses a network, and choosing it is logged as a warning.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Errors building a connection to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Not a URL.
    #[error("{0:?} is not a coordinator URL (https://host:port)")]
    BadUrl(String),
    /// `http://` to a host that is not loopback.
    #[error("{0} is plaintext to a host that is not loopback; use https:// with the network CA")]
    PlaintextOffLoopback(String),
    /// `https://` without a CA.
    #[error("{0} needs the network CA certificate to verify the coordinator (--ca / ERN_CA)")]
    NoCa(String),
    /// A scheme other than http or https.
    #[error("{0}: the scheme must be https:// (or http:// on loopback)")]
    BadScheme(String),
    /// tonic refused the TLS settings.
    #[error("TLS settings: {0}")]
    Tls(#[from] tonic::transport::Error),
    /// The token cannot travel in a header.
    #[error("the token holds characters a header cannot")]
    BadToken,
}

/// What a client trusts and, for a node, presents.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// The network CA certificate (PEM), the only root trusted.
    pub ca_pem: Vec<u8>,
    /// The client certificate and key (PEM) a node presents.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify in the coordinator's certificate, when not the URL's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The identity holds a private key: never printed.
        f.debug_struct("ClientTls")
            .field("identity", &self.identity.as_ref().map(|_| "…"))
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// True if `host` (from a URL; IPv6 in brackets) is a loopback host.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `url` is plaintext (`http://`) or TLS (`https://`), after the loopback rule:
/// `Ok(true)` for plaintext to loopback, `Ok(false)` for https.
pub fn is_plaintext(url: &str) -> Result<bool, TransportError> {
    let (scheme, host) = scheme_and_host(url)?;
    match scheme.as_str() {
        "http" if is_loopback_host(&host) => Ok(true),
        "http" => Err(TransportError::PlaintextOffLoopback(url.to_string())),
        "https" => Ok(false),
        _ => Err(TransportError::BadScheme(url.to_string())),
    }
}

fn scheme_and_host(url: &str) -> Result<(String, String), TransportError> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|_| TransportError::BadUrl(url.to_string()))?;
    match (uri.scheme_str(), uri.host()) {
        (Some(scheme), Some(host)) => Ok((scheme.to_string(), host.to_string())),
        _ => Err(TransportError::BadUrl(url.to_string())),
    }
}

/// An endpoint for `url` under the transport rule of this module.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, TransportError> {
    let plaintext = is_plaintext(url)?;
    let (_, host) = scheme_and_host(url)?;
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|_| TransportError::BadUrl(url.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if plaintext {
        tracing::warn!(url, "PLAINTEXT connection to a loopback coordinator");
        Ok(endpoint)
    } else {
        let tls = tls.ok_or_else(|| TransportError::NoCa(url.to_string()))?;
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca_pem))
            .domain_name(tls.domain.clone().unwrap_or_else(|| {
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        Ok(endpoint.tls_config(config)?)
    }
}

/// A bearer token: sent as `authorization: Bearer …`, never printed.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(…)")
    }
}

impl BearerToken {
    /// The header value for `token` (white space around it ignored).
    pub fn new(token: &str) -> Result<Self, TransportError> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| TransportError::BadToken)?;
        value.set_sensitive(true);
        Ok(BearerToken(value))
    }

    /// Adds the header to a request.
    pub fn apply<T>(&self, request: &mut tonic::Request<T>) {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        self.apply(&mut request);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_to_loopback() {
        for url in [
            "http://127.0.0.1:50051",
            "http://localhost:1",
            "http://[::1]:5",
        ] {
            assert!(endpoint(url, None).is_ok(), "{url}");
        }
        for url in [
            "http://10.0.0.1:50051",
            "http://coordinator.example.org:443",
        ] {
            assert!(
                matches!(
                    endpoint(url, None),
                    Err(TransportError::PlaintextOffLoopback(_))
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn https_needs_the_network_ca() {
        assert!(matches!(
            endpoint("https://coordinator.example.org:50051", None),
            Err(TransportError::NoCa(_))
        ));
        assert!(matches!(
            endpoint("ftp://x:1", None),
            Err(TransportError::BadScheme(_))
        ));
    }

    #[test]
    fn tokens_do_not_print() {
        let token = BearerToken::new("ern_secret").expect("token");
        assert!(!format!("{token:?}").contains("secret"));
    }
}

/// An error with its causes, each said once: `outer: cause: root`, where a cause whose
/// text its outer message already holds is left out (so neither "(os error 2): …
/// (os error 2)" nor "transport error: transport error"), and the root cause (connection
/// refused, an unknown CA, a name mismatch) is always there.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let part = cause.to_string();
        if !part.is_empty() && !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod chain_tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn layers(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |inner: Option<Layer>, text| {
                Some(Layer {
                    text,
                    source: inner.map(Box::new),
                })
            })
            .expect("a layer")
    }

    #[test]
    fn each_cause_is_said_once_and_the_root_always() {
        assert_eq!(
            error_chain(&layers(&[
                "transport error",
                "transport error",
                "tcp connect error",
                "Connection refused (os error 111)"
            ])),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
        assert_eq!(
            error_chain(&layers(&[
                "reading node.toml: No such file (os error 2)",
                "No such file (os error 2)"
            ])),
            "reading node.toml: No such file (os error 2)"
        );
        assert_eq!(error_chain(&layers(&["alone"])), "alone");
    }
}
