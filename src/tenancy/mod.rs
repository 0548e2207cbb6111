//! Tenants: identifiers, the cached tenant directory, tenant-scoped transactions and per-tenant
//! rate limits. The floor of the capabilities: it knows no users, roles or audit (their
//! administration is `identity::admin`).

pub mod db;
pub mod directory;
pub mod error;
pub mod rate_limit;

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use error::TenancyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct TenantId(pub Uuid);

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A tenant's URL name: 2–63 of `a-z0-9-`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(transparent)]
pub struct TenantSlug(String);

impl TenantSlug {
    pub fn parse(value: &str) -> Result<Self, TenancyError> {
        let ok = (2..=63).contains(&value.len())
            && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !value.starts_with('-');
        if ok { Ok(Self(value.to_owned())) } else { Err(TenancyError::InvalidSlug(value.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// A stored status that is neither fails to decode: no tenant is ever read as active by mistake.
crate::text_enum! {
    /// A suspended tenant's tokens and API keys stop working.
    #[derive(Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum TenantStatus {
        Active => "active",
        Suspended => "suspended",
    }
}

/// What the request path needs to know about a tenant, cached by the directory.
#[derive(Debug, Clone)]
pub struct TenantInfo {
    pub id: TenantId,
    pub slug: String,
    pub status: TenantStatus,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
}

impl TenantInfo {
    pub fn is_active(&self) -> bool {
        self.status == TenantStatus::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_parsed_not_validated() {
        assert!(TenantSlug::parse("acme").is_ok());
        assert!(TenantSlug::parse("acme-2").is_ok());
        for bad in ["", "a", "-acme", "Acme", "ac me", "acme/x", &"a".repeat(64)] {
            assert!(TenantSlug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses_are_spelled_alike_in_json_and_in_the_database() {
        for status in TenantStatus::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
            assert_eq!(TenantStatus::parse(status.as_str()), Some(*status));
        }
    }
}
