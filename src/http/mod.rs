//! The HTTP edge below the handlers: middleware every request passes, the guard, extractor
//! error mapping, the fallback routes and the operational endpoints. It knows no handler; the
//! route table (`api`) sits above both.

pub mod authenticate;
pub mod compress;
pub mod edge;
pub mod extract;
pub mod fallback;
pub mod guard;
pub mod health;
pub mod portal;
