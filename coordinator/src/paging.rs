//! Pages of list calls: every list RPC returns at most a page of entries and a token for
//! the next, so no list can grow past a message limit (red team: 3,000 questions with
//! 2,000-character titles once made every steward's pending list undecodable).
//!
//! A token is the hex of the last entry's sort key; the next page starts after it. Keys
//! are the list's own order (a row id, a name), so pages neither repeat nor skip entries
//! when new ones arrive between calls.

use tonic::Status;

/// Entries per page when the caller asks for none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// Most entries per page; larger requests get this many.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// One page asked for: how many entries, after which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Entries wanted (1 to [`MAX_PAGE_SIZE`]).
    pub size: usize,
    /// The sort key the page starts after; `None` for the first page.
    pub after: Option<String>,
}

impl PageRequest {
    /// Reads a request's `page_size` and `page_token`.
    pub fn parse(page_size: u32, page_token: &str) -> Result<Self, Status> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        } as usize;
        let after = if page_token.is_empty() {
            None
        } else {
            let bad = || {
                Status::invalid_argument(
                    "page_token is not one this coordinator gave; ask again without it",
                )
            };
            let bytes = hex::decode(page_token).map_err(|_| bad())?;
            Some(String::from_utf8(bytes).map_err(|_| bad())?)
        };
        Ok(PageRequest { size, after })
    }

    /// Rows to fetch: one more than the page, to know whether another page follows.
    pub fn fetch(&self) -> i64 {
        self.size as i64 + 1
    }

    /// The key as a row id, for lists in row order; `first` on the first page.
    pub fn after_row(&self, first: i64) -> Result<i64, Status> {
        match &self.after {
            None => Ok(first),
            Some(key) => key.parse().map_err(|_| {
                Status::invalid_argument(
                    "page_token is not one this coordinator gave; ask again without it",
                )
            }),
        }
    }

    /// Cuts `rows` (fetched with [`PageRequest::fetch`]) to the page and returns the
    /// token of the next page, empty when this is the last.
    pub fn finish<T>(&self, rows: &mut Vec<T>, key: impl Fn(&T) -> String) -> String {
        if rows.len() <= self.size {
            return String::new();
        }
        rows.truncate(self.size);
        rows.last()
            .map(|last| hex::encode(key(last)))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(PageRequest::parse(0, "").expect("first").size, 100);
        assert_eq!(PageRequest::parse(5, "").expect("five").size, 5);
        assert_eq!(PageRequest::parse(u32::MAX, "").expect("capped").size, 1000);
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        let page = PageRequest::parse(2, "").expect("first");
        let mut rows = vec![1, 2, 3];
        let token = page.finish(&mut rows, |row| row.to_string());
        assert_eq!(rows, [1, 2]);
        let next = PageRequest::parse(2, &token).expect("next");
        assert_eq!(next.after_row(0).expect("row"), 2);
        let mut last = vec![3];
        assert_eq!(next.finish(&mut last, |row| row.to_string()), "");
        for foreign in ["zz", "ff", "\u{1b}[2K"] {
            let refused = PageRequest::parse(1, foreign).and_then(|p| p.after_row(0));
            assert_eq!(
                refused.expect_err(foreign).code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
