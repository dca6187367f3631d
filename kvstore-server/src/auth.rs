//! Bearer tokens with roles: which key prefixes a token may read and write.
//!
//! The access file (TOML) names roles and tokens. A token is given either as its
//! SHA-256 hash (`sha256 = "hex"`, so the file carries no secret) or in clear
//! (`token = "..."`); either way only hashes are kept in memory and compared, in
//! constant time. Tokens never appear in logs.
//!
//! ```toml
//! [roles.reader]
//! read = ["app/"]
//!
//! [roles.admin]
//! read = [""]          # "" is every key
//! write = [""]
//!
//! [[tokens]]
//! name = "dashboard"
//! role = "reader"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//!
//! [[tokens]]
//! name = "deploy"
//! role = "admin"
//! token = "s3cret-deploy-token"
//! ```

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::path::Path;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header::{AUTHORIZATION, HOST, ORIGIN};
use actix_web::{web, FromRequest, HttpRequest};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::error::ApiError;

/// Why an access file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessFileError {
    /// It could not be read.
    #[error("cannot read the access file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It is not valid TOML of the expected shape.
    #[error("invalid access file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRole {
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    name: String,
    role: String,
    sha256: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    #[serde(default)]
    roles: HashMap<String, FileRole>,
    #[serde(default)]
    tokens: Vec<FileToken>,
}

/// What one role may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Name of the token holding the role (for logs and errors).
    pub token_name: String,
    read: Vec<String>,
    write: Vec<String>,
}

impl Role {
    /// May read `key`.
    pub fn can_read(&self, key: &str) -> bool {
        self.read.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// May write `key`.
    pub fn can_write(&self, key: &str) -> bool {
        self.write.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// May read at least one key under `prefix`.
    pub fn can_read_some(&self, prefix: &str) -> bool {
        self.read
            .iter()
            .any(|p| p.starts_with(prefix) || prefix.starts_with(p.as_str()))
    }

    /// Prefixes, disjoint and in key order, under which lie exactly the keys under
    /// `prefix` that this role may read (none when it may read no such key).
    pub fn readable_ranges(&self, prefix: &str) -> Vec<String> {
        if self.can_read(prefix) {
            return vec![prefix.to_string()];
        }
        let mut under: Vec<&str> = self
            .read
            .iter()
            .filter(|p| p.starts_with(prefix))
            .map(String::as_str)
            .collect();
        // Sorted, a prefix comes right before the prefixes that extend it.
        under.sort_unstable();
        let mut ranges: Vec<String> = Vec::with_capacity(under.len());
        for p in under {
            if !ranges
                .last()
                .is_some_and(|last| p.starts_with(last.as_str()))
            {
                ranges.push(p.to_string());
            }
        }
        ranges
    }

    /// The key prefixes it may read (`""` is every key).
    pub fn read_prefixes(&self) -> &[String] {
        &self.read
    }

    /// The key prefixes it may write.
    pub fn write_prefixes(&self) -> &[String] {
        &self.write
    }
}

struct TokenEntry {
    hash: [u8; 32],
    role: Arc<Role>,
}

/// The loaded access file.
pub struct AccessControl {
    tokens: Vec<TokenEntry>,
}

impl AccessControl {
    /// Loads and checks the access file at `path`.
    pub fn load(path: &Path) -> Result<AccessControl, AccessFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AccessFileError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|message| AccessFileError::Invalid {
            path: name,
            message,
        })
    }

    /// Parses an access file's text.
    pub fn parse(text: &str) -> Result<AccessControl, String> {
        let file: AccessFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut tokens = Vec::with_capacity(file.tokens.len());
        for token in file.tokens {
            let role = file.roles.get(&token.role).ok_or_else(|| {
                format!(
                    "token {:?} names the unknown role {:?}",
                    token.name, token.role
                )
            })?;
            let hash = match (&token.sha256, &token.token) {
                (Some(hex_hash), None) => {
                    let bytes = hex::decode(hex_hash.trim()).map_err(|_| {
                        format!("token {:?}: sha256 must be 64 hex digits", token.name)
                    })?;
                    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                        format!("token {:?}: sha256 must be 64 hex digits", token.name)
                    })?
                }
                (None, Some(clear)) if !clear.is_empty() => Sha256::digest(clear.as_bytes()).into(),
                _ => {
                    return Err(format!(
                        "token {:?} needs exactly one of sha256 or token",
                        token.name
                    ))
                }
            };
            tokens.push(TokenEntry {
                hash,
                role: Arc::new(Role {
                    token_name: token.name,
                    read: role.read.clone(),
                    write: role.write.clone(),
                }),
            });
        }
        Ok(AccessControl { tokens })
    }

    /// The role of the bearer of `token`, if it is known. Every stored hash is
    /// compared, in constant time, so timing tells nothing about the tokens.
    pub fn role_of(&self, token: &str) -> Option<Arc<Role>> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.tokens {
            if bool::from(entry.hash.ct_eq(&presented)) {
                found = Some(entry.role.clone());
            }
        }
        found
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the file holds no token (then nobody gets in).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Who is calling: everyone (no access file) or the bearer of a known token.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The server runs without an access file.
    Open,
    /// A known token.
    Token(Arc<Role>),
}

