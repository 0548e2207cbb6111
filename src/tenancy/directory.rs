//! The tenant directory: tenant metadata by id and by slug, cached in process.
//!
//! Entries live for `TTL`; any change made through this process invalidates at once, and other
//! processes see it within `TTL`. Suspension therefore takes effect immediately where it was
//! made and within two seconds everywhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use sqlx::PgPool;
use uuid::Uuid;

use super::{TenantId, TenantInfo, TenantStatus};

const TTL: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct TenantDirectory {
    pool: PgPool,
    by_id: Arc<RwLock<HashMap<Uuid, (Arc<TenantInfo>, Instant)>>>,
    slug_to_id: Arc<RwLock<HashMap<String, Uuid>>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    slug: String,
    status: TenantStatus,
    rate_limit_per_second: i32,
    rate_limit_burst: i32,
}

impl From<Row> for TenantInfo {
    fn from(r: Row) -> Self {
        TenantInfo {
            id: TenantId(r.id),
            slug: r.slug,
            status: r.status,
            rate_limit_per_second: r.rate_limit_per_second.max(1) as u32,
            rate_limit_burst: r.rate_limit_burst.max(1) as u32,
        }
    }
}

const SELECT: &str = "SELECT id, slug, status, rate_limit_per_second, rate_limit_burst FROM tenants";

impl TenantDirectory {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, by_id: Default::default(), slug_to_id: Default::default() }
    }

    fn cached(&self, id: Uuid) -> Option<Arc<TenantInfo>> {
        let map = self.by_id.read();
        map.get(&id).filter(|(_, at)| at.elapsed() < TTL).map(|(info, _)| info.clone())
    }

    fn store(&self, info: TenantInfo) -> Arc<TenantInfo> {
        let info = Arc::new(info);
        self.slug_to_id.write().insert(info.slug.clone(), info.id.0);
        self.by_id.write().insert(info.id.0, (info.clone(), Instant::now()));
        info
    }

    pub async fn by_id(&self, id: TenantId) -> Result<Option<Arc<TenantInfo>>, sqlx::Error> {
        if let Some(info) = self.cached(id.0) {
            return Ok(Some(info));
        }
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| self.store(r.into())))
    }

    pub async fn by_slug(&self, slug: &str) -> Result<Option<Arc<TenantInfo>>, sqlx::Error> {
        let known = self.slug_to_id.read().get(slug).copied();
        if let Some(info) = known.and_then(|id| self.cached(id)) {
            if info.slug == slug {
                return Ok(Some(info));
            }
        }
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE slug = $1")))
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| self.store(r.into())))
    }

    pub fn invalidate(&self, id: TenantId) {
        self.by_id.write().remove(&id.0);
    }
}
