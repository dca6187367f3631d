//! One route of the API, declared once: its OpenAPI operation (the handler's
//! `#[utoipa::path]`), the error codes it may answer, and how it is mounted. The
//! app mounts the routes, the document describes them, `Allow` and the query
//! whitelist are read from them (see [`Endpoints`]): all from the same list.
//!
//! Also what the routes share: HEAD beside GET ([`get_or_head`]), routing on the
//! path as sent ([`match_as_sent`]), the key named by a path ([`key_in_path`]).

use std::sync::OnceLock;

use actix_router::Quoter;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{guard, web};
use kvstore_core::ErrorCode;
use utoipa::openapi::path::{HttpMethod, Operation, ParameterIn};
use utoipa::openapi::{RefOr, Schema};

use crate::http::error::ApiError;

/// How a route is mounted.
#[derive(Clone, Copy)]
pub(crate) enum Mount {
    /// At its documented path, for its documented method (GET also answers HEAD):
    /// the function finishes the route with its handler (`|r| r.to(handler)`).
    To(fn(actix_web::Route) -> actix_web::Route),
    /// By this function, which mounts every operation of the path at once (a key
    /// route dispatches its methods itself).
    With(fn(&mut web::ServiceConfig)),
    /// By the [`Mount::With`] of another operation of the same path.
    WithItsPath,
}

/// A route: what the document says of it, and how it is mounted.
pub(crate) struct Route {
    path: fn() -> String,
    methods: fn() -> Vec<HttpMethod>,
    operation: fn() -> Operation,
    tags: fn() -> Vec<&'static str>,
    schemas: fn(&mut Vec<(String, RefOr<Schema>)>),
    /// The codes of the `ErrorCode` table it may answer with; the document's error
    /// rows are made from the table (status and description), beside those every
    /// route shares (see `openapi`).
    pub errors: &'static [ErrorCode],
    mount: Mount,
}

impl Route {
    /// The route of the handler whose `#[utoipa::path]` made `P` (its `__path_*`).
    pub(crate) const fn new<P>(mount: Mount, errors: &'static [ErrorCode]) -> Route
    where
        P: utoipa::Path + utoipa::__dev::Tags<'static> + utoipa::__dev::SchemaReferences,
    {
        Route {
            path: P::path,
            methods: P::methods,
            operation: P::operation,
            tags: <P as utoipa::__dev::Tags<'static>>::tags,
            schemas: P::schemas,
            errors,
            mount,
        }
    }

    /// The path as documented: `/v1/leases/{id}` (also actix's pattern of it).
    pub(crate) fn path(&self) -> String {
        (self.path)()
    }

    /// The documented methods (HEAD is documented, and served, beside each GET).
    pub(crate) fn methods(&self) -> Vec<HttpMethod> {
        (self.methods)()
    }

    /// The operation as its handler declares it, with its tags.
    pub(crate) fn operation(&self) -> Operation {
        let mut operation = (self.operation)();
        let tags: Vec<String> = (self.tags)().into_iter().map(String::from).collect();
        if !tags.is_empty() {
            operation.tags = Some(tags);
        }
        operation
    }

    /// The schemas its operation names, for the document's components.
    pub(crate) fn schemas(&self, into: &mut Vec<(String, RefOr<Schema>)>) {
        (self.schemas)(into)
    }

    /// Mounts it on `cfg`.
    pub(crate) fn mount(&self, cfg: &mut web::ServiceConfig) {
        match self.mount {
            Mount::To(handler) => {
                let path = self.path();
                for method in self.methods() {
                    let route = match method {
                        HttpMethod::Get => get_or_head(),
                        HttpMethod::Put => web::put(),
                        HttpMethod::Post => web::post(),
                        HttpMethod::Delete => web::delete(),
                        HttpMethod::Head => web::head(),
                        HttpMethod::Options => web::route().guard(guard::Options()),
                        HttpMethod::Patch => web::patch(),
                        HttpMethod::Trace => web::route().guard(guard::Trace()),
                    };
                    cfg.route(&path, handler(route));
                }
            }
            Mount::With(mount) => mount(cfg),
            Mount::WithItsPath => {}
        }
    }
}

/// One documented path, method and the query parameters it takes.
struct Endpoint {
    /// As documented: `/healthz`, `/v1/kv/{key}`.
    template: String,
    method: Method,
    query: Vec<String>,
}

/// What the routes take, for the answers to what they do not: `405` with `Allow`
/// (`methods`), unknown query parameters (`params`). Built once from the routes.
pub(crate) struct Endpoints {
    endpoints: Vec<Endpoint>,
    /// Each documented path with its `Allow` header: `GET, HEAD, PUT, DELETE`.
    allow: Vec<(String, String)>,
}

impl Endpoints {
    /// The endpoints of `routes`: each documented method, HEAD beside GET.
    pub(crate) fn of<'a>(routes: impl IntoIterator<Item = &'a Route>) -> Endpoints {
        let mut endpoints = Vec::new();
        for route in routes {
            let template = route.path();
            let operation = route.operation();
            let query: Vec<String> = operation
                .parameters
                .iter()
                .flatten()
                .filter(|p| p.parameter_in == ParameterIn::Query)
                .map(|p| p.name.clone())
                .collect();
            for method in route.methods() {
                let method = method_of(&method);
                if method == Method::GET {
                    endpoints.push(Endpoint {
                        template: template.clone(),
                        method: Method::HEAD,
                        query: query.clone(),
                    });
                }
                endpoints.push(Endpoint {
                    template: template.clone(),
                    method,
                    query: query.clone(),
                });
            }
        }
        const ORDER: [Method; 8] = [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::OPTIONS,
            Method::PATCH,
            Method::TRACE,
        ];
        let mut allow: Vec<(String, String)> = Vec::new();
        for endpoint in &endpoints {
            if allow.iter().any(|(t, _)| *t == endpoint.template) {
                continue;
            }
            let methods = ORDER
                .iter()
                .filter(|m| {
                    endpoints
                        .iter()
                        .any(|e| e.template == endpoint.template && e.method == **m)
                })
                .map(Method::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            allow.push((endpoint.template.clone(), methods));
        }
        Endpoints { endpoints, allow }
    }

    /// The most specific documented path that `path` (as sent) is one of:
    /// `/v1/leases/{id}/keepalive` before `/v1/leases/{id}`, whose last parameter
    /// would take the rest.
    pub(crate) fn template(&self, path: &str) -> Option<&str> {
        self.endpoints
            .iter()
            .filter(|e| matches(&e.template, path))
            .max_by_key(|e| e.template.matches('/').count())
            .map(|e| e.template.as_str())
    }

    /// The `Allow` header of a documented path: `GET, HEAD, PUT, DELETE`.
    pub(crate) fn allow(&self, template: &str) -> &str {
        self.allow
            .iter()
            .find(|(t, _)| t == template)
            .map_or("", |(_, allow)| allow.as_str())
    }

    /// The query parameters a request to `path` with `method` may name; `None`
    /// when no route takes it.
    pub(crate) fn query(&self, path: &str, method: &Method) -> Option<Vec<&str>> {
        self.endpoints
            .iter()
            .find(|e| e.method == *method && matches(&e.template, path))
            .map(|e| e.query.iter().map(String::as_str).collect())
    }
}

fn method_of(method: &HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Post => Method::POST,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}

/// Whether `path` (as sent) is one of `template`'s: a `{parameter}` stands for one
/// non-empty segment, or, last, for the rest of the path (a key holds `/`s, and an
/// empty key is the key route's to refuse).
pub(crate) fn matches(template: &str, path: &str) -> bool {
    let mut wanted = template.split('/').peekable();
    let mut given = path.split('/');
    while let Some(part) = wanted.next() {
        let is_parameter = part.starts_with('{') && part.ends_with('}');
        let last = wanted.peek().is_none();
        match given.next() {
            None => return false,
            Some(_) if is_parameter && last => return true,
            Some(segment) if is_parameter => {
                if segment.is_empty() {
                    return false;
                }
            }
            Some(segment) => {
                if segment != part {
                    return false;
                }
            }
        }
    }
    given.next().is_none()
}

/// A route for GET that answers HEAD the same way, without the body (actix leaves
/// the body of an answer to HEAD unsent), as caches and tools expect.
pub(crate) fn get_or_head() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// The key named by the request path after `prefix`, percent-decoded once (`a%2Fb`
/// is `a/b`) and checked.
pub(crate) fn key_in_path(req: &actix_web::HttpRequest, prefix: &str) -> Result<String, ApiError> {
    let raw = req
        .uri()
        .path()
        .strip_prefix(prefix)
        .ok_or_else(|| ApiError::invalid_key("the key is missing from the path"))?;
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::invalid_key("the key is not valid UTF-8 once percent-decoded"))?
        .into_owned();
    kvstore_core::key::validate_key(&key).map_err(|e| ApiError::invalid_key(e.to_string()))?;
    Ok(key)
}

