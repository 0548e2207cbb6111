//! The guard: one extractor through which every protected handler declares the permission it
//! needs and reaches the one service it uses, in its signature:
//! `Guarded<{ perm::MODELS_WRITE }, RegistryService>`. The service is reachable only through a
//! guard that passed (`Deref`), so no handler can use it before the permission is checked.
//!
//! It runs before any body extractor, so an unauthorised request is refused without its body
//! being read. When the route has a `{tenant}` segment, the guard resolves it and hides every
//! tenant but the caller's own behind a 404 (platform administrators may address any tenant).

use std::future::{Ready, ready};
use std::ops::Deref;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};

use crate::error::{ApiError, Code};
use crate::identity::{Permission, Principal};
use crate::tenancy::TenantInfo;

/// A request allowed permission `P`, and the service `S` it may use (`()` for none).
pub struct Guarded<const P: u8, S: ?Sized + 'static = ()> {
    pub principal: Principal,
    tenant: Option<Arc<TenantInfo>>,
    service: web::Data<S>,
}

impl<const P: u8, S: ?Sized + 'static> Deref for Guarded<P, S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.service
    }
}

impl<const P: u8, S: ?Sized + 'static> Guarded<P, S> {
    pub const PERMISSION: Permission = Permission::from_u8(P);

    /// The tenant the operation acts on: the path's `{tenant}` when the route has one, else
    /// the credential's own tenant.
    pub fn tenant(&self) -> Result<&Arc<TenantInfo>, ApiError> {
        self.tenant.as_ref().ok_or_else(tenant_required)
    }
}

/// The refusal of a credential scoped to no tenant where an operation acts on one.
pub fn tenant_required() -> ApiError {
    ApiError::new(Code::TenantRequired, "this operation acts on a tenant; use a credential scoped to one")
}

/// The one permission check, whichever protocol the request came by.
pub fn require(principal: &Principal, permission: Permission) -> Result<(), ApiError> {
    if principal.may(permission) {
        Ok(())
    } else {
        Err(ApiError::new(Code::Forbidden, format!("this operation needs the `{}` permission", permission.as_str())))
    }
}

pub fn tenant_not_found(slug: &str) -> ApiError {
    ApiError::new(Code::NotFound, format!("tenant `{slug}` not found"))
}

/// The `{tenant}` segment of tenant-scoped routes, for their documentation: the guard resolves
/// it, so handlers never read it.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// Tenant slug.
    pub tenant: String,
}

/// The tenant named by the request path (`/v1/tenants/{tenant}/…`), resolved by the
/// authentication middleware before routing so that the guard itself never has to wait: actix
/// polls a handler's extractors together, and a guard that waited would let a body extractor
/// read (and judge) the body of a request that is about to be refused.
#[derive(Clone)]
pub struct PathTenant(pub Option<Arc<TenantInfo>>);

/// The tenant slug of a tenant-scoped path, if it is one.
pub fn path_tenant_slug(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/tenants/")?;
    let slug = rest.split('/').next().unwrap_or("");
    (!slug.is_empty()).then_some(slug)
}

impl<const P: u8, S: ?Sized + 'static> FromRequest for Guarded<P, S> {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Self::check(req).map_err(Into::into))
    }
}

impl<const P: u8, S: ?Sized + 'static> Guarded<P, S> {
    fn check(req: &HttpRequest) -> Result<Self, ApiError> {
        let extensions = req.extensions();
        let principal = extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError::new(Code::Unauthenticated, "this operation needs `Authorization: Bearer <token or API key>`")
        })?;
        let tenant = match req.match_info().get("tenant") {
            None => principal.tenant.clone(),
            Some(slug) => {
                let resolved = extensions.get::<PathTenant>().and_then(|p| p.0.clone()).filter(|t| t.slug == slug);
                let tenant = resolved.ok_or_else(|| tenant_not_found(slug))?;
                let own = principal.tenant.as_ref().is_some_and(|t| t.id == tenant.id);
                if !own && !principal.platform_admin {
                    return Err(tenant_not_found(slug));
                }
                Some(tenant)
            }
        };
        require(&principal, Self::PERMISSION)?;
        // Fail closed: a service the application did not register is a server error, never a
        // way around the check above.
        let service = req.app_data::<web::Data<S>>().cloned().ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("no {} registered for guarded handlers", std::any::type_name::<S>()))
        })?;
        Ok(Guarded { principal, tenant, service })
    }
}