impl Caller {
    /// May read `key`.
    pub fn can_read(&self, key: &str) -> bool {
        match self {
            Caller::Open => true,
            Caller::Token(role) => role.can_read(key),
        }
    }

    /// 403 unless the caller may read `key`.
    pub fn check_read(&self, key: &str) -> Result<(), ApiError> {
        if self.can_read(key) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this token may not read {key:?}"
            )))
        }
    }

    /// 403 unless the caller may write `key`.
    pub fn check_write(&self, key: &str) -> Result<(), ApiError> {
        match self {
            Caller::Open => Ok(()),
            Caller::Token(role) if role.can_write(key) => Ok(()),
            Caller::Token(_) => Err(ApiError::forbidden(format!(
                "this token may not write {key:?}"
            ))),
        }
    }

    /// Prefixes, disjoint and in key order, under which lie exactly the keys under
    /// `prefix` the caller may read: a listing reads these and nothing else, so no
    /// part of its answer depends on keys the caller may not read.
    pub fn readable_ranges(&self, prefix: &str) -> Vec<String> {
        match self {
            Caller::Open => vec![prefix.to_string()],
            Caller::Token(role) => role.readable_ranges(prefix),
        }
    }

    /// 403 unless the caller may read every key under `prefix` (a transaction's
    /// list, which reads a whole prefix as etcd's range does).
    pub fn check_read_all(&self, prefix: &str) -> Result<(), ApiError> {
        if self.can_read(prefix) {
            Ok(())
        } else if prefix.is_empty() {
            Err(ApiError::forbidden("this token may not read every key"))
        } else {
            Err(ApiError::forbidden(format!(
                "this token may not read every key under {prefix:?}"
            )))
        }
    }

    /// 403 unless the caller may read some key under `prefix` (what it may not
    /// read is then left out of lists and watches).
    pub fn check_read_some(&self, prefix: &str) -> Result<(), ApiError> {
        match self {
            Caller::Open => Ok(()),
            Caller::Token(role) if role.can_read_some(prefix) => Ok(()),
            Caller::Token(_) => Err(ApiError::forbidden(format!(
                "this token may not read anything under {prefix:?}"
            ))),
        }
    }
}

/// The cookie that carries the console's token (set by `POST /ui/login`).
pub const COOKIE: &str = "kv_token";
/// The header the console sends with every call; without it the cookie does not
/// authenticate a request other than GET or HEAD.
pub const CONSOLE_HEADER: &str = "x-kv-console";

/// The access file the app serves with (none: open), as the app's data: what
/// each request's [`Caller`] is read against.
#[derive(Clone, Default)]
pub struct Access(pub Option<Arc<AccessControl>>);

fn caller_of(req: &HttpRequest) -> Result<Caller, ApiError> {
    let Some(Access(access)) = req
        .app_data::<web::Data<Access>>()
        .map(|data| data.get_ref())
    else {
        return Err(ApiError::internal("no access settings in the application"));
    };
    let Some(access) = access else {
        return Ok(Caller::Open);
    };
    let token = match bearer_token(req)? {
        Some(token) => token.to_string(),
        // The console's login cookie stands in for the header (EventSource cannot
        // send one).
        None => cookie_token(req)?
            .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?,
    };
    access
        .role_of(&token)
        .map(Caller::Token)
        .ok_or_else(|| ApiError::unauthorized("unknown token"))
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case,
/// as RFC 9110 has it); `None` without the header. Two headers are refused rather
/// than one of them chosen.
fn bearer_token(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let mut headers = req.headers().get_all(AUTHORIZATION);
    let Some(header) = headers.next() else {
        return Ok(None);
    };
    if headers.next().is_some() {
        return Err(ApiError::invalid_request(
            "send one Authorization header, not several",
        ));
    }
    let bad = || ApiError::unauthorized("send Authorization: Bearer <token>");
    let value = header.to_str().map_err(|_| bad())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(bad());
    }
    Ok(Some(token.trim()))
}

