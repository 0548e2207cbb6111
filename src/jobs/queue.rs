//! The job stream: Redis Streams with one consumer group shared by every worker process.
//!
//! An entry says only "job J of tenant T is due"; the job's row in Postgres is the truth.
//! A worker reads an entry (`XREADGROUP`), claims the job in Postgres, and acknowledges the
//! entry when the job reaches a final state or is handed back. While it runs, the worker
//! touches its entry (`XCLAIM … JUSTID`) so the entry never looks idle; a worker that dies
//! stops touching it, and after the visibility timeout another worker takes the entry over
//! (`XAUTOCLAIM`) and, with it, the job.

use redis::Value;
use redis::aio::MultiplexedConnection;
use uuid::Uuid;

use crate::redis_store::RedisStore;

const GROUP: &str = "workers";
/// The stream is trimmed (approximately) to this many entries; acknowledged entries are
/// deleted anyway, so only a backlog of this size could ever be cut.
const MAX_LEN: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub entry: String,
    pub job: Uuid,
    pub tenant: Uuid,
}

#[derive(Clone)]
pub struct JobQueue {
    redis: RedisStore,
    stream: String,
    dead: String,
}

impl JobQueue {
    pub fn new(redis: RedisStore) -> Self {
        let stream = redis.key(&["jobs", "stream"]);
        let dead = redis.key(&["jobs", "dead"]);
        Self { redis, stream, dead }
    }

    /// A connection of the worker's own: a blocking read would hold up every other command
    /// queued behind it on the shared multiplexed connection.
    pub async fn dedicated_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        // Longer than any BLOCK this connection waits for.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(std::time::Duration::from_secs(10)));
        self.redis.client().get_multiplexed_async_connection_with_config(&config).await
    }

    /// Creates the stream and the group if they do not exist.
    pub async fn ensure_group(&self) -> redis::RedisResult<()> {
        let mut conn = self.redis.connection();
        let created: redis::RedisResult<()> =
            redis::cmd("XGROUP").arg("CREATE").arg(&self.stream).arg(GROUP).arg("0").arg("MKSTREAM").query_async(&mut conn).await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    pub async fn enqueue(&self, job: Uuid, tenant: Uuid) -> redis::RedisResult<String> {
        self.add(&self.stream, job, tenant, &[]).await
    }

    /// `XADD stream MAXLEN ~ … * job J tenant T [extra…]`; returns the entry id.
    async fn add(&self, stream: &str, job: Uuid, tenant: Uuid, extra: &[(&str, &str)]) -> redis::RedisResult<String> {
        let mut command = redis::cmd("XADD");
        command.arg(stream).arg("MAXLEN").arg("~").arg(MAX_LEN).arg("*").arg("job").arg(job.to_string()).arg("tenant").arg(tenant.to_string());
        for (name, value) in extra {
            command.arg(*name).arg(*value);
        }
        command.query_async(&mut self.redis.connection()).await
    }

    /// The next new entry for `consumer`, waiting up to `block_ms`.
    pub async fn next(&self, conn: &mut MultiplexedConnection, consumer: &str, block_ms: u64) -> redis::RedisResult<Option<Delivery>> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(conn)
            .await?;
        // [[stream, [[id, [field, value, ...]], ...]]] or nil
        let Some(streams) = as_array(&reply) else { return Ok(None) };
        let entries = streams.first().and_then(as_array).and_then(|s| s.get(1)).and_then(as_array);
        Ok(entries.and_then(|e| e.first()).and_then(parse_entry))
    }

    /// Takes over one entry that another consumer has not touched for `min_idle_ms`.
    pub async fn reclaim(&self, consumer: &str, min_idle_ms: u64) -> redis::RedisResult<Option<Delivery>> {
        let mut conn = self.redis.connection();
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        // [next-start, [[id, [fields]] | nil, ...], [deleted ids]]
        let claimed = as_array(&reply).and_then(|r| r.get(1)).and_then(as_array);
        Ok(claimed.and_then(|c| c.iter().find_map(parse_entry)))
    }

    /// Resets the entry's idle time: "still working on it".
    pub async fn touch(&self, consumer: &str, entry: &str) -> redis::RedisResult<()> {
        let mut conn = self.redis.connection();
        let _: Value = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(0)
            .arg(entry)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Done with the entry: acknowledged and removed.
    pub async fn ack(&self, entry: &str) -> redis::RedisResult<()> {
        let mut conn = self.redis.connection();
        let _: Value = redis::pipe()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(entry)
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(entry)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Entries in the stream: jobs waiting for a worker or running (acknowledged entries are
    /// deleted), the backlog workers scale on.
    pub async fn backlog(&self) -> redis::RedisResult<i64> {
        redis::cmd("XLEN").arg(&self.stream).query_async(&mut self.redis.connection()).await
    }

    /// Records a job that exhausted its attempts where operators watch for them.
    pub async fn dead_letter(&self, job: Uuid, tenant: Uuid, reason: &str) -> redis::RedisResult<()> {
        self.add(&self.dead, job, tenant, &[("reason", reason)]).await.map(drop)
    }
}

fn as_array(value: &Value) -> Option<&Vec<Value>> {
    match value {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `[id, [field, value, ...]]` → a delivery. An entry without a job or tenant (not written
/// by Tessera) comes back with nil ids, so that the worker acknowledges it instead of it being
/// delivered forever.
fn parse_entry(value: &Value) -> Option<Delivery> {
    let parts = as_array(value)?;
    let entry = as_text(parts.first()?)?;
    let fields = as_array(parts.get(1)?)?;
    let mut job = None;
    let mut tenant = None;
    for pair in fields.chunks(2) {
        let (Some(name), Some(value)) = (pair.first().and_then(as_text), pair.get(1).and_then(as_text)) else { continue };
        match name.as_str() {
            "job" => job = Uuid::parse_str(&value).ok(),
            "tenant" => tenant = Uuid::parse_str(&value).ok(),
            _ => {}
        }
    }
    Some(Delivery { entry, job: job.unwrap_or(Uuid::nil()), tenant: tenant.unwrap_or(Uuid::nil()) })
}
