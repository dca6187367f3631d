"""Schemathesis hooks for kvstore-server/tests/openapi.rs (loaded via SCHEMATHESIS_HOOKS).

A snapshot restore (`POST /v1/snapshot`) takes NDJSON, a media type Schemathesis has
no serializer for: send the generated body as raw bytes, as for octet-stream.
"""

import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "application/octet-stream")
