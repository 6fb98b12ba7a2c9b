"""What the predictor's app and the router both do with a raw ASGI request: read its body, bounded."""

from __future__ import annotations

TOO_LARGE = object()  # read_body's answer for a body over the limit


async def read_body(scope, receive, limit: int):
    """The whole request body; ``TOO_LARGE`` past ``limit`` bytes (a Content-Length over it is refused before
    anything is read); None if the client disconnected."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                if int(value) > limit:
                    return TOO_LARGE
            except ValueError:
                pass
            break
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return TOO_LARGE
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
