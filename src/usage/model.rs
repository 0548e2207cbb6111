//! Usage as readers ask for it and see it: the query (a window, a granularity, an optional
//! model and version) that parses before anything is read, pages of buckets, and the tenant's
//! quotas beside them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use super::error::UsageError;
use crate::registry::model::is_plain_name;

/// The window a request reads when it names none: the last 24 hours.
const DEFAULT_WINDOW_SECS: i64 = 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    #[default]
    Hour,
    Day,
}

impl Granularity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    const fn seconds(self) -> i64 {
        match self {
            Granularity::Hour => 3600,
            Granularity::Day => 86_400,
        }
    }

    /// The longest window one request may read: a month of hours, a quarter of days.
    pub const fn max_days(self) -> i64 {
        match self {
            Granularity::Hour => 31,
            Granularity::Day => 93,
        }
    }
}

/// What to read, as the query string says it.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageFilters {
    /// `hour` (default) or `day` (UTC days, summed from hours).
    pub granularity: Option<Granularity>,
    /// Start of the window (RFC 3339), rounded down to the granularity. Default: 24 hours
    /// before `to`. The window spans at most 31 days for `hour`, 93 for `day`.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// End of the window (RFC 3339, exclusive), rounded up to the granularity. Default: now.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Only this model (by name).
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub model: Option<String>,
    /// Only this version of `model`.
    #[param(minimum = 1, maximum = 2147483647)]
    pub version: Option<i64>,
}

/// A query that parsed: a window of whole buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageQuery {
    pub granularity: Granularity,
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    pub model: Option<String>,
    pub version: Option<i32>,
}

fn parse_time(name: &'static str, value: &str) -> Result<OffsetDateTime, UsageError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|_| UsageError::InvalidTime(name))
}

/// `t` rounded to a multiple of `unit` seconds since the epoch (UTC hours and days).
fn round(name: &'static str, t: OffsetDateTime, unit: i64, up: bool) -> Result<OffsetDateTime, UsageError> {
    let secs = t.unix_timestamp();
    let down = secs.div_euclid(unit) * unit;
    let rounded = if up && (down != secs || t.nanosecond() != 0) { down + unit } else { down };
    OffsetDateTime::from_unix_timestamp(rounded).map_err(|_| UsageError::InvalidTime(name))
}

impl UsageFilters {
    pub fn parse(&self, now: OffsetDateTime) -> Result<UsageQuery, UsageError> {
        let granularity = self.granularity.unwrap_or_default();
        let to = self.to.as_deref().map(|v| parse_time("to", v)).transpose()?.unwrap_or(now);
        let from = match self.from.as_deref() {
            Some(v) => parse_time("from", v)?,
            None => to - time::Duration::seconds(DEFAULT_WINDOW_SECS),
        };
        if from >= to {
            return Err(UsageError::EmptyWindow);
        }
        if to - from > time::Duration::days(granularity.max_days()) {
            return Err(UsageError::WindowTooLong { granularity: granularity.as_str(), max_days: granularity.max_days() });
        }
        let model = self.model.as_deref().map(|m| if is_plain_name(m) { Ok(m.to_owned()) } else { Err(UsageError::InvalidModel) });
        let model = model.transpose()?;
        let version = match self.version {
            None => None,
            Some(_) if model.is_none() => return Err(UsageError::VersionWithoutModel),
            Some(v) => Some(i32::try_from(v).ok().filter(|v| *v >= 1).ok_or(UsageError::InvalidVersion)?),
        };
        let unit = granularity.seconds();
        Ok(UsageQuery {
            granularity,
            from: round("from", from, unit, false)?,
            to: round("to", to, unit, true)?,
            model,
            version,
        })
    }
}

/// Where the previous page stopped: the last bucket's (start, model, version). Pages carry
/// it as `start:version:model`, opaque to clients (`page::PageQuery`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub start: OffsetDateTime,
    pub model: String,
    pub version: i32,
}

impl Cursor {
    pub fn after(bucket: &UsageBucket) -> Self {
        Self { start: bucket.start, model: bucket.model.clone(), version: bucket.version }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.start.unix_timestamp(), self.version, self.model)
    }
}

/// Read from the query string as its text.
impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

impl crate::page::CursorKey for Cursor {
    fn schema() -> utoipa::openapi::schema::ObjectBuilder {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .max_length(Some(160))
            .pattern(Some("^-?[0-9]{1,12}:[0-9]{1,10}:[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"))
    }
}

impl FromStr for Cursor {
    type Err = UsageError;

    fn from_str(text: &str) -> Result<Self, UsageError> {
        let mut parts = text.splitn(3, ':');
        let mut next = || parts.next().ok_or(UsageError::InvalidCursor);
        // Every cursor the schema allows is a position: one beyond the instants Postgres and
        // usage know (no bucket starts before 1970) or the versions sorts before or after them
        // all.
        let (earliest, latest) = (OffsetDateTime::UNIX_EPOCH, OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT));
        let start = next()?
            .parse::<i64>()
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s.clamp(earliest.unix_timestamp(), latest.unix_timestamp())).ok());
        let version = next()?.parse::<u64>().ok().map(|v| v.min(i32::MAX as u64) as i32);
        let model = next()?.to_owned();
        match (start, version) {
            (Some(start), Some(version)) if is_plain_name(&model) => Ok(Self { start, model, version }),
            _ => Err(UsageError::InvalidCursor),
        }
    }
}

