//! The one list convention: keyset pagination. A list is sorted by one unique key; a page asks
//! for at most `limit` items after the key of the previous page's last item, which the client
//! carries back as `cursor`. Pages are stable under inserts and deletes, and cost the same
//! however deep the client reads. The cursor's schema is the key's own (a UUID, a name, a
//! number), so every cursor the schema allows names a position and none is refused.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::Required;

use crate::error::{Code, ErrorCode};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// Longest text key (an email address at most).
const MAX_TEXT_KEY: usize = 320;

/// A list's sort key, as a cursor.
pub trait CursorKey: DeserializeOwned + std::fmt::Display {
    /// The cursor parameter's schema.
    fn schema() -> ObjectBuilder;

    fn valid(&self) -> bool {
        true
    }
}

impl CursorKey for String {
    fn schema() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_TEXT_KEY))
            .pattern(Some("^[^\\u0000-\\u001f]*$"))
    }

    /// No key (a slug, an email address, a model name) holds a control character.
    fn valid(&self) -> bool {
        !self.is_empty() && self.chars().count() <= MAX_TEXT_KEY && !self.chars().any(|c| c < ' ')
    }
}

impl CursorKey for uuid::Uuid {
    fn schema() -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
    }
}

impl CursorKey for i32 {
    fn schema() -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::Integer).format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
    }
}

impl CursorKey for i64 {
    fn schema() -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::Integer).format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
    }
}

/// `?cursor=&limit=` of a list sorted by a key of type `K`.
#[derive(Debug, Deserialize)]
#[serde(bound = "K: CursorKey")]
pub struct PageQuery<K> {
    pub cursor: Option<K>,
    pub limit: Option<i64>,
}

impl<K: CursorKey> utoipa::IntoParams for PageQuery<K> {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let cursor = ParameterBuilder::new()
            .name("cursor")
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some("`next_cursor` of the previous page; absent for the first page."))
            .schema(Some(K::schema()))
            .build();
        let limit = ParameterBuilder::new()
            .name("limit")
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some(format!("Items per page, 1-{MAX_LIMIT} (default {DEFAULT_LIMIT}).")))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(1))
                    .maximum(Some(MAX_LIMIT)),
            ))
            .build();
        vec![cursor, limit]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("`limit` must be between 1 and {MAX_LIMIT}")]
    Limit,
    #[error("`cursor` is not one this list returned")]
    Cursor,
}

impl ErrorCode for PageError {
    fn code(&self) -> Code {
        Code::InvalidQuery
    }
}

/// A validated page request over a list sorted by a key of type `K`.
#[derive(Debug, Clone)]
pub struct PageRequest<K> {
    pub after: Option<K>,
    pub limit: u32,
}

impl<K> Default for PageRequest<K> {
    fn default() -> Self {
        Self { after: None, limit: DEFAULT_LIMIT }
    }
}

impl<K: CursorKey + Clone> PageQuery<K> {
    pub fn parse(&self) -> Result<PageRequest<K>, PageError> {
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(n) if (1..=i64::from(MAX_LIMIT)).contains(&n) => n as u32,
            Some(_) => return Err(PageError::Limit),
        };
        if self.cursor.as_ref().is_some_and(|c| !c.valid()) {
            return Err(PageError::Cursor);
        }
        Ok(PageRequest { after: self.cursor.clone(), limit })
    }
}

impl<K> PageRequest<K> {
    /// Rows to fetch: one more than the page, to learn whether another follows.
    pub fn fetch(&self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// The page made of rows fetched with `fetch()`, `key` giving each item's sort key.
    pub fn finish<T, D: std::fmt::Display>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> D) -> Page<T> {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let next_cursor = if more { rows.last().map(|last| key(last).to_string()) } else { None };
        Page { items: rows, next_cursor }
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query<K>(cursor: Option<K>, limit: Option<i64>) -> PageQuery<K> {
        PageQuery { cursor, limit }
    }

    #[test]
    fn limits_outside_the_documented_range_are_refused() {
        for bad in [0, -1, 1001, i64::MAX, i64::MIN] {
            assert!(matches!(query::<i64>(None, Some(bad)).parse(), Err(PageError::Limit)), "{bad}");
        }
        assert_eq!(query::<i64>(None, None).parse().unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(query::<i64>(None, Some(1000)).parse().unwrap().limit, 1000);
    }

    #[test]
    fn a_cursor_carries_the_last_key() {
        let request = query::<i64>(None, Some(2)).parse().unwrap();
        let page = request.finish(vec![10_i64, 20, 30], |n| *n);
        assert_eq!(page.items, vec![10, 20]);
        assert_eq!(page.next_cursor.as_deref(), Some("20"));
        let next = query(page.next_cursor.map(|c| c.parse::<i64>().unwrap()), Some(2)).parse().unwrap();
        assert_eq!(next.after, Some(20));
        assert_eq!(next.finish(vec![30_i64], |n| *n).next_cursor, None);
    }

    #[test]
    fn text_cursors_are_bounded_like_their_schema() {
        assert!(matches!(query(Some(String::new()), None).parse(), Err(PageError::Cursor)));
        assert!(matches!(query(Some("x".repeat(MAX_TEXT_KEY + 1)), None).parse(), Err(PageError::Cursor)));
        assert!(query(Some("é".repeat(MAX_TEXT_KEY)), None).parse().is_ok());
    }
}
