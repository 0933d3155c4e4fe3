"""The ASGI app uvicorn serves in the HTTP benchmark: the same response as hyperfork's `GET /`."""

BODY = b"Hello, world!"
HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(BODY)).encode()),
    (b"x-worker", b"0"),
]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
