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
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Schema, Type};
use utoipa::{Modify, OpenApi, ToSchema};

use super::leases::GrantRequest;
use super::route::{Binary, Mount, Route};
use crate::http::error::ApiError;
use kvstore_core::ErrorCode;

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
        GrantRequest,
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
    }
}

/// The document of `routes`: each route's operation as its handler declares it,
/// its error rows made from the `ErrorCode` table (the codes it names, and those
/// every operation shares: `unauthorized` and `invalid_request` where a token is
/// taken, `internal` everywhere), and HEAD beside each GET.
pub(crate) fn build<'a>(routes: impl IntoIterator<Item = &'a Route>) -> utoipa::openapi::OpenApi {
    let mut openapi = Doc::openapi();
    let mut schemas = Vec::new();
    for route in routes {
        let mut operation = route.operation();
        add_errors(&mut operation, route.errors);
        optional_body_is_not_null(&mut operation);
        openapi
            .paths
            .add_path_operation(route.path(), route.methods(), operation);
        route.schemas(&mut schemas);
    }
    for item in openapi.paths.paths.values_mut() {
        item.head = item.get.as_ref().map(head_of);
    }
    let components = openapi.components.get_or_insert_with(Default::default);
    for (name, schema) in schemas {
        components.schemas.entry(name).or_insert(schema);
    }
    openapi
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

/// Adds the error rows of `codes` and of the codes every operation shares, one
/// row a status, each saying its codes with their descriptions from the table. A
/// status the handler answers otherwise (the legacy `/kv` not-found body) keeps
/// its own row.
fn add_errors(operation: &mut Operation, codes: &[ErrorCode]) {
    let open = operation
        .security
        .as_ref()
        .is_some_and(|reqs| reqs.iter().all(|r| r == &SecurityRequirement::default()));
    let mut all = codes.to_vec();
    if !open {
        // No token or an unknown one; more than one `Authorization` header.
        all.extend([ErrorCode::Unauthorized, ErrorCode::InvalidRequest]);
    }
    all.push(ErrorCode::Internal);
    let mut unique: Vec<ErrorCode> = Vec::new();
    for code in all {
        if !unique.contains(&code) {
            unique.push(code);
        }
    }
    let mut statuses: Vec<u16> = unique.iter().map(|c| c.status()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    let responses = &mut operation.responses.responses;
    for status in statuses {
        let description = unique
            .iter()
            .filter(|c| c.status() == status)
            .map(|c| format!("`{}`: {}", c.as_str(), c.description()))
            .collect::<Vec<_>>()
            .join(" ");
        let row = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                    .build(),
            )
            .build();
        responses.entry(status.to_string()).or_insert(row.into());
    }
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
async fn document(doc: web::Data<Document>) -> Result<HttpResponse, ApiError> {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    let json = JSON
        .get_or_init(|| doc.0.to_json().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| ApiError::internal(format!("encoding the OpenAPI document: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(json.as_str()))
}

/// The document as the app serves it (its app data).
pub(crate) struct Document(pub &'static utoipa::openapi::OpenApi);

/// `GET /v1/openapi.json` (open: no token needed).
pub(crate) const ROUTES: &[Route] = &[Route::new::<__path_document>(
    Mount::To(|r| r.to(document)),
    &[],
)];
