//! Where calls the server makes on a user's behalf may go: remote hooks
//! (their schemas and tools). WORKFLOWS.md's SSRF rules:
//!
//! - Never a link-local address (169.254.0.0/16, fe80::/10) or a cloud
//!   metadata address (fd00:ec2::254, 100.100.100.200), unless an admin
//!   allows internal addresses (`[hooks] allow_internal_addresses`). The
//!   check is made on the addresses the connection will use: a resolver
//!   that drops them, so a name that re-resolves between a check and the
//!   connect gains nothing; literal addresses are checked before the call.
//! - Never this server's own admin routes (`/admin/*` on its own address).
//! - No redirects: a hook that answers 3xx has answered (a redirect could
//!   point anywhere).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The policy and the HTTP client that keeps it.
pub struct Egress {
    allow_internal: bool,
    own: OnceLock<SocketAddr>,
    /// Built on first use (after the process installed its TLS provider).
    client: OnceLock<reqwest::Client>,
    /// Hook documents read lately, by what was asked (URL and headers):
    /// each is read again after [`SCHEMA_TTL`].
    schemas: Mutex<HashMap<String, (Instant, Arc<serde_json::Value>)>>,
}

/// How long a hook's `openapi.json` is used before it is read again.
pub const SCHEMA_TTL: Duration = Duration::from_secs(10);
/// At most this many documents are kept (the oldest go first).
const MAX_SCHEMAS: usize = 1024;

/// Whether an address is link-local or a known metadata endpoint.
pub fn metadata_or_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4 == Ipv4Addr::new(100, 100, 100, 200),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return metadata_or_link_local(IpAddr::V4(v4));
            }
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// A resolver that drops link-local and metadata addresses.
struct Guarded;

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| !metadata_or_link_local(a.ip()))
                .collect();
            if kept.is_empty() && !all.is_empty() {
                return Err(refusal(&host).into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn refusal(host: &str) -> String {
    format!(
        "{host} is a link-local or cloud metadata address: refused (an admin can allow internal addresses with [hooks] allow_internal_addresses)"
    )
}

impl Egress {
    pub fn new(allow_internal: bool) -> Arc<Egress> {
        Arc::new(Egress {
            allow_internal,
            own: OnceLock::new(),
            client: OnceLock::new(),
            schemas: Mutex::new(HashMap::new()),
        })
    }

    /// A document read under `key` less than [`SCHEMA_TTL`] ago.
    pub fn cached_schema(&self, key: &str) -> Option<Arc<serde_json::Value>> {
        let schemas = self.schemas.lock().expect("never poisoned");
        schemas
            .get(key)
            .filter(|(at, _)| at.elapsed() < SCHEMA_TTL)
            .map(|(_, spec)| spec.clone())
    }

    /// Keeps a document just read under `key`.
    pub fn keep_schema(&self, key: String, spec: Arc<serde_json::Value>) {
        let mut schemas = self.schemas.lock().expect("never poisoned");
        if schemas.len() >= MAX_SCHEMAS {
            schemas.retain(|_, (at, _)| at.elapsed() < SCHEMA_TTL);
        }
        if schemas.len() >= MAX_SCHEMAS
            && let Some(oldest) = schemas
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            schemas.remove(&oldest);
        }
        schemas.insert(key, (Instant::now(), spec));
    }

    /// The address this server listens on (known once it is bound).
    pub fn set_own_address(&self, addr: SocketAddr) {
        let _ = self.own.set(addr);
    }

    pub fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none());
            if !self.allow_internal {
                builder = builder.dns_resolver(Arc::new(Guarded));
            }
            builder.build().unwrap_or_default()
        })
    }

    /// Checks a URL before a call: a literal link-local or metadata
    /// address, and this server's own admin routes, are refused.
    pub async fn check(&self, url: &reqwest::Url) -> Result<(), String> {
        let Some(host) = url.host_str() else {
            return Err(format!("{url} names no host"));
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if !self.allow_internal
            && let Ok(ip) = bare.parse::<IpAddr>()
            && metadata_or_link_local(ip)
        {
            return Err(refusal(host));
        }
        let Some(own) = self.own.get() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(0);
        let admin = url.path() == "/admin" || url.path().starts_with("/admin/");
        if port != own.port() || !admin {
            return Ok(());
        }
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((bare, port)).await {
            Ok(a) => a.collect(),
            Err(_) => return Ok(()),
        };
        let local = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified() || ip == own.ip();
        if addrs.iter().any(|a| local(a.ip())) {
            return Err(format!(
                "{url} is this server's own admin route: hooks may not call it"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_and_metadata_addresses_are_recognised() {
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
        ] {
            assert!(metadata_or_link_local(bad.parse().unwrap()), "{bad}");
        }
        for ok in ["127.0.0.1", "10.0.0.1", "8.8.8.8", "::1", "fd00::1"] {
            assert!(!metadata_or_link_local(ok.parse().unwrap()), "{ok}");
        }
    }

    #[tokio::test]
    async fn the_own_admin_routes_and_literal_metadata_urls_are_refused() {
        let e = Egress::new(false);
        e.set_own_address("127.0.0.1:8123".parse().unwrap());
        let check = |u: &str| {
            let url = reqwest::Url::parse(u).unwrap();
            let e = e.clone();
            async move { e.check(&url).await }
        };
        assert!(
            check("http://169.254.169.254/latest/meta-data")
                .await
                .is_err()
        );
        assert!(check("http://[fe80::1]:80/").await.is_err());
        assert!(check("http://127.0.0.1:8123/admin/users").await.is_err());
        assert!(check("http://localhost:8123/admin").await.is_err());
        assert!(check("http://127.0.0.1:8123/api/nodes").await.is_ok());
        assert!(check("http://127.0.0.1:9999/admin/users").await.is_ok());
        // The resolver drops what a name resolves to when it is link-local.
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let name = |n: &str| reqwest::dns::Name::from_str(n).unwrap();
        let refused = Guarded.resolve(name("169.254.169.254")).await;
        assert!(refused.err().unwrap().to_string().contains("link-local"));
        let kept: Vec<SocketAddr> = Guarded.resolve(name("localhost")).await.unwrap().collect();
        assert!(kept.iter().all(|a| a.ip().is_loopback()) && !kept.is_empty());
        let open = Egress::new(true);
        let url = reqwest::Url::parse("http://169.254.169.254/").unwrap();
        assert!(open.check(&url).await.is_ok());
    }
}
