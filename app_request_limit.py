"""A cap on the size of every HTTP request body the app takes in (gradio's ``max_file_size`` caps one
uploaded file, not a request: without this, a POST of any size is read).

``RequestBodyLimit`` is a plain ASGI middleware, handed to gradio with
``launch(app_kwargs={"middleware": [Middleware(RequestBodyLimit, max_bytes=...)]})``.
"""

from __future__ import annotations

import json


class RequestBodyLimit:
    """Answers 413 with a one-line reason to any request whose body is over ``max_bytes``.

    A declared ``Content-Length`` is checked before a byte of the body is read. A body sent without one
    (chunked) is read up to the cap before the app sees it, so it is counted however it arrives.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:  # the server (h11) never delivers more than the declared length
            if int(declared) > self.max_bytes:
                await self._refuse(send, f"The request body is {int(declared)} bytes")
            else:
                await self.app(scope, receive, send)
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send, f"The request body is over {size} bytes")
                return
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send, what: str):
        # Answered without reading the rest: the server discards it, and the connection stays usable.
        detail = f"{what}; this app takes at most {self.max_bytes} bytes per request."
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
