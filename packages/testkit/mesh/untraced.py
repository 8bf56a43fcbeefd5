"""One service of a process mesh in Python (aiohttp), with no OpenTelemetry at all.

Environment: MESH_SERVICE (its name), MESH_CALLS (JSON list of base URLs called in turn on every
request), MESH_FORWARD (nothing | request-id: the inbound headers copied onto each call),
MESH_DELAY_MS, PORT. GET /healthz answers without calling anyone.
"""

import asyncio
import json
import os
import signal

from aiohttp import ClientSession, web

NAME = os.environ.get("MESH_SERVICE", "python")
CALLS = json.loads(os.environ.get("MESH_CALLS", "[]"))
FORWARD = os.environ.get("MESH_FORWARD", "nothing")
DELAY_MS = float(os.environ.get("MESH_DELAY_MS", "0"))
PORT = int(os.environ["PORT"])


async def healthz(_request):
    return web.Response(text="ok")


async def work(request):
    if DELAY_MS > 0:
        await asyncio.sleep(DELAY_MS / 1000)
    headers = {"accept": "application/json"}
    request_id = request.headers.get("x-request-id")
    if FORWARD == "request-id" and request_id is not None:
        headers["x-request-id"] = request_id
    answers = []
    async with ClientSession() as session:
        for base in CALLS:
            try:
                async with session.get(f"{base}/work", headers=headers) as res:
                    await res.read()
                    answers.append({"url": base, "status": res.status})
            except Exception as err:  # noqa: BLE001 - the answer reports any failure
                answers.append({"url": base, "error": str(err)})
    ok = all(a.get("status") == 200 for a in answers)
    return web.json_response({"service": NAME, "calls": answers}, status=200 if ok else 502)


def main():
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/work", work)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    web.run_app(app, host="127.0.0.1", port=PORT, print=None, handle_signals=False)


if __name__ == "__main__":
    main()