/// The token in the console's cookie: on any GET or HEAD (the page's reads and its
/// `EventSource`), on other methods only with [`CONSOLE_HEADER`], which a page of
/// another origin cannot add without a CORS preflight that is never granted with
/// credentials. A request that carries the cookie and an `Origin` other than the
/// server's own is refused: browsers send the cookie on a cross-origin WebSocket
/// handshake (to which CORS does not apply) from any page of the same site.
fn cookie_token(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    if !req.method().is_safe() && !req.headers().contains_key(CONSOLE_HEADER) {
        return Ok(None);
    }
    let Some(token) = req
        .cookie(COOKIE)
        .map(|c| c.value().to_string())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    if let Some(origin) = req.headers().get(ORIGIN) {
        let own = own_origin(req);
        if own.as_deref().map(str::as_bytes) != Some(origin.as_bytes()) {
            return Err(ApiError::forbidden(format!(
                "the console's cookie is only taken from pages of this server ({}), \
                 not from the origin {}: send Authorization: Bearer <token> instead",
                own.as_deref().unwrap_or("unknown"),
                String::from_utf8_lossy(origin.as_bytes())
            )));
        }
    }
    Ok(Some(token))
}

/// The origin of the server's own pages as a browser names it in `Origin`: the
/// scheme it serves and the `Host` the request was sent to.
fn own_origin(req: &HttpRequest) -> Option<String> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    let scheme = if req.app_config().secure() {
        "https"
    } else {
        "http"
    };
    Some(format!("{scheme}://{host}"))
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(caller_of(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [roles.reader]
        read = ["app/"]
        [roles.writer]
        read = [""]
        write = ["app/"]
        [[tokens]]
        name = "r"
        role = "reader"
        sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        [[tokens]]
        name = "w"
        role = "writer"
        token = "writer-secret"
    "#;

    #[test]
    fn tokens_map_to_roles_by_hash() -> Result<(), String> {
        let access = AccessControl::parse(FILE)?;
        // sha256("test") is the reader's hash.
        let reader = access.role_of("test").ok_or("reader token")?;
        assert_eq!(reader.token_name, "r");
        assert!(
            reader.can_read("app/x") && !reader.can_read("other") && !reader.can_write("app/x")
        );
        assert!(
            reader.can_read_some("")
                && reader.can_read_some("app/x/")
                && !reader.can_read_some("b")
        );
        let writer = access.role_of("writer-secret").ok_or("writer token")?;
        assert!(writer.can_write("app/x") && !writer.can_write("other"));
        assert!(access.role_of("nope").is_none());
        Ok(())
    }

    #[test]
    fn readable_ranges_are_disjoint_sorted_and_exact() -> Result<(), String> {
        let access = AccessControl::parse(
            r#"
            [roles.some]
            read = ["b/", "app/x/", "app/", "zz", "ap", "c/d/", "c/e"]
            [[tokens]]
            name = "s"
            role = "some"
            token = "t"
            "#,
        )?;
        let role = access.role_of("t").ok_or("token")?;
        assert_eq!(role.readable_ranges(""), ["ap", "b/", "c/d/", "c/e", "zz"]);
        assert_eq!(role.readable_ranges("app/"), ["app/"]);
        assert_eq!(role.readable_ranges("app/x/y"), ["app/x/y"]);
        assert_eq!(role.readable_ranges("c/"), ["c/d/", "c/e"]);
        assert!(role.readable_ranges("d").is_empty());
        Ok(())
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let unknown_role = "[[tokens]]\nname = \"x\"\nrole = \"ghost\"\ntoken = \"t\"\n";
        assert!(AccessControl::parse(unknown_role).is_err_and(|e| e.contains("ghost")));
        let both =
            "[roles.r]\n[[tokens]]\nname = \"x\"\nrole = \"r\"\ntoken = \"t\"\nsha256 = \"00\"\n";
        assert!(AccessControl::parse(both).is_err());
        let short = "[roles.r]\n[[tokens]]\nname = \"x\"\nrole = \"r\"\nsha256 = \"abcd\"\n";
        assert!(AccessControl::parse(short).is_err_and(|e| e.contains("64 hex")));
    }
}
