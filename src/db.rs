//! Postgres: the connection pool and the embedded migrations.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseSettings;

/// Migrations are compiled into the binary, so a deployed `tessera` carries its own schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool that connects on demand: the process starts (and reports "not ready") while
/// Postgres is down, and recovers by itself once it is back.
pub fn connect_lazy(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options = settings.connect_options()?;
    let port = options.get_port();
    Ok(PgPoolOptions::new()
        .after_connect(move |conn, _| {
            Box::pin(async move {
                disable_nagle(port);
                // Fail closed: a connection whose role bypasses row-level security is never
                // used, whatever started this process. The pool retries until its acquire
                // timeout, so requests get 503 and the log names the cause.
                match privilege_violation(conn).await? {
                    None => Ok(()),
                    Some(violation) => Err(sqlx::Error::Configuration(violation.into())),
                }
            })
        })
        .max_connections(settings.max_connections)
        .min_connections(settings.min_connections)
        .acquire_timeout(settings.acquire_timeout())
        .idle_timeout(Some(Duration::from_secs(300)))
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// Why the connected role must not serve tenants' requests, if it must not: it is a superuser
/// or has BYPASSRLS or CREATEROLE (itself or through a role it belongs to), it owns (or
/// belongs to the owner of) a table in Tessera's schema or the database, or it may create
/// objects in the schema. Each of these bypasses row-level security, the second wall between
/// tenants, or is a step away from it.
pub async fn privilege_violation(conn: &mut sqlx::PgConnection) -> Result<Option<String>, sqlx::Error> {
    let (role, superuser, bypassrls, createrole, owns_database, creates_in_schema, owned): (
        String,
        bool,
        bool,
        bool,
        bool,
        bool,
        Option<String>,
    ) = sqlx::query_as(
        "SELECT current_user::text, \
           EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolsuper AND pg_has_role(current_user, r.oid, 'MEMBER')), \
           EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolbypassrls AND pg_has_role(current_user, r.oid, 'MEMBER')), \
           EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolcreaterole AND pg_has_role(current_user, r.oid, 'MEMBER')), \
           EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = current_database() \
                     AND pg_has_role(current_user, d.datdba, 'MEMBER')), \
           has_schema_privilege(current_user, current_schema(), 'CREATE'), \
           (SELECT string_agg(c.relname, ', ' ORDER BY c.relname) FROM pg_class c \
              JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm') \
               AND pg_has_role(current_user, c.relowner, 'MEMBER'))",
    )
    .fetch_one(&mut *conn)
    .await?;
    let cause = if superuser {
        "is a superuser".to_owned()
    } else if bypassrls {
        "has BYPASSRLS".to_owned()
    } else if let Some(tables) = owned {
        format!("owns Tessera's tables ({tables})")
    } else if createrole {
        "has CREATEROLE (it could grant itself the owner's role)".to_owned()
    } else if owns_database {
        "owns the database".to_owned()
    } else if creates_in_schema {
        "may create objects in Tessera's schema (it could shadow what the schema's functions call)".to_owned()
    } else {
        return Ok(None);
    };
    Ok(Some(format!(
        "database.url connects as `{role}`, which {cause} and so bypasses row-level security; \
         connect as a role that owns nothing and cannot bypass it (deploy/local/up.sh creates `tessera_app`), \
         and keep the schema owner in database.migration_url"
    )))
}

/// `tessera serve` and `tessera worker` refuse to start through a privileged role. When
/// Postgres cannot be reached yet they start anyway: every pooled connection is checked too.
pub async fn refuse_privileged_role(settings: &DatabaseSettings) -> Result<(), String> {
    use sqlx::Connection;
    let options = settings.connect_options().map_err(|e| e.to_string())?;
    let connected = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect_with(&options)).await;
    let mut conn = match connected {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            tracing::warn!(%error, "could not check the database role at start; each connection is checked when made");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!("could not check the database role at start; each connection is checked when made");
            return Ok(());
        }
    };
    let verdict = privilege_violation(&mut conn).await;
    let _ = conn.close().await;
    match verdict {
        Ok(None) => Ok(()),
        Ok(Some(violation)) => Err(violation),
        Err(error) => Err(format!("could not read the database role's privileges: {error}")),
    }
}

/// Sets TCP_NODELAY on this process's TCP connections to Postgres (`port`).
///
/// sqlx 0.9.0 connects without it (sqlx issue #4335, fixed upstream after that release). A
/// statement that leaves the client in more than one write, such as an audit batch, then
/// waits for the server's delayed ACK under Nagle's algorithm: a 40 ms stall for a statement
/// Postgres runs in 5. Called for every new pooled connection; sockets that already have it
/// are left alone. Remove once the sqlx release in use sets it itself.
fn disable_nagle(port: u16) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::{BorrowedFd, RawFd};
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        for entry in entries.flatten() {
            let is_socket = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()).filter(|_| is_socket) else {
                continue;
            };
            // SAFETY: the descriptor is borrowed only for these system calls. Were it closed
            // meanwhile, they fail (EBADF); were its number reused, the peer check below keeps
            // anything but a Postgres connection untouched.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let to_postgres = socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
                && socket.peer_addr().ok().and_then(|a| a.as_socket()).is_some_and(|a| a.port() == port);
            if to_postgres && socket.tcp_nodelay().is_ok_and(|on| !on) {
                let _ = socket.set_tcp_nodelay(true);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = port;
}

/// Applies migrations over the schema owner's connection (`database.migration_url`).
pub async fn migrate_with(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new().max_connections(1).connect_with(settings.migration_options()?).await?;
    migrate(&pool).await?;
    pool.close().await;
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.map_err(|e| anyhow::anyhow!("applying migrations failed: {e}"))
}

/// The embedded migrations the database has not applied (successfully), or applied from a
/// different text than this build's (which `migrate` itself would refuse), read through the
/// application's own role. A database without the migrations table has none applied.
pub async fn pending_migrations(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let applied: Vec<(i64, Vec<u8>)> =
        match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success").fetch_all(pool).await {
            Ok(rows) => rows,
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P01") => Vec::new(),
            Err(e) => return Err(e),
        };
    Ok(MIGRATOR
        .iter()
        .filter(|m| !applied.iter().any(|(version, checksum)| *version == m.version && checksum[..] == m.checksum[..]))
        .map(|m| m.version)
        .collect())
}

pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|e| e.is_unique_violation())
}

/// `SELECT 1` within `timeout`: the readiness probe.
pub async fn ping(pool: &PgPool, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(pool)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// Declares an enum stored as text: its one spelling per variant is used in the database (as
/// `sqlx` `Type`/`Encode`/`Decode`), by `as_str`, `parse` and `Display`. Serde attributes are
/// the caller's, and must spell the variants the same way. A row holding an unknown spelling
/// fails to decode: never silently read as some default.
#[macro_export]
macro_rules! text_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Self::parse(text).ok_or_else(|| format!("`{text}` is not a {}", stringify!($name)).into())
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut sqlx::postgres::PgArgumentBuffer) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }
    };
}
