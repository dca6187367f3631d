//! The HTTP client: one method per endpoint.

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use kvstore_core::wire::{DeleteResult, Entry, ErrorBody, ListPage, PutResult, RestoreResult};
use kvstore_core::Condition;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderValue, ACCEPT, IF_MATCH, IF_NONE_MATCH};
use reqwest::Response;

use crate::watch::{self, Events, Watch, WatchOptions};
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

/// A client of one kvstore server. Cheap to clone; share one per program.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    /// `Bearer <token>`, sent with every request and watch.
    pub(crate) authorization: Option<HeaderValue>,
    /// TLS settings for `https://` (shared by requests and watches).
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// A client of the server at `url`, e.g. `http://localhost:5000` or
    /// `https://kv.example:5000` (verified against the system's roots; see
    /// [`Client::with_ca_pem`] for a private CA).
    pub fn new(url: &str) -> Result<Client, Error> {
        let base = url.trim_end_matches('/').to_string();
        let https = base.starts_with("https://");
        if !(base.starts_with("http://") || https) || base.len() < 8 {
            return Err(Error::InvalidUrl(url.to_string()));
        }
        tls::install_crypto_provider();
        let tls = if https {
            Some(Arc::new(tls::config(None)?))
        } else {
            None
        };
        let http = build_http(None, tls.as_deref())?;
        Ok(Client {
            http,
            base,
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

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    pub(crate) fn key_url(&self, key: &str) -> String {
        // URL libraries drop `.` and `..` path segments (even percent-encoded ones),
        // so a key with such a segment travels as one segment, `/` encoded.
        let set = if key.split('/').any(|s| s == "." || s == "..") {
            &SEGMENT
        } else {
            PATH
        };
        format!("{}/v1/kv/{}", self.base, utf8_percent_encode(key, set))
    }

    /// The value of `key` ([`Error::NotFound`] if absent).
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, Error> {
        let res = self.http.get(self.key_url(key)).send().await?;
        let res = check(res, key).await?;
        Ok(res.bytes().await?.to_vec())
    }

    /// The value of `key` with its revisions.
    pub async fn get_entry(&self, key: &str) -> Result<Entry, Error> {
        let res = self
            .http
            .get(self.key_url(key))
            .header(ACCEPT, "application/json")
            .send()
            .await?;
        decode(check(res, key).await?).await
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<PutResult, Error> {
        let res = self
            .http
            .put(self.key_url(key))
            .body(value.into())
            .send()
            .await?;
        decode(check(res, key).await?).await
    }

    /// Sets `key` to `value` only if `condition` holds, else
    /// [`Error::PreconditionFailed`] with the key's current revision.
    pub async fn put_if(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        condition: Condition,
    ) -> Result<PutResult, Error> {
        let req = self.http.put(self.key_url(key)).body(value.into());
        let res = with_condition(req, condition).send().await?;
        decode(check(res, key).await?).await
    }

    /// Deletes `key` ([`Error::NotFound`] if absent).
    pub async fn delete(&self, key: &str) -> Result<DeleteResult, Error> {
        let res = self.http.delete(self.key_url(key)).send().await?;
        decode(check(res, key).await?).await
    }

    /// Deletes `key` only if `condition` holds.
    pub async fn delete_if(&self, key: &str, condition: Condition) -> Result<DeleteResult, Error> {
        let req = self.http.delete(self.key_url(key));
        let res = with_condition(req, condition).send().await?;
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
        let mut url = format!("{}/v1/kv?prefix={}", self.base, query_value(prefix));
        if let Some(limit) = limit {
            url.push_str(&format!("&limit={limit}"));
        }
        if let Some(after) = after {
            url.push_str(&format!("&after={}", query_value(after)));
        }
        let res = self.http.get(url).send().await?;
        decode(check(res, prefix).await?).await
    }

    /// Every entry under `prefix`, following the pages.
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<Entry>, Error> {
        let mut entries = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list(prefix, after.as_deref(), Some(1000)).await?;
            entries.extend(page.entries);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(entries),
            }
        }
    }

    /// A consistent export of every entry under `prefix` at one revision, as the
    /// NDJSON snapshot format (a header line, then one entry per line), in chunks.
    pub async fn export(
        &self,
        prefix: &str,
    ) -> Result<impl Stream<Item = Result<bytes::Bytes, Error>>, Error> {
        use futures_util::StreamExt;
        let url = format!("{}/v1/snapshot?prefix={}", self.base, query_value(prefix));
        let res = check(self.http.get(url).send().await?, prefix).await?;
        Ok(res.bytes_stream().map(|chunk| chunk.map_err(Error::from)))
    }

    /// Restores a snapshot made by [`Client::export`] into the server, whose store
    /// must be empty (else a `store_not_empty` [`Error::BadRequest`]).
    pub async fn restore(&self, snapshot: impl Into<Vec<u8>>) -> Result<RestoreResult, Error> {
        self.restore_body(reqwest::Body::from(snapshot.into()))
            .await
    }

    /// [`Client::restore`] from a stream of chunks, sent as they come: a snapshot
    /// larger than memory restores without being held whole.
    pub async fn restore_stream<S, E>(&self, chunks: S) -> Result<RestoreResult, Error>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.restore_body(reqwest::Body::wrap_stream(chunks)).await
    }

    async fn restore_body(&self, body: reqwest::Body) -> Result<RestoreResult, Error> {
        let res = self
            .http
            .post(format!("{}/v1/snapshot", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send()
            .await?;
        decode(check(res, "").await?).await
    }

    /// The store's current revision, if the server is healthy.
    pub async fn health(&self) -> Result<u64, Error> {
        #[derive(serde::Deserialize)]
        struct Health {
            revision: u64,
        }
        let res = self
            .http
            .get(format!("{}/healthz", self.base))
            .send()
            .await?;
        let health: Health = decode(check(res, "").await?).await?;
        Ok(health.revision)
    }

    /// Every change under `prefix` from now on, in revision order. The stream
    /// reconnects by itself after a dropped connection and resumes where it left
    /// off, so each change arrives exactly once; it ends only with an error that
    /// cannot be retried (e.g. [`Error::Compacted`]).
    pub fn watch(&self, prefix: &str) -> Events {
        Events::new(self.watch_with(WatchOptions {
            prefix: prefix.to_string(),
            ..WatchOptions::default()
        }))
    }

    /// A watch with every option: start revision, initial state, reconnection.
    pub fn watch_with(&self, options: WatchOptions) -> Watch {
        watch::Watch::new(self.clone(), options)
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
