//! The API as a whole: the route table, every route in the order the router tries them, and
//! the OpenAPI document built from it (`openapi`), so what is served is what is documented.

pub mod openapi;

use utoipa_actix_web::service_config::ServiceConfig;

/// The route table. Both the server and `tessera openapi` are built from it.
pub fn routes(cfg: &mut ServiceConfig) {
    use crate::identity::routes as auth;
    use crate::inference::routes as oip;
    use crate::jobs::routes as jobs;
    use crate::registry::routes as models;
    use crate::identity::admin::routes as tenancy;
    use crate::http::health;
    // The router tries routes in this order, matching each dynamic one with a regex: the
    // inference routes, by far the hottest, come first.
    cfg.service(oip::infer_latest)
        .service(oip::infer_version)
        .service(oip::server_metadata)
        .service(oip::live)
        .service(oip::ready)
        .service(oip::model_metadata)
        .service(oip::version_metadata)
        .service(oip::model_ready)
        .service(oip::version_ready)
        .service(health::healthz)
        .service(health::readyz)
        .service(auth::jwks)
        .service(auth::login)
        .service(auth::refresh)
        .service(auth::logout)
        .service(auth::verify)
        .service(auth::me)
        .service(auth::change_password)
        .service(auth::issue_password_reset)
        .service(auth::redeem_password_reset)
        .service(tenancy::create_tenant)
        .service(tenancy::list_tenants)
        .service(tenancy::get_tenant)
        .service(tenancy::set_tenant_limits)
        .service(tenancy::suspend_tenant)
        .service(tenancy::resume_tenant)
        .service(tenancy::list_members)
        .service(tenancy::invite)
        .service(tenancy::list_invitations)
        .service(tenancy::revoke_invitation)
        .service(tenancy::accept_invitation)
        .service(tenancy::change_member_role)
        .service(tenancy::remove_member)
        .service(tenancy::create_api_key)
        .service(tenancy::list_api_keys)
        .service(tenancy::revoke_api_key)
        .service(crate::audit::routes::list_events)
        .service(crate::audit::routes::export_events)
        .service(crate::audit::routes::list_platform_events)
        .service(crate::audit::routes::export_platform_events)
        .service(crate::audit::routes::signing_keys)
        .service(crate::audit::routes::verify_export)
        .service(crate::audit::routes::get_settings)
        .service(crate::audit::routes::put_settings)
        .service(models::create_model)
        .service(models::list_models)
        .service(models::get_model)
        .service(models::delete_model)
        .service(models::upload_version)
        .service(models::list_versions)
        .service(models::get_version)
        .service(models::download_version)
        .service(models::delete_version)
        .service(models::set_alias)
        .service(models::remove_alias)
        .service(models::rotate_tenant_key)
        .service(jobs::upload_dataset)
        .service(jobs::list_datasets)
        .service(jobs::get_dataset)
        .service(jobs::submit_job)
        .service(jobs::list_jobs)
        .service(jobs::get_job)
        .service(jobs::cancel_job)
        .service(jobs::job_output)
        .service(jobs::job_events)
        .service(crate::usage::routes::usage)
        .service(crate::usage::routes::export);
}
