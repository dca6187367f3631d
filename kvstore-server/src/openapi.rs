//! `GET /v1/openapi.json`: the OpenAPI 3 document of the HTTP API, generated with
//! [utoipa](https://docs.rs/utoipa/5) from the handlers' annotations and the wire
//! types' schemas (`kvstore-core`'s feature `openapi`), so it follows the code.
//!
//! Every error answer is an [`ErrorBody`] (`{"error": {"code", "message",
//! "revision"?}}`); [`Doc`] adds the statuses every operation shares (`401` on those
//! that take a token, `500`) to what each handler declares.

use std::sync::OnceLock;

use actix_web::{web, HttpResponse};
use kvstore_core::wire::value_json::{EncodedValue, ValueEncoding};
use kvstore_core::wire::{
    DeletePrefixResult, DeleteResult, Entry, EntryAt, ErrorBody, ErrorDetail, Event, EventKind,
    HistoryPage, Lease, LeaseInfo, ListPage, PutResult, RestoreResult, RevokeResult,
    SnapshotHeader,
};
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::SchemaType;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, KnownFormat, ObjectBuilder, Ref, RefOr, ResponseBuilder, Schema, SchemaFormat,
    Type,
};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::error::ApiError;
use crate::routes;

/// An externally tagged enum's variants (objects of one property, the variant's
/// name) take no other property: serde refuses one, and utoipa does not say so.
fn closed_variants(components: &mut utoipa::openapi::Components, name: &str) {
    use utoipa::openapi::schema::AdditionalProperties;
    let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut(name) else {
        return;
    };
    for item in &mut one_of.items {
        if let RefOr::T(Schema::Object(object)) = item {
            object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        }
    }
}

/// Where the document is served.
pub const PATH: &str = "/v1/openapi.json";

/// The OpenAPI document of every endpoint.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kvstore",
        description = "A key-value store with numbered changes (revisions), compare-and-swap, \
            prefix listing and resumable watches.\n\n\
            Every 4xx and 5xx answer has the body `{\"error\": {\"code\": ..., \"message\": ...}}` \
            (`ErrorBody`, plus `revision` where one applies), except the legacy `/kv` not-found \
            answer. An unknown path gets `404 not_found`; a method a path of this document \
            does not list gets `405 method_not_allowed`, with `Allow` naming those it lists.\n\n\
            Values are bytes: raw in `/v1/kv/{key}` bodies, and in JSON a string, the text \
            itself when it is UTF-8, else base64 with `\"encoding\": \"base64\"` beside it.\n\n\
            With an access file (`--access-file`) every request but `/healthz` and this \
            document needs `Authorization: Bearer <token>`; without one the server is open."
    ),
    paths(
        routes::kv::get,
        routes::kv::put,
        routes::kv::delete,
        routes::kv::list,
        routes::leases::grant,
        routes::leases::keepalive,
        routes::leases::info,
        routes::leases::revoke,
        routes::kv::delete_prefix,
        routes::history::history,
        routes::txn::txn,
        routes::watch::watch,
        routes::snapshot::export,
        routes::snapshot::restore,
        routes::health::health,
        crate::compat::legacy::get,
        crate::compat::legacy::put,
        metrics,
        document
    ),
    components(schemas(
        Binary,
        Entry,
        Event,
        PutResult,
        DeleteResult,
        DeletePrefixResult,
        ListPage,
        EntryAt,
        HistoryPage,
        kvstore_core::txn::Txn,
        kvstore_core::txn::TxnResponse,
        SnapshotHeader,
        RestoreResult,
        Lease,
        LeaseInfo,
        RevokeResult,
        routes::leases::GrantRequest,
        ErrorBody,
        ErrorDetail,
        kvstore_core::ErrorCode,
        EventKind,
        EncodedValue,
        ValueEncoding
    )),
    modifiers(&Doc),
    tags(
        (name = "kv", description = "Keys and values"),
        (name = "leases", description = "Leases: keys that vanish when their owner stops \
            keeping them alive"),
        (name = "watch", description = "Change streams (WebSocket or Server-Sent Events)"),
        (name = "snapshot", description = "Backup and restore"),
        (name = "legacy", description = "The API of the service kvstore replaces"),
        (name = "health", description = "Health, metrics and this document")
    )
)]
pub struct Doc;