/// One model version's usage over one hour or day.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UsageBucket {
    /// Start of the hour or day (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    pub model: String,
    pub version: i32,
    /// Calls answered, successful or not.
    pub calls: i64,
    /// Rows of the successful calls' batches.
    pub rows: i64,
    /// Failed calls by problem `code`.
    #[schema(example = json!({ "invalid_input": 2 }))]
    pub errors: BTreeMap<String, i64>,
    /// Calls answered from the result cache.
    pub cache_hits: i64,
    /// Median latency of successful calls, in milliseconds (within 6.25%); null without any.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency of successful calls, in milliseconds (within 6.25%).
    pub p99_ms: Option<f64>,
    /// Request body bytes.
    pub bytes_in: i64,
    /// Response body bytes of successful calls.
    pub bytes_out: i64,
}

/// A limit and what is used of it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct QuotaUse {
    pub used: i64,
    pub limit: i64,
}

/// The tenant's quotas now, beside its usage.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Quota {
    /// Live models against `max_models`.
    pub models: QuotaUse,
    /// Stored artifacts, datasets and uploads in flight against `max_storage_bytes`.
    pub storage_bytes: QuotaUse,
    /// Requests a second the tenant may make, and its burst.
    pub rate_limit_per_second: i32,
    pub rate_limit_burst: i32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub granularity: Granularity,
    /// The window read: `from` rounded down and `to` rounded up to whole buckets.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    /// Ordered by start, model, version.
    pub buckets: Vec<UsageBucket>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    pub quota: Quota,
}

/// The usage CSV's columns.
pub const CSV_HEADER: [&str; 12] =
    ["start", "model", "version", "calls", "rows", "errors", "errors_by_code", "cache_hits", "p50_ms", "p99_ms", "bytes_in", "bytes_out"];

impl UsageBucket {
    /// One CSV record: errors as a total and as `code=n` pairs separated by `;`.
    pub fn csv_fields(&self) -> [String; 12] {
        let start = self.start.format(&Rfc3339).unwrap_or_default();
        let by_code: Vec<String> = self.errors.iter().map(|(c, n)| format!("{c}={n}")).collect();
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
        [
            start,
            self.model.clone(),
            self.version.to_string(),
            self.calls.to_string(),
            self.rows.to_string(),
            self.errors.values().sum::<i64>().to_string(),
            by_code.join(";"),
            self.cache_hits.to_string(),
            ms(self.p50_ms),
            ms(self.p99_ms),
            self.bytes_in.to_string(),
            self.bytes_out.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn filters(from: Option<&str>, to: Option<&str>, granularity: Option<Granularity>) -> UsageFilters {
        UsageFilters { granularity, from: from.map(Into::into), to: to.map(Into::into), ..Default::default() }
    }

    #[test]
    fn windows_round_out_to_whole_buckets() {
        let now = datetime!(2026-12-06 17:45:10 UTC);
        let q = UsageFilters::default().parse(now).unwrap();
        assert_eq!((q.from, q.to), (datetime!(2026-12-05 17:00 UTC), datetime!(2026-12-06 18:00 UTC)));
        let q = filters(Some("2026-12-01T10:30:00+02:00"), Some("2026-12-03T00:00:00Z"), Some(Granularity::Day)).parse(now).unwrap();
        assert_eq!((q.from, q.to), (datetime!(2026-12-01 00:00 UTC), datetime!(2026-12-03 00:00 UTC)));
    }

    #[test]
    fn bad_windows_are_refused() {
        let now = datetime!(2026-12-06 17:45:10 UTC);
        let err = |f: UsageFilters| f.parse(now).unwrap_err().to_string();
        assert!(err(filters(Some("yesterday"), None, None)).contains("`from`"));
        assert!(err(filters(None, Some("2026-13-01T00:00:00Z"), None)).contains("`to`"));
        assert!(err(filters(Some("2026-12-02T00:00:00Z"), Some("2026-12-01T00:00:00Z"), None)).contains("before"));
        assert!(err(filters(Some("2026-10-01T00:00:00Z"), Some("2026-12-01T00:00:00Z"), None)).contains("31 days"));
        assert!(filters(Some("2026-10-01T00:00:00Z"), Some("2026-12-01T00:00:00Z"), Some(Granularity::Day)).parse(now).is_ok());
        assert!(err(filters(Some("2026-01-01T00:00:00Z"), Some("2026-12-01T00:00:00Z"), Some(Granularity::Day))).contains("93 days"));
        // The last representable instant cannot round up to a whole day.
        assert!(filters(Some("9999-12-31T00:00:00Z"), Some("9999-12-31T23:59:59Z"), Some(Granularity::Day)).parse(now).is_err());
        let named = |model: &str, version: Option<i64>| UsageFilters { model: Some(model.into()), version, ..Default::default() }.parse(now);
        assert!(named("adder", Some(1)).is_ok());
        assert!(matches!(named("../x", None), Err(UsageError::InvalidModel)));
        assert!(matches!(named("adder", Some(0)), Err(UsageError::InvalidVersion)));
        assert!(matches!(named("adder", Some(1 << 40)), Err(UsageError::InvalidVersion)));
        let version_alone = UsageFilters { version: Some(1), ..Default::default() }.parse(now);
        assert!(matches!(version_alone, Err(UsageError::VersionWithoutModel)));
    }

    #[test]
    fn cursors_round_trip_and_forgeries_are_refused() {
        let cursor = Cursor { start: datetime!(2026-12-06 17:00 UTC), model: "a.b-c_d".into(), version: 7 };
        assert_eq!(cursor.to_string().parse::<Cursor>().unwrap(), cursor);
        for bad in ["", "1:2", "x:1:m", "1:x:m", "1:1:../m", "1:1:"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }
}
