"""The shapes of the names and identifiers clients send: request ids (X-Request-ID), key ids, route names
and model names. One definition for the API's schema, the request-id middleware and the console's paths."""

from __future__ import annotations

# Request ids end up in logs and headers: only short, plain ids.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
KEY_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"  # the ids the gateway makes: key_ and 16 hex digits
ROUTE_NAME_PATTERN = r"^[A-Za-z0-9._:-]{1,100}$"  # a route's public model name
MODEL_NAME_PATTERN = r"^[^\s\x00-\x1f\x7f]+$"  # a model a backend serves: printable, no spaces (every kind takes it)
