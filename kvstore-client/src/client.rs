//! The HTTP client: one method per endpoint.

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use kvstore_core::wire::{DeleteResult, Entry, ErrorBody, ListPage, PutResult, RestoreResult};
use kvstore_core::Condition;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderValue, ACCEPT, IF_MATCH, IF_NONE_MATCH};
use reqwest::{Method, Response};

use crate::endpoints::Endpoints;
use crate::{tls, Error};

/// Characters left as they are in a key put into a URL path (`/` stays readable).
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Like [`PATH`] but with `/` encoded too.
const SEGMENT: AsciiSet = PATH.add(b'/');

/// Characters left as they are in a query value.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes `s` for a query string.
pub(crate) fn query_value(s: &str) -> String {
    utf8_percent_encode(s, QUERY).to_string()
}

/// A client of a kvstore server, or of several interchangeable replicas of one
/// store (kvstore-server processes over one etcd cluster). Cheap to clone; share
/// one per program: clones share the replica in use.
///
/// # Several servers
///
/// Given several URLs, the client sends each request to the one in use (the first
/// at the start). When it cannot reach it (connection refused, reset, timed out:
/// not an HTTP error answer, which is the server's word and is returned as it is),
/// it moves on to the next, in order and round, and keeps using the one that
/// answered. What is sent again, after the same rule as etcd's `clientv3`:
///
/// - reads ([`Client::get`], [`Client::list`], [`Client::health`],
///   [`Client::export`]) go to the next server after any connection failure:
///   reading twice changes nothing;
/// - writes ([`Client::put`], [`Client::put_if`], [`Client::delete`],
///   [`Client::delete_if`], [`Client::restore`]) go to the next server only when
///   the connection could not be opened, so the request surely never left. A
///   connection that breaks after the request was sent gives
///   [`Error::Connection`] saying the write may or may not have been applied: a
///   put sent again would make a second revision (and a second event for every
///   watcher), a create-only put or a compare-and-swap would fail on its own
///   first success. Read the key back (or use a condition) to find out.
///
/// Watches move the same way and resume from the last revision they delivered
/// (revisions are the cluster's, so any replica can resume them): see
/// [`Client::watch`].
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) endpoints: Arc<Endpoints>,
    /// `Bearer <token>`, sent with every request and watch.
    pub(crate) authorization: Option<HeaderValue>,
    /// TLS settings for `https://` (shared by requests and watches).
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// What may be sent again to the next server after a connection failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// A read: after any connection failure.
    Read,
    /// A write: only when the connection was never opened.
    Write,
}

impl Client {
    /// A client of the server at `url`, e.g. `http://localhost:5000` or
    /// `https://kv.example:5000` (verified against the system's roots; see
    /// [`Client::with_ca_pem`] for a private CA). A comma-separated list
    /// (`http://a:5000,http://b:5000`) gives a client of several replicas, as
    /// [`Client::with_urls`] does.
    pub fn new(url: &str) -> Result<Client, Error> {
        Self::with_urls([url])
    }

    /// A client of several interchangeable servers (replicas of one store), tried
    /// in this order: see [Several servers](Client#several-servers).
    ///
    /// ```
    /// # fn main() -> Result<(), kvstore_client::Error> {
    /// let client = kvstore_client::Client::with_urls(["http://a:5000", "http://b:5000"])?;
    /// assert_eq!(client.urls(), ["http://a:5000", "http://b:5000"]);
    /// # Ok(()) }
    /// ```
    pub fn with_urls<I, S>(urls: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let endpoints = Endpoints::parse(urls)?;
        tls::install_crypto_provider();
        let tls = if endpoints.any_https() {
            Some(Arc::new(tls::config(None)?))
        } else {
            None
        };
        let http = build_http(None, tls.as_deref())?;
        Ok(Client {
            http,
            endpoints: Arc::new(endpoints),
            authorization: None,
            tls,
        })
    }

