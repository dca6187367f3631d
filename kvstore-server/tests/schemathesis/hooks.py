"""Schemathesis hooks for kvstore-server/tests/openapi.rs (loaded via SCHEMATHESIS_HOOKS).

A snapshot restore (`POST /v1/snapshot`) takes NDJSON, a media type Schemathesis has
no serializer for: send the generated body as raw bytes, as for octet-stream.

Two rules of the API are beyond what an OpenAPI 3.1 document can state, and the
document says them in prose; these hooks keep Schemathesis from taking them for
mismatches, and nothing else:

- The legacy read (`GET /kv`) names its key in `?key=` or, when that is absent, in a
  JSON body `{"key": K}`, while a document's parameters and body are independent. A
  request with neither is refused (400) by design, so it is not offered as a valid
  one. (`HEAD /kv` carries no body: the document makes its `key` required.)
- A key put takes `?lease=ID` or `?ttl=N`, not both (ttl grants the key a lease
  of its own; both parameters say so), so a request with both is not offered as a
  valid one.
- A delete by prefix (`DELETE /v1/kv`) without `prefix` deletes every key, so it is
  refused (400) unless `all=true` says so: such a request is not offered as a valid
  one. (An empty `prefix=` is refused always; the document says `minLength: 1`.)
- A transaction's rules across its fields (a `value` compare takes a string, the
  others a number; a base64 value must decode; a delete names a `key` or a `prefix`;
  no branch writes a key twice; at most `--max-txn-ops` ops) are beyond what its
  schema states: a transaction refused with 400 for one of them is the right answer
  (tests/txn.rs sends them, right and wrong).
- A restore's body is a snapshot: a header line, then entries in key order with
  revisions up to the header's. The document can only say "bytes", so made-up bytes
  refused as `invalid_snapshot` are the right answer (tests/fuzz.rs sends it
  snapshot-shaped bodies, right and wrong).
- A read at a revision (`?revision=R` on a key or a listing, or the revision a
  listing's `continue` token carries) is refused with 400 `future_revision` when R is
  past the store's revision, which the document cannot know; and a `continue` token
  is opaque: one made up, or sent beside `after` or `revision`, is refused with 400
  (tests/history.rs reads at every kind of revision).
"""

import schemathesis
from schemathesis.core import NOT_SET
from schemathesis.openapi.checks import RejectedPositiveData

schemathesis.serializer.alias("application/x-ndjson", "application/octet-stream")


def _is(operation, method, path):
    return (
        operation is not None
        and operation.method.upper() == method
        and operation.path == path
    )


def _deletes_everything_unasked(case):
    query = case.query or {}
    return "prefix" not in query and str(query.get("all")).lower() != "true"


@schemathesis.hook
def filter_case(context, case):
    operation = context.operation
    if _is(operation, "DELETE", "/v1/kv"):
        if case.meta is None or not case.meta.generation.mode.is_positive:
            return True
        return not _deletes_everything_unasked(case)
    if case.meta is None:
        return True
    if _is(operation, "PUT", "/v1/kv/{key}"):
        both = bool(case.query) and "lease" in case.query and "ttl" in case.query
        return not (both and case.meta.generation.mode.is_positive)
    if not _is(operation, "GET", "/kv"):
        return True
    names_key = bool(case.query) and "key" in case.query
    if case.meta.generation.mode.is_positive:
        has_body = case.body is not NOT_SET and case.body is not None
        return names_key or has_body
    return True


def _reads_at_a_revision(case):
    query = case.query or {}
    reads_at = (
        _is(case.operation, "GET", "/v1/kv/{key}")
        or _is(case.operation, "HEAD", "/v1/kv/{key}")
        or _is(case.operation, "GET", "/v1/kv")
        or _is(case.operation, "HEAD", "/v1/kv")
    )
    return reads_at and (
        query.get("revision") is not None or bool(query.get("continue"))
    )


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if _reads_at_a_revision(case):
        return not (
            isinstance(failure, RejectedPositiveData) and response.status_code == 400
        )
    if _is(case.operation, "POST", "/v1/txn"):
        return not (
            isinstance(failure, RejectedPositiveData) and response.status_code == 400
        )
    if not _is(case.operation, "POST", "/v1/snapshot"):
        return True
    if not isinstance(failure, RejectedPositiveData) or response.status_code != 400:
        return True
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return True
    return code != "invalid_snapshot"
