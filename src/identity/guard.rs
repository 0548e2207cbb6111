//! The guard: one extractor through which every protected handler declares the permission it
//! needs, in its signature: `Guarded<{ perm::API_KEYS_MANAGE }>`.
//!
//! It runs before any body extractor, so an unauthorised request is refused without its body
//! being read. When the route has a `{tenant}` segment, the guard resolves it and hides every
//! tenant but the caller's own behind a 404 (platform administrators may address any tenant).

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures::future::LocalBoxFuture;

use super::permissions::Permission;
use super::principal::Principal;
use crate::error::{ApiError, Code};
use crate::startup::AppState;
use crate::tenancy::TenantInfo;

pub struct Guarded<const P: u8> {
    pub principal: Principal,
    tenant: Option<Arc<TenantInfo>>,
}

impl<const P: u8> Guarded<P> {
    pub const PERMISSION: Permission = Permission::from_u8(P);

    /// The tenant the operation acts on: the path's `{tenant}` when the route has one, else
    /// the credential's own tenant.
    pub fn tenant(&self) -> Result<&Arc<TenantInfo>, ApiError> {
        self.tenant.as_ref().ok_or_else(|| {
            ApiError::new(Code::TenantRequired, "this operation acts on a tenant; use a credential scoped to one")
        })
    }
}

pub fn tenant_not_found(slug: &str) -> ApiError {
    ApiError::new(Code::NotFound, format!("tenant `{slug}` not found"))
}

impl<const P: u8> FromRequest for Guarded<P> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let principal = req.extensions().get::<Principal>().cloned();
        let slug = req.match_info().get("tenant").map(str::to_owned);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let principal = principal.ok_or_else(|| {
                ApiError::new(Code::Unauthenticated, "this operation needs `Authorization: Bearer <token or API key>`")
            })?;
            let tenant = match slug {
                None => principal.tenant.clone(),
                Some(slug) => {
                    let state = state.ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState missing")))?;
                    let tenant = state.tenants.by_slug(&slug).await.map_err(ApiError::from)?.ok_or_else(|| tenant_not_found(&slug))?;
                    let own = principal.tenant.as_ref().is_some_and(|t| t.id == tenant.id);
                    if !own && !principal.platform_admin {
                        return Err(tenant_not_found(&slug).into());
                    }
                    Some(tenant)
                }
            };
            if !principal.may(Self::PERMISSION) {
                return Err(ApiError::new(
                    Code::Forbidden,
                    format!("this operation needs the `{}` permission", Self::PERMISSION.as_str()),
                )
                .into());
            }
            Ok(Guarded { principal, tenant })
        })
    }
}
