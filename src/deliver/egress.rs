//! The DNS resolver that enforces the egress rules ([`crate::model::egress`]) at delivery time.
//!
//! Guarantees: the connection pool (`super::connections`) is handed only the addresses the policy allows, so it connects
//! to exactly what was checked; a name that re-resolves to a private address (DNS rebinding) is
//! still refused; a name whose every address is refused fails with a message naming them.

use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::model::egress::{host_label, EgressError, EgressPolicy};

impl EgressPolicy {
    /// A resolver for the HTTP client that drops the addresses this policy refuses.
    pub fn resolver(&self) -> PolicyResolver {
        PolicyResolver {
            policy: Arc::new(self.clone()),
        }
    }
}

/// Resolves names with the system resolver (tokio's `lookup_host`) and keeps only the
/// addresses the policy allows.
#[derive(Clone, Debug)]
pub struct PolicyResolver {
    policy: Arc<EgressPolicy>,
}

impl PolicyResolver {
    /// The allowed addresses of `host` (port 0: the client fills in the URL's port).
    pub async fn resolve_allowed(&self, host: &str) -> Result<Vec<SocketAddr>, EgressError> {
        let found: Vec<SocketAddr> = match tokio::net::lookup_host((host, 0)).await {
            Ok(it) => it.collect(),
            Err(e) => {
                return Err(EgressError::Dns {
                    host: host.to_string(),
                    reason: e.to_string(),
                })
            }
        };
        filter_addrs(&self.policy, host, found)
    }
}

fn filter_addrs(
    policy: &EgressPolicy,
    host: &str,
    found: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, EgressError> {
    if found.is_empty() {
        return Err(EgressError::NoAddresses {
            host: host.to_string(),
        });
    }
    let mut refused: Vec<&str> = Vec::new();
    let mut allowed = Vec::with_capacity(found.len());
    for addr in found {
        match policy.classify(addr.ip()) {
            Ok(()) => allowed.push(addr),
            Err(reason) => {
                // The addresses go to the operator's log only: the message is stored with the
                // attempt and shown to API callers, who must not learn internal addresses.
                tracing::debug!(host, ip = %addr.ip(), reason, "resolved address refused");
                if !refused.contains(&reason) {
                    refused.push(reason);
                }
            }
        }
    }
    if allowed.is_empty() {
        return Err(EgressError::AllRefused {
            host: host.to_string(),
            details: refused.join(", "),
        });
    }
    // Some addresses refused and some allowed: connecting to the allowed ones is safe, and the
    // refused ones never reach the client.
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EgressPolicy {
        EgressPolicy::default()
    }

    #[test]
    fn filter_keeps_allowed_and_reports_all_refused() {
        let p = policy();
        let a = |s: &str| SocketAddr::new(s.parse().unwrap(), 0);
        let got = filter_addrs(&p, "mixed.example", vec![a("10.0.0.1"), a("1.1.1.1")]).unwrap();
        assert_eq!(got, vec![a("1.1.1.1")]);
        let e = filter_addrs(&p, "localhost", vec![a("127.0.0.1"), a("::1")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "localhost resolves only to refused addresses (a loopback address); set [delivery] \
             allow_private_networks = true or add them to allow_cidrs"
        );
        assert!(!e.is_dns());
        assert!(filter_addrs(&p, "x", vec![]).unwrap_err().is_dns());
    }

    #[tokio::test]
    async fn resolver_refuses_localhost() {
        let r = policy().resolver();
        let e = r.resolve_allowed("localhost").await.unwrap_err();
        assert!(matches!(e, EgressError::AllRefused { .. }), "{e}");
        let mut p = policy();
        p.allow_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
        let ok = p.resolver().resolve_allowed("localhost").await.unwrap();
        assert!(ok.iter().all(|a| a.ip().is_loopback()) && !ok.is_empty());
    }
}
