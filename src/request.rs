//! Facts about the request being served, known before any capability runs: its id, where it
//! came from, and who acts. Every layer may read them; this module knows nothing above the floor.

use std::future::{Ready, ready};
use std::net::IpAddr;

use actix_web::http::header::HeaderValue;
use actix_web::{Error, FromRequest, HttpMessage, HttpRequest};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

const MAX_REQUEST_ID_LEN: usize = 128;

/// The id of the current request: the caller's `X-Request-Id` when it is sane, else a new
/// UUIDv7. Echoed on the response and recorded in logs, traces and audit events. A generated
/// id is kept inline: every inference call hands one to the audit writer, and a heap copy
/// would be freed there, on another thread.
#[derive(Clone, Debug)]
pub enum RequestId {
    Generated([u8; 36]),
    Given(HeaderValue),
}

impl RequestId {
    pub fn as_str(&self) -> &str {
        match self {
            RequestId::Generated(text) => std::str::from_utf8(text).unwrap_or(""),
            // Only ever accepted as visible ASCII, so this cannot fail.
            RequestId::Given(value) => value.to_str().unwrap_or(""),
        }
    }

    pub(crate) fn header_value(&self) -> HeaderValue {
        match self {
            RequestId::Generated(text) => HeaderValue::from_bytes(text).expect("a UUID is a valid header value"),
            RequestId::Given(value) => value.clone(),
        }
    }

    /// A caller's request id, if it is one we pass on: short, and only letters, digits and `-_.:`.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        let text = value.as_bytes();
        if text.is_empty() || text.len() > MAX_REQUEST_ID_LEN || !text.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b)) {
            return None;
        }
        // Copied, not shared: see `RequestInfo::from_request`.
        HeaderValue::from_bytes(text).ok().map(RequestId::Given)
    }

    pub(crate) fn from_request_header(value: Option<&HeaderValue>) -> Self {
        value.and_then(Self::parse).unwrap_or_else(Self::generate)
    }

    /// A UUIDv7: time-ordered, its other bits random. Not `Uuid::now_v7`, whose counter sits
    /// behind a lock every HTTP worker would take for every request; ids need not be monotonic.
    pub(crate) fn generate() -> Self {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let at = uuid::Timestamp::from_unix(uuid::NoContext, since_epoch.as_secs(), since_epoch.subsec_nanos());
        let mut text = [0; 36];
        uuid::Uuid::new_v7(at).hyphenated().encode_lower(&mut text);
        RequestId::Generated(text)
    }
}

impl FromRequest for RequestId {
    type Error = Error;
    type Future = Ready<Result<Self, Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(Ok(req.extensions().get::<RequestId>().cloned().unwrap_or_else(RequestId::generate)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Actor {
    User { id: Uuid },
    ApiKey { id: Uuid },
    /// An operator at the command line.
    System,
}

/// Where a request came from, as recorded in its events. Kept unformatted (an address, header
/// values; a generated request id inline): every inference call carries one to the audit
/// writer, so nothing is formatted until the writer renders it.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub client_addr: Option<IpAddr>,
    pub user_agent: Option<HeaderValue>,
    pub request_id: Option<RequestId>,
}

/// Longer user agents are cut to this many bytes when recorded.
const MAX_USER_AGENT: usize = 512;

impl RequestInfo {
    pub fn from_request(req: &HttpRequest) -> Self {
        let headers = req.headers();
        Self::from_parts(
            req.peer_addr().map(|a| a.ip()),
            req.app_data::<crate::net::TrustedProxies>(),
            headers.get_all(actix_web::http::header::X_FORWARDED_FOR).map(HeaderValue::as_bytes),
            headers.get(actix_web::http::header::USER_AGENT).map(HeaderValue::as_bytes),
            req.extensions().get::<RequestId>().cloned(),
        )
    }

    /// What any protocol knows of a request: the peer, the trusted proxies (whose
    /// `X-Forwarded-For` lines, in order, name the client), the user agent and the request id.
    pub fn from_parts<'a>(
        peer: Option<IpAddr>,
        proxies: Option<&crate::net::TrustedProxies>,
        forwarded_for: impl Iterator<Item = &'a [u8]>,
        user_agent: Option<&[u8]>,
        request_id: Option<RequestId>,
    ) -> Self {
        let client_addr = match proxies {
            Some(proxies) if !proxies.is_empty() && proxies.contains_opt(peer) => {
                // Every header line, in order: a proxy may add a line of its own after the one
                // the client wrote. Read as bytes, so a client's garbage cannot hide the hops
                // the proxies appended to its right.
                let lines: Vec<String> = forwarded_for.map(|v| String::from_utf8_lossy(v).into_owned()).collect();
                proxies.client(peer, (!lines.is_empty()).then(|| lines.join(",")).as_deref())
            }
            _ => peer,
        };
        Self {
            client_addr,
            // Copied, not shared: a header value shares the buffer its request was read into,
            // which an inference call's event would keep alive until the audit writer drops it.
            user_agent: user_agent.and_then(|v| HeaderValue::from_bytes(&v[..v.len().min(MAX_USER_AGENT)]).ok()),
            request_id,
        }
    }

    /// For operator commands.
    pub fn command_line() -> Self {
        let agent = HeaderValue::from_str(&format!("tessera-cli/{}", crate::VERSION)).ok();
        Self { client_addr: None, user_agent: agent, request_id: None }
    }

    /// The user agent as recorded: visible ASCII only (anything else is not recorded), at most
    /// `MAX_USER_AGENT` bytes.
    pub fn user_agent(&self) -> Option<&str> {
        let agent = self.user_agent.as_ref()?.to_str().ok()?;
        Some(&agent[..agent.len().min(MAX_USER_AGENT)])
    }

    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_ref().map(RequestId::as_str)
    }
}

impl FromRequest for RequestInfo {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(Ok(Self::from_request(req)))
    }
}

