//! Identity: who the caller is (authentication), what it may do (permissions), and the
//! credentials behind it (passwords, access tokens, refresh tokens, API keys).

pub mod admin;
pub mod authenticate;
pub mod error;
pub mod jwt;
pub mod login_failures;
pub mod passwords;
pub mod permissions;
pub mod principal;
pub mod routes;
pub mod secrets;
pub mod service;
pub mod throttle;

pub use error::IdentityError;
pub use permissions::{Permission, Role, perm};
pub use principal::Principal;

/// A normalised email address: trimmed, lower-cased, one `@` with text on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(value: &str) -> Result<Self, IdentityError> {
        // As the documented pattern reads the input: at most 320 characters before trimming.
        let short = value.chars().count() <= 320;
        let value = value.trim().to_lowercase();
        let valid = short
            && value.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
            })
            && !value.chars().any(char::is_whitespace)
            && value.matches('@').count() == 1;
        if valid { Ok(Self(value)) } else { Err(IdentityError::InvalidEmail) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    #[test]
    fn emails_are_normalised() {
        assert_eq!(Email::parse("  Alice@Example.COM ").unwrap().as_str(), "alice@example.com");
        for bad in ["", "alice", "@example.com", "alice@", "a b@example.com", "a@b@c.com", "alice@example"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }
}