    /// The same client, authenticating every request with the bearer `token`
    /// (for servers started with an access file).
    pub fn with_token(mut self, token: &str) -> Result<Client, Error> {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Error::InvalidToken)?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        self.rebuilt()
    }

    /// The same client, trusting only the CA certificates in `pem` for `https://`
    /// (a private CA or a self-signed server certificate).
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<Client, Error> {
        self.tls = Some(Arc::new(tls::config(Some(pem))?));
        self.rebuilt()
    }

    /// [`Client::with_ca_pem`] with the certificates read from a file.
    pub fn with_ca_file(self, path: impl AsRef<std::path::Path>) -> Result<Client, Error> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| Error::Tls(format!("cannot read {}: {e}", path.display())))?;
        self.with_ca_pem(&pem)
    }

    /// Rebuilds the HTTP client for the current settings.
    fn rebuilt(mut self) -> Result<Client, Error> {
        self.http = build_http(self.authorization.as_ref(), self.tls.as_deref())?;
        Ok(self)
    }

    /// The base URL of the server in use.
    pub fn url(&self) -> &str {
        self.endpoints.current()
    }

    /// Every server's base URL, in the order they are tried.
    pub fn urls(&self) -> &[String] {
        self.endpoints.all()
    }

    /// Sends the request `build` makes for a base URL to the server in use, and on
    /// a connection failure to the next ones (each once), as `resend` allows.
    pub(crate) async fn send(
        &self,
        resend: Resend,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Response, Error> {
        let count = self.endpoints.len();
        let mut tried = 0;
        for (index, base) in self.endpoints.order() {
            tried += 1;
            let e = match build(base).send().await {
                Ok(res) => {
                    self.endpoints.answered(index);
                    return Ok(res);
                }
                Err(e) => e,
            };
            let unsent = e.is_connect();
            let again = unsent || (resend == Resend::Read && !e.is_builder() && !e.is_redirect());
            let error = Error::from(e);
            if !again {
                return Err(match (resend, error) {
                    (Resend::Write, Error::Connection(text)) => Error::Connection(format!(
                        "{base}: {text} (the write may or may not have been applied; \
                         it is not sent again)"
                    )),
                    (_, error) => error,
                });
            }
            self.endpoints.failed(index);
            if tried == count {
                return Err(match error {
                    Error::Connection(text) if count > 1 => Error::Connection(format!(
                        "none of {count} servers answered; {base}: {text}"
                    )),
                    error => error,
                });
            }
            log::warn!("{base} cannot be reached ({error}); trying the next server");
        }
        // `order` yields at least one server (a client has one or more).
        Err(Error::InvalidUrl(String::new()))
    }

    /// A read sent to `path` (with its query), moving on as reads may.
    pub(crate) async fn read(
        &self,
        path: &str,
        decorate: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Response, Error> {
        self.send(Resend::Read, |base| {
            decorate(self.http.get(format!("{base}{path}")))
        })
        .await
    }

    pub(crate) fn key_path(key: &str) -> String {
        // URL libraries drop `.` and `..` path segments (even percent-encoded ones),
        // so a key with such a segment travels as one segment, `/` encoded.
        let set = if key.split('/').any(|s| s == "." || s == "..") {
            &SEGMENT
        } else {
            PATH
        };
        format!("/v1/kv/{}", utf8_percent_encode(key, set))
    }

    /// The value of `key` ([`Error::NotFound`] if absent).
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, Error> {
        let res = self.read(&Self::key_path(key), |req| req).await?;
        let res = check(res, key).await?;
        Ok(res.bytes().await?.to_vec())
    }

    /// The value of `key` with its revisions.
    pub async fn get_entry(&self, key: &str) -> Result<Entry, Error> {
        let res = self
            .read(&Self::key_path(key), |req| {
                req.header(ACCEPT, "application/json")
            })
            .await?;
        decode(check(res, key).await?).await
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<PutResult, Error> {
        self.write_key(Method::PUT, key, Some(value.into().into()), None)
            .await
    }

    /// Sets `key` to `value` only if `condition` holds, else
    /// [`Error::PreconditionFailed`] with the key's current revision.
    pub async fn put_if(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        condition: Condition,
    ) -> Result<PutResult, Error> {
        self.write_key(Method::PUT, key, Some(value.into().into()), Some(condition))
            .await
    }

    /// Deletes `key` ([`Error::NotFound`] if absent).
    pub async fn delete(&self, key: &str) -> Result<DeleteResult, Error> {
        self.write_key(Method::DELETE, key, None, None).await
    }

    /// Deletes `key` only if `condition` holds.
    pub async fn delete_if(&self, key: &str, condition: Condition) -> Result<DeleteResult, Error> {
        self.write_key(Method::DELETE, key, None, Some(condition))
            .await
    }

    /// A put or delete of `key`, decoded.
    async fn write_key<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        key: &str,
        body: Option<bytes::Bytes>,
        condition: Option<Condition>,
    ) -> Result<T, Error> {
        let path = Self::key_path(key);
        let res = self
            .send(Resend::Write, |base| {
                let mut req = self.http.request(method.clone(), format!("{base}{path}"));
                if let Some(body) = &body {
                    req = req.body(body.clone());
                }
                match condition {
                    Some(condition) => with_condition(req, condition),
                    None => req,
                }
            })
            .await?;
        decode(check(res, key).await?).await
    }

    /// One page of the entries under `prefix`, in key order, starting after the key
    /// `after`: at most `limit` (the server's default, 100, when `None`). The
    /// arguments come in the order of [`kvstore_core::Storage::list`].
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListPage, Error> {
        self.list_page(prefix, after, limit, None).await
    }

    /// One page of a listing, now or as the store was at `revision`.
    pub(crate) async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
        revision: Option<u64>,
    ) -> Result<ListPage, Error> {
        let mut path = format!("/v1/kv?prefix={}", query_value(prefix));
        if let Some(revision) = revision {
            path.push_str(&format!("&revision={revision}"));
        }
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        if let Some(after) = after {
            path.push_str(&format!("&after={}", query_value(after)));
        }
        let res = self.read(&path, |req| req).await?;
        decode(check(res, prefix).await?).await
    }

    /// Every entry under `prefix`, following the pages, all read at the first
    /// page's revision (a server without `continue` tokens reads each page now).
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<Entry>, Error> {
        let mut entries = Vec::new();
        let mut page = self.list(prefix, None, Some(1000)).await?;
        loop {
            entries.extend(std::mem::take(&mut page.entries));
            page = match (&page.continue_token, &page.next) {
                (Some(token), _) => self.list_continue(prefix, token, Some(1000)).await?,
                (None, Some(next)) => self.list(prefix, Some(next), Some(1000)).await?,
                (None, None) => return Ok(entries),
            };
        }
    }

    /// A consistent export of every entry under `prefix` at one revision, as the
    /// NDJSON snapshot format (a header line, then one entry per line), in chunks.
    pub async fn export(
        &self,
        prefix: &str,
    ) -> Result<impl Stream<Item = Result<bytes::Bytes, Error>>, Error> {
        use futures_util::StreamExt;
        let path = format!("/v1/snapshot?prefix={}", query_value(prefix));
        let res = check(self.read(&path, |req| req).await?, prefix).await?;
        Ok(res.bytes_stream().map(|chunk| chunk.map_err(Error::from)))
    }

    /// Restores a snapshot made by [`Client::export`] into the server, whose store
    /// must be empty (else a `store_not_empty` [`Error::BadRequest`]).
    pub async fn restore(&self, snapshot: impl Into<Vec<u8>>) -> Result<RestoreResult, Error> {
        let snapshot = bytes::Bytes::from(snapshot.into());
        let res = self
            .send(Resend::Write, |base| {
                self.restore_request(base, reqwest::Body::from(snapshot.clone()))
            })
            .await?;
        decode(check(res, "").await?).await
    }

    /// [`Client::restore`] from a stream of chunks, sent as they come: a snapshot
    /// larger than memory restores without being held whole. The stream can be
    /// sent once only, so it goes to the server in use and to no other.
    pub async fn restore_stream<S, E>(&self, chunks: S) -> Result<RestoreResult, Error>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let res = self
            .restore_request(self.url(), reqwest::Body::wrap_stream(chunks))
            .send()
            .await?;
        decode(check(res, "").await?).await
    }

    fn restore_request(&self, base: &str, body: reqwest::Body) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{base}/v1/snapshot"))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body)
    }

    /// The store's current revision, if the server is healthy.
    pub async fn health(&self) -> Result<u64, Error> {
        #[derive(serde::Deserialize)]
        struct Health {
            revision: u64,
        }
        let res = self.read("/healthz", |req| req).await?;
        let health: Health = decode(check(res, "").await?).await?;
        Ok(health.revision)
    }
}

