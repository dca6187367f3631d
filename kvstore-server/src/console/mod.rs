//! The web console at `/ui/`: one page (HTML, CSS and a JavaScript module embedded
//! in the binary: no build step, nothing fetched from elsewhere) that browses,
//! edits and watches keys through the public HTTP API only.
//!
//! Besides the assets it serves the little a browser cannot do with the API alone:
//!
//! - `POST /ui/login` with `{"token": "..."}`: checks the token and sets it as the
//!   cookie [`COOKIE`] (`HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure` over TLS,
//!   gone when the browser closes). A browser's `EventSource` cannot send an
//!   `Authorization` header, so for the console the server takes the token from that
//!   cookie instead (see [`crate::auth::Caller`]), and only from the server's own
//!   origin.
//! - `POST /ui/logout`: removes the cookie.
//! - `GET /ui/session`: what the caller may read and write, so the page shows no
//!   edit controls to a read-only token (the API refuses its writes anyway).
//!
//! The cookie holds the token itself, so nothing is kept on the server: revoking a
//! token in the access file revokes its cookies, and a restart logs nobody out.
//! Script on the page cannot read it (`HttpOnly`); other sites cannot make the
//! browser send it (`SameSite=Strict`); and a request that changes anything is only
//! authenticated by it when it also carries the [`CONSOLE_HEADER`] header, which a
//! page of another origin on the same site (another port of the same host) cannot
//! add without a CORS preflight that the server never grants with credentials.

use actix_web::cookie::{time::Duration, Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::http::body::read_limited;
use crate::http::error::ApiError;
use crate::http::state::AppState;

use crate::auth::{CONSOLE_HEADER, COOKIE};

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");
const ICON: &str = include_str!("assets/icon.svg");

/// Everything the page loads comes from the server itself; no frame may embed it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Largest login body (a JSON object holding one token).
const MAX_LOGIN_BYTES: usize = 16 * 1024;

/// Mounts `/ui` (a redirect to `/ui/`), the page and its assets, and the login.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/ui")
            .route("", web::get().to(redirect))
            .route(
                "/",
                web::get().to(|| asset(INDEX, "text/html; charset=utf-8")),
            )
            .route(
                "/app.js",
                web::get().to(|| asset(APP_JS, "text/javascript; charset=utf-8")),
            )
            .route(
                "/style.css",
                web::get().to(|| asset(STYLE, "text/css; charset=utf-8")),
            )
            .route("/icon.svg", web::get().to(|| asset(ICON, "image/svg+xml")))
            .route("/session", web::get().to(session))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout)),
    );
}

async fn redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/ui/"))
        .finish()
}

async fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        // Small and embedded: revalidating costs little, and an upgraded server's
        // page is never mixed with a cached script of the old one.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(body)
}

/// What the page needs to know about its caller.
#[derive(Debug, Serialize)]
struct Session {
    /// Whether the server checks tokens at all (an access file is loaded).
    access_control: bool,
    /// The token's name in the access file.
    token: Option<String>,
    /// Key prefixes it may read (`""`: every key).
    read: Vec<String>,
    /// Key prefixes it may write.
    write: Vec<String>,
}

impl Session {
    fn of(caller: &Caller) -> Session {
        match caller {
            Caller::Open => Session {
                access_control: false,
                token: None,
                read: vec![String::new()],
                write: vec![String::new()],
            },
            Caller::Token(role) => Session {
                access_control: true,
                token: Some(role.token_name.clone()),
                read: role.read_prefixes().to_vec(),
                write: role.write_prefixes().to_vec(),
            },
        }
    }
}

/// `GET /ui/session`: 401 without a token (the page then asks for one).
async fn session(caller: Caller) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(Session::of(&caller))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// 400 unless the request carries [`CONSOLE_HEADER`]: login and logout are the
/// console's own calls, not something another page may post.
fn from_console(req: &HttpRequest) -> Result<(), ApiError> {
    if req.headers().contains_key(CONSOLE_HEADER) {
        Ok(())
    } else {
        Err(ApiError::invalid_request(format!(
            "this endpoint is for the console at /ui/ (it sends the {CONSOLE_HEADER} header)"
        )))
    }
}

/// The cookie holding `value`, or its removal when `value` is `None`.
fn token_cookie(req: &HttpRequest, value: Option<&str>) -> Cookie<'static> {
    // Percent-encoded: a token may hold characters a cookie value may not
    // (`;`, spaces, quotes); the request side decodes it.
    let encoded = value.map_or_else(String::new, |v| {
        utf8_percent_encode(v, NON_ALPHANUMERIC).to_string()
    });
    let mut cookie = Cookie::build(COOKIE, encoded)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(req.app_config().secure())
        .finish();
    if value.is_none() {
        cookie.set_max_age(Duration::ZERO);
    }
    cookie
}

/// `POST /ui/login`: 401 for an unknown token; without an access file there is
/// nothing to log in to, and no cookie is set.
async fn login(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    from_console(&req)?;
    let body = read_limited(&req, payload, MAX_LOGIN_BYTES).await?;
    let Some(access) = &state.access else {
        return Ok(HttpResponse::Ok().json(Session::of(&Caller::Open)));
    };
    let Login { token } = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_request(format!("the body must be {{\"token\": \"...\"}}: {e}"))
    })?;
    let token = token.trim();
    let role = access
        .role_of(token)
        .ok_or_else(|| ApiError::unauthorized("unknown token"))?;
    log::info!("console login with token {}", role.token_name);
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .cookie(token_cookie(&req, Some(token)))
        .json(Session::of(&Caller::Token(role))))
}

/// `POST /ui/logout`: removes the cookie (answers 204 even without one).
async fn logout(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    from_console(&req)?;
    Ok(HttpResponse::NoContent()
        .cookie(token_cookie(&req, None))
        .finish())
}

/// The assets are served as they are; keep them honest about what they load.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for (name, text) in [
            ("index.html", INDEX),
            ("app.js", APP_JS),
            ("style.css", STYLE),
        ] {
            for outside in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(outside), "{name} refers to {outside}");
            }
        }
        for asset in ["/ui/app.js", "/ui/style.css", "/ui/icon.svg"] {
            assert!(INDEX.contains(asset), "index.html loads {asset}");
        }
    }
}
