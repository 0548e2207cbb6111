//! The HTTP edge: middleware every request passes, extractor error mapping, the fallback
//! routes, the OpenAPI document and the operational endpoints.

pub mod api;
pub mod authenticate;
pub mod edge;
pub mod extract;
pub mod fallback;
pub mod guard;
pub mod health;
pub mod openapi;
