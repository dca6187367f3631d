//! Reads of the past: [`Client::get_at`], [`Client::list_at`] (every page of one
//! listing at one revision) and [`Client::history`].

use futures_util::Stream;
use kvstore_core::wire::{EntryAt, HistoryPage, ListPage};
use reqwest::header::ACCEPT;

use crate::client::{check, decode, query_value};
use crate::{Client, Error};

/// Where the next page of a [`Client::list_at`] starts.
enum Cursor {
    /// The first page: at this revision, or now.
    First(Option<u64>),
    /// A page after the one that gave this `continue` token.
    Continue(String),
    Done,
}

impl Client {
    /// `key` as it was at `revision`: its value, revisions, version and lease then,
    /// with the revision read at and the store's current one
    /// ([`Error::NotFound`] when it did not exist then; [`Error::Compacted`]
    /// below the oldest revision kept; a `future_revision` [`Error::BadRequest`]
    /// past the store's).
    pub async fn get_at(&self, key: &str, revision: u64) -> Result<EntryAt, Error> {
        let path = format!("{}?revision={revision}", Self::key_path(key));
        let res = self
            .read(&path, |req| req.header(ACCEPT, "application/json"))
            .await?;
        decode(check(res, key).await?).await
    }

    /// One page of the entries under `prefix` as they were at `revision`, after
    /// the key `after`; see [`Client::list`].
    pub async fn list_page_at(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
        revision: u64,
    ) -> Result<ListPage, Error> {
        self.list_page(prefix, after, limit, Some(revision)).await
    }

    /// The page that follows the one whose `continue` token this is, read at that
    /// page's revision.
    pub async fn list_continue(
        &self,
        prefix: &str,
        token: &str,
        limit: Option<usize>,
    ) -> Result<ListPage, Error> {
        let mut path = format!(
            "/v1/kv?prefix={}&continue={}",
            query_value(prefix),
            query_value(token)
        );
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        let res = self.read(&path, |req| req).await?;
        decode(check(res, prefix).await?).await
    }

    /// Every page of the entries under `prefix` as they were at one revision:
    /// `revision`, or the store's when the first page is read (`None`). Together
    /// the pages are exactly the store at that revision, whatever is written
    /// meanwhile; [`Error::Compacted`] when that revision is compacted before the
    /// last page is read (list again). Pages of `limit` entries (the server's
    /// default, 100, when `None`).
    ///
    /// ```no_run
    /// # async fn f(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// use futures_util::TryStreamExt;
    /// let pages: Vec<_> = client.list_at("app/", None, Some(500)).try_collect().await?;
    /// let revision = pages.first().map(|p| p.revision);
    /// # Ok(()) }
    /// ```
    pub fn list_at(
        &self,
        prefix: &str,
        revision: Option<u64>,
        limit: Option<usize>,
    ) -> impl Stream<Item = Result<ListPage, Error>> + Send + 'static {
        let client = self.clone();
        let prefix = prefix.to_string();
        futures_util::stream::unfold(Cursor::First(revision), move |cursor| {
            let (client, prefix) = (client.clone(), prefix.clone());
            async move {
                let page = match cursor {
                    Cursor::Done => return None,
                    Cursor::First(None) => client.list(&prefix, None, limit).await,
                    Cursor::First(Some(revision)) => {
                        client.list_page_at(&prefix, None, limit, revision).await
                    }
                    Cursor::Continue(token) => client.list_continue(&prefix, &token, limit).await,
                };
                Some(match page {
                    Ok(page) => {
                        let next = match &page.continue_token {
                            Some(token) => Cursor::Continue(token.clone()),
                            None => Cursor::Done,
                        };
                        (Ok(page), next)
                    }
                    Err(e) => (Err(e), Cursor::Done),
                })
            }
        })
    }

    /// One page of `key`'s changes after revision `after` (from the oldest kept
    /// when `None`), oldest first: each put with the value, version and lease it
    /// left, each delete. Pass the page's `next` as `after` for the following one.
    pub async fn history(
        &self,
        key: &str,
        after: Option<u64>,
        limit: Option<usize>,
    ) -> Result<HistoryPage, Error> {
        let mut query = Vec::new();
        if let Some(after) = after {
            query.push(format!("after={after}"));
        }
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        let mut path = Self::key_path(key).replacen("/v1/kv/", "/v1/history/", 1);
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        let res = self.read(&path, |req| req).await?;
        decode(check(res, key).await?).await
    }
}
