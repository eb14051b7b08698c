//! The scheme registry: which [`Transport`] handles `tcp:`, `mem:`, ...

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::{Endpoint, Link, Listener, Transport, TransportError};

/// Maps an endpoint's scheme to the [`Transport`] that handles it.
///
/// The program that knows which transports exist (the CLI, a test) fills it
/// in; everything else connects and listens through it without depending on
/// any transport crate. Cloning is cheap and clones share nothing mutable:
/// registering on one clone does not affect the others.
#[derive(Clone, Default)]
pub struct Registry {
    // BTreeMap so `schemes()` and error messages list schemes in a stable,
    // sorted order.
    transports: Arc<BTreeMap<String, Arc<dyn Transport>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Makes `transport` handle `scheme` (matched case-insensitively),
    /// returning the transport it replaces, if any.
    pub fn register(
        &mut self,
        scheme: &str,
        transport: Arc<dyn Transport>,
    ) -> Option<Arc<dyn Transport>> {
        Arc::make_mut(&mut self.transports).insert(scheme.to_ascii_lowercase(), transport)
    }

    /// [`register`](Self::register) in builder style.
    #[must_use]
    pub fn with(mut self, scheme: &str, transport: Arc<dyn Transport>) -> Self {
        self.register(scheme, transport);
        self
    }

    /// The transport for `scheme`, if one is registered.
    pub fn get(&self, scheme: &str) -> Option<&Arc<dyn Transport>> {
        self.transports.get(&scheme.to_ascii_lowercase())
    }

    /// The registered schemes, sorted.
    pub fn schemes(&self) -> Vec<&str> {
        self.transports.keys().map(String::as_str).collect()
    }

    /// Connects to `endpoint` with the transport registered for its scheme.
    pub async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError> {
        let transport = self.lookup(endpoint)?;
        tracing::debug!(%endpoint, "connecting");
        transport.connect(endpoint).await
    }

    /// Listens on `endpoint` with the transport registered for its scheme.
    pub async fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>, TransportError> {
        let transport = self.lookup(endpoint)?;
        tracing::debug!(%endpoint, "listening");
        transport.listen(endpoint).await
    }

    fn lookup(&self, endpoint: &Endpoint) -> Result<&Arc<dyn Transport>, TransportError> {
        self.get(endpoint.scheme())
            .ok_or_else(|| TransportError::UnknownScheme {
                scheme: endpoint.scheme().to_owned(),
                known: self.transports.keys().cloned().collect(),
            })
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.schemes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::{async_trait, LinkInfo, Operation};

    /// Connecting hands out one end of a fresh pipe; listening is refused.
    struct Loopback;

    #[async_trait]
    impl Transport for Loopback {
        async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError> {
            let (near, _far) = tokio::io::duplex(16);
            Ok(Link::new(near, LinkInfo::new("loop", endpoint.to_string())))
        }

        async fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>, TransportError> {
            Err(TransportError::unsupported(endpoint, Operation::Listen))
        }
    }

    #[tokio::test]
    async fn dispatches_by_scheme() {
        let registry = Registry::new().with("LOOP", Arc::new(Loopback));
        assert_eq!(registry.schemes(), vec!["loop"]);
        assert!(registry.get("Loop").is_some());
        let link = registry
            .connect(&"loop://x".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(link.info().kind, "loop");
        assert_eq!(link.info().peer, "loop://x");
        let err = registry
            .listen(&"loop://x".parse().unwrap())
            .await
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "loop://x: this transport cannot listen");
    }

    #[tokio::test]
    async fn unknown_scheme_lists_the_known_ones() {
        let registry = Registry::new()
            .with("tcp", Arc::new(Loopback))
            .with("mem", Arc::new(Loopback));
        let err = registry
            .connect(&"serial:///dev/x".parse().unwrap())
            .await
            .unwrap_err();
        match &err {
            TransportError::UnknownScheme { scheme, known } => {
                assert_eq!(scheme, "serial");
                assert_eq!(known, &["mem".to_owned(), "tcp".to_owned()]);
            }
            other => panic!("expected UnknownScheme, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "unknown scheme 'serial' (known schemes: mem, tcp)"
        );
    }

    #[test]
    fn clones_are_independent_and_register_returns_the_old_one() {
        let mut first = Registry::new();
        assert!(first.register("tcp", Arc::new(Loopback)).is_none());
        let mut second = first.clone();
        assert!(second.register("tcp", Arc::new(Loopback)).is_some());
        second.register("mem", Arc::new(Loopback));
        assert_eq!(first.schemes(), vec!["tcp"]);
        assert_eq!(second.schemes(), vec!["mem", "tcp"]);
        assert_eq!(
            format!("{second:?}"),
            "Registry { schemes: [\"mem\", \"tcp\"] }"
        );
    }
}
