//! One paging mechanism for every dialect. Each dialect reads its own
//! parameters into a [`Window`] (AIWM's `page`/`limit`, Vareon's
//! `skip`/`limit`, Contenox's `limit` and RFC 3339 cursor); one engine
//! applies it (a scope of an ordered index through `Store::page`, a time
//! series through `series::Range`, or a list already in memory); and the
//! dialect renders the page in its shape (AIWM's `{data, pagination}`,
//! the others' plain arrays).

use warden_storage::series::Range;
use warden_storage::{Millis, PageQuery, Paged, Record, StorageError, Store, past, time_sort_key};

/// Which part of a list a request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// Entries to pass over first.
    pub skip: usize,
    pub limit: usize,
    /// A cursor: only entries created strictly past this time in the
    /// reading direction (before it newest first, after it oldest first).
    pub cursor: Option<Millis>,
}

impl Window {
    /// AIWM: 1-based `page` of `limit`.
    pub fn page(page: usize, limit: usize) -> Window {
        Window {
            skip: page.saturating_sub(1).saturating_mul(limit),
            limit,
            cursor: None,
        }
    }

    /// Vareon: `skip` then `limit`.
    pub fn skip(skip: usize, limit: usize) -> Window {
        Window {
            skip,
            limit,
            cursor: None,
        }
    }

    /// Contenox: `limit` entries past the cursor (read newest first:
    /// created before it; oldest first: after it).
    pub fn cursor(cursor: Option<Millis>, limit: usize) -> Window {
        Window {
            skip: 0,
            limit,
            cursor,
        }
    }

    /// Reads the window from one scope of a creation-ordered index.
    pub fn read<T: Record>(
        &self,
        store: &Store,
        index: &str,
        scope: &str,
        descending: bool,
    ) -> Result<Paged<T>, StorageError> {
        let cursor = self.cursor.map(time_sort_key);
        store.page::<T>(&PageQuery {
            index,
            scope,
            descending,
            skip: self.skip,
            after: cursor.as_deref().map(|k| past(k, descending)),
            limit: self.limit,
        })
    }

    /// The window of a time series, newest or oldest first.
    pub fn range(&self, newest_first: bool) -> Range {
        Range {
            limit: self.limit,
            skip: self.skip,
            newest_first,
            ..Default::default()
        }
    }

    /// The window of a list already filtered and ordered in memory.
    pub fn slice<T>(&self, items: impl IntoIterator<Item = T>) -> Vec<T> {
        items.into_iter().skip(self.skip).take(self.limit).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dialect_names_the_same_window() {
        assert_eq!(Window::page(3, 20), Window::skip(40, 20));
        assert_eq!(Window::page(0, 20).skip, 0);
        assert_eq!(Window::skip(2, 3).slice(0..10), vec![2, 3, 4]);
        let w = Window::cursor(Some(5), 2);
        assert_eq!((w.skip, w.limit, w.cursor), (0, 2, Some(5)));
        let r = Window::skip(4, 7).range(true);
        assert_eq!((r.skip, r.limit, r.newest_first), (4, 7, true));
    }
}
