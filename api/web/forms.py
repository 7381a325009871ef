"""Reading a posted HTML form: `application/x-www-form-urlencoded`, bounded in size.

The pages' forms carry a few short fields (the CSRF token, a comment, an API token), so the
standard library's parser is all they need; a multipart parser would be one more dependency
for nothing. A body over the server's limit is 413; a body of another type reads as no field
at all (so it carries no CSRF token, and is refused as such).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import HTTPException, Request, status

from api.deps import get_settings

FORM_TYPE = "application/x-www-form-urlencoded"


async def read_form(request: Request) -> dict[str, str]:
    """The form's fields, the first value of each."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != FORM_TYPE:
        # Not one of our forms, so no CSRF token either: the caller's check refuses it (403).
        return {}
    limit = get_settings(request).max_body_bytes
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "form too large")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the form is not UTF-8") from exc
    return {name: values[0] for name, values in fields.items()}
