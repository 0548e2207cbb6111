//! Attacks: one test per hole the trust-boundary review found. Each tries the attack as an
//! outsider, another tenant or an over-reaching insider would, and asserts that it fails and
//! that nothing was written or leaked.

mod audit_verification;
mod audit_writes;
mod delegation;
mod external_data;
mod fair_sharing;
mod identity;
mod least_privilege;
mod login_throttling;
mod membership;
mod metrics;
mod refresh_cookie;