/// The HTTP client for these settings. A plain-HTTP client gets a TLS setup that
/// trusts nothing, so reqwest never loads the system's roots (which a minimal
/// container may not have) for a connection that never uses them.
fn build_http(
    authorization: Option<&HeaderValue>,
    tls: Option<&rustls::ClientConfig>,
) -> Result<reqwest::Client, Error> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(reqwest::header::AUTHORIZATION, value.clone());
    }
    let tls = match tls {
        Some(config) => config.clone(),
        None => tls::trust_nothing()?,
    };
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        // Per read, not per request: a long export keeps streaming, a server that
        // stops answering does not hang the caller.
        .read_timeout(Duration::from_secs(60))
        .default_headers(headers)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| Error::Connection(e.to_string()))
}

fn with_condition(req: reqwest::RequestBuilder, condition: Condition) -> reqwest::RequestBuilder {
    match condition {
        Condition::ModRevision(rev) => req.header(IF_MATCH, format!("\"{rev}\"")),
        Condition::Absent => req.header(IF_NONE_MATCH, HeaderValue::from_static("*")),
        Condition::Exists => req.header(IF_MATCH, HeaderValue::from_static("*")),
    }
}

/// Turns an error answer into [`Error`], passing successes through.
pub(crate) async fn check(res: Response, key: &str) -> Result<Response, Error> {
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    let detail = res.json::<ErrorBody>().await.ok().map(|b| b.error);
    Err(Error::from_status(status.as_u16(), detail, key))
}

pub(crate) async fn decode<T: serde::de::DeserializeOwned>(res: Response) -> Result<T, Error> {
    let bytes = res.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
}
