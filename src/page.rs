//! The one list convention: keyset pagination. A list is sorted by one unique key; a page asks
//! for at most `limit` items after the key of the previous page's last item, carried by the
//! client as an opaque cursor. Pages are stable under inserts and deletes, and cost the same
//! however deep the client reads.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{Code, ErrorCode};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// `?cursor=&limit=` of every list endpoint.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// `next_cursor` of the previous page; absent for the first page.
    #[param(min_length = 1, max_length = 512)]
    pub cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
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

impl PageQuery {
    pub fn parse<K: FromStr>(&self) -> Result<PageRequest<K>, PageError> {
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(n) if (1..=i64::from(MAX_LIMIT)).contains(&n) => n as u32,
            Some(_) => return Err(PageError::Limit),
        };
        let after = self
            .cursor
            .as_deref()
            .map(|c| {
                URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .and_then(|key| key.parse().ok())
                    .ok_or(PageError::Cursor)
            })
            .transpose()?;
        Ok(PageRequest { after, limit })
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
        let next_cursor = if more { rows.last().map(|last| URL_SAFE_NO_PAD.encode(key(last).to_string())) } else { None };
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

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next_cursor: self.next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(cursor: Option<&str>, limit: Option<i64>) -> PageQuery {
        PageQuery { cursor: cursor.map(str::to_owned), limit }
    }

    #[test]
    fn limits_outside_the_documented_range_are_refused() {
        for bad in [0, -1, 1001, i64::MAX, i64::MIN] {
            assert!(matches!(query(None, Some(bad)).parse::<i64>(), Err(PageError::Limit)), "{bad}");
        }
        assert_eq!(query(None, None).parse::<i64>().unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(query(None, Some(1000)).parse::<i64>().unwrap().limit, 1000);
    }

    #[test]
    fn a_cursor_carries_the_last_key_and_nothing_else_is_accepted() {
        let request = query(None, Some(2)).parse::<i64>().unwrap();
        let page = request.finish(vec![10_i64, 20, 30], |n| *n);
        assert_eq!(page.items, vec![10, 20]);
        let next = query(page.next_cursor.as_deref(), Some(2)).parse::<i64>().unwrap();
        assert_eq!(next.after, Some(20));
        let last = next.finish(vec![30_i64], |n| *n);
        assert_eq!(last.next_cursor, None);
        for forged in ["", "!!", "bm90IGEgbnVtYmVy", "%00"] {
            assert!(matches!(query(Some(forged), None).parse::<i64>(), Err(PageError::Cursor)), "{forged}");
        }
        assert!(query(Some("bm90IGEgbnVtYmVy"), None).parse::<String>().is_ok());
    }
}
