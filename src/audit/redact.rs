//! What an audit event may say: secrets are removed before anything is hashed or stored, and
//! emails and client addresses are masked when the tenant asks for it. The rules are applied
//! while an event is written as canonical JSON (`chain::canonical_json_redacted`).

const SECRET_MARKERS: [&str; 8] = ["password", "secret", "token", "authorization", "api_key", "apikey", "credential", "private"];

#[derive(Debug, Clone, Copy, Default)]
pub struct MaskPolicy {
    pub emails: bool,
    pub client_addr: bool,
}

pub fn is_secret_key(key: &str) -> bool {
    let key = key.as_bytes();
    SECRET_MARKERS.iter().any(|m| key.windows(m.len()).any(|w| w.eq_ignore_ascii_case(m.as_bytes())))
}

pub(crate) fn looks_like_email(s: &str) -> bool {
    s.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !s.contains(' '))
}

/// `alice@example.com` → `a***@example.com`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// IPv4 keeps its /24, IPv6 its /48.
pub fn mask_addr(addr: &str) -> String {
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.0", o[0], o[1], o[2])
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::", s[0], s[1], s[2])
        }
        Err(_) => "masked".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::canonical_json_redacted;

    #[test]
    fn secrets_never_survive() {
        let v = serde_json::json!({
            "email": "alice@example.com", "password": "hunter2",
            "nested": {"refresh_token": "trt_x", "name": "k", "list": [{"api_key": "tsk"}]},
            "Authorization": "Bearer x"
        });
        let text = canonical_json_redacted(&v, MaskPolicy::default());
        for secret in ["hunter2", "trt_x", "tsk", "Bearer"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("alice@example.com"));
    }

    #[test]
    fn masking_is_per_policy() {
        let v = serde_json::json!({"email": "alice@example.com"});
        let text = canonical_json_redacted(&v, MaskPolicy { emails: true, client_addr: false });
        assert_eq!(text, r#"{"email":"a***@example.com"}"#);
        assert_eq!(mask_addr("10.1.2.3"), "10.1.2.0");
        assert_eq!(mask_addr("2001:db8:1:2::5"), "2001:db8:1::");
    }
}