/// Middleware: routes match the path as sent. actix matches routes against the
/// path with its percent-escapes decoded (all but `%2F`, `%25` and `%2B`), so
/// `/v1/%6Bv/x` would reach the key route, which reads its key from the path as
/// sent and finds none there. A route's own name must be spelled as is: that path
/// is no route of ours (`404 not_found`). Escapes inside a key or a path parameter
/// are decoded as before (the key route decodes its key; actix's `Path` extractor
/// decodes parameters).
pub async fn match_as_sent(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.path().contains('%') {
        // Decodes nothing actix would match differently: every ASCII byte is kept
        // escaped (a `Quoter` can only protect ASCII; escaped bytes above 127 are
        // never part of a route's name).
        static AS_SENT: OnceLock<Quoter> = OnceLock::new();
        let quoter = AS_SENT.get_or_init(|| {
            let ascii: Vec<u8> = (0..128).collect();
            Quoter::new(b"", &ascii)
        });
        let uri = req.uri().clone();
        req.match_info_mut()
            .get_mut()
            .update_with_quoter(&uri, quoter);
    }
    next.call(req).await
}

/// Raw bytes: a value as stored (`application/octet-stream` bodies).
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        use utoipa::openapi::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("Raw bytes"))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn templates_match_paths_segment_by_segment() {
        assert!(matches("/healthz", "/healthz"));
        assert!(!matches("/healthz", "/healthz/"));
        assert!(!matches("/healthz", "/healthzx"));
        assert!(!matches("/v1/kv", "/v1/kv/"));
        assert!(matches("/v1/kv/{key}", "/v1/kv/a"));
        assert!(matches("/v1/kv/{key}", "/v1/kv/a/b/"));
        assert!(matches("/v1/kv/{key}", "/v1/kv/"));
        assert!(!matches("/v1/kv/{key}", "/v1/kv"));
        assert!(!matches("/v1/kv/{key}", "/v1/%6Bv/a"));
        assert!(matches("/v1/leases/{id}/keys", "/v1/leases/7/keys"));
        assert!(!matches("/v1/leases/{id}/keys", "/v1/leases//keys"));
        assert!(!matches("/v1/leases/{id}/keys", "/v1/leases/7/keys/x"));
    }
}
