//! Outgoing HTTP: the one way to build a client (the service and the stand-in use it too).

/// A `reqwest` client builder with TLS ready: rustls with the `ring` provider (no system
/// OpenSSL, no C toolchain beyond what `ring` needs), and a User-Agent naming the service.
pub fn builder() -> reqwest::ClientBuilder {
    // Fails only when a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().user_agent(concat!("partnerstack-sync/", env!("CARGO_PKG_VERSION")))
}
