//! Redis: one multiplexed connection that reconnects by itself, and the key namespace.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisSettings;

/// Cheap to clone; every clone shares one multiplexed connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    client: redis::Client,
    prefix: std::sync::Arc<str>,
}

impl RedisStore {
    /// Connects lazily: start-up does not wait for Redis, and a lost connection is
    /// re-established in the background with exponential backoff.
    pub fn connect_lazy(settings: &RedisSettings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout()))
            .set_response_timeout(Some(settings.response_timeout()))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self { connection, client, prefix: settings.key_prefix.as_str().into() })
    }

    /// For connections of their own (blocking reads), without the shared response timeout.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Builds `<prefix>:<part>:<part>…`. Every Redis key Tessera uses goes through here, so a
    /// deployment (or a test) owns exactly the keys under its prefix.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = String::with_capacity(self.prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>());
        key.push_str(&self.prefix);
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `PING` within `timeout`: the readiness probe.
    pub async fn ping(&self, timeout: Duration) -> Result<(), String> {
        let mut connection = self.connection();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        match tokio::time::timeout(timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        }
    }
}