impl Modify for Doc {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        closed_variants(components, "RawOp");
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token of the access file; only when the server runs with one",
                    ))
                    .build(),
            ),
        );
        // The token is optional: an open server (no access file) ignores it.
        openapi.security = Some(vec![
            SecurityRequirement::default(),
            SecurityRequirement::new("bearer", Vec::<String>::new()),
        ]);
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                add_shared_errors(operation);
                optional_body_is_not_null(operation);
            }
            item.head = item.get.as_ref().map(head_of);
        }
    }
}

/// The HEAD operation of a GET: the same statuses and headers, no body (actix leaves
/// the body of an answer to HEAD unsent).
fn head_of(get: &Operation) -> Operation {
    let mut head = get.clone();
    head.operation_id = get.operation_id.as_ref().map(|id| format!("{id}_head"));
    head.summary = get
        .summary
        .as_ref()
        .map(|summary| format!("{summary} (HEAD: the same answer without its body)"));
    head.description =
        Some("The answer GET gives, with its status and headers, without the body.".into());
    // A HEAD carries no body: where the GET reads a body in place of its query
    // parameters (the legacy `GET /kv`: `?key=` or `{"key": K}`), the HEAD needs them.
    if head.request_body.take().is_some() {
        for parameter in head.parameters.iter_mut().flatten() {
            if parameter.parameter_in == utoipa::openapi::path::ParameterIn::Query {
                parameter.required = utoipa::openapi::Required::True;
            }
        }
    }
    for response in head.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            response.content.clear();
        }
    }
    head
}

/// Adds `401` (to operations that take a token) and `500` (to all).
fn add_shared_errors(operation: &mut Operation) {
    let open = operation
        .security
        .as_ref()
        .is_some_and(|reqs| reqs.iter().all(|r| r == &SecurityRequirement::default()));
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                    .build(),
            )
            .build()
    };
    let responses = &mut operation.responses.responses;
    if !open {
        responses.entry("401".into()).or_insert_with(|| {
            error("`unauthorized`: no token or an unknown one (only with an access file)").into()
        });
        responses.entry("400".into()).or_insert_with(|| {
            error("`invalid_request`: more than one `Authorization` header").into()
        });
    }
    responses
        .entry("500".into())
        .or_insert_with(|| error("`internal`: a bug; please report it").into());
}

/// An `Option<T>` request body (`request_body(content((Option<T> = ...)))`) means the
/// body may be left out, not that it may be JSON `null`: its schema becomes `T`'s.
fn optional_body_is_not_null(operation: &mut Operation) {
    let Some(body) = operation.request_body.as_mut() else {
        return;
    };
    for content in body.content.values_mut() {
        let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
            continue;
        };
        let mut rest = one_of.items.iter().filter(|item| {
            !matches!(item, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null))
        });
        if let (Some(only), None) = (rest.next(), rest.next()) {
            content.schema = Some(only.clone());
        }
    }
}

/// Raw bytes: a value as stored (`application/octet-stream` bodies).
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("Raw bytes"))
            .into()
    }
}

impl ToSchema for Binary {}

/// The metrics in the Prometheus text format (served by [`crate::metrics`]).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4",
         content_type = "text/plain", body = String),
        (status = 403, description = "`forbidden`: the token may not read every key (with an \
            access file)", body = ErrorBody),
    )
)]
#[allow(dead_code)] // Documents `crate::metrics::render`, mounted by `crate::metrics::configure`.
fn metrics() {}

/// This document. Needs no token.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "health",
    operation_id = "openapi",
    security(()),
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json",
         body = Object),
    )
)]
async fn document() -> Result<HttpResponse, ApiError> {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    let json = JSON
        .get_or_init(|| spec().to_json().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| ApiError::internal(format!("encoding the OpenAPI document: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(json.as_str()))
}

/// The document, built once: served as JSON, and the table of the methods each path
/// takes (`routes::methods`).
pub(crate) fn spec() -> &'static utoipa::openapi::OpenApi {
    static SPEC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    SPEC.get_or_init(Doc::openapi)
}

/// Mounts `GET /v1/openapi.json` (open: no token needed).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(PATH, crate::routes::get_or_head().to(document));
}
