"""A Python service instrumented the way OpenTelemetry Python users do it, for meshtrace's interop tests.

aiohttp server and client instrumentations, the OpenTelemetry SDK, and an OTLP/HTTP exporter. Configured
by environment variables:

  PORT                         the port to listen on, on 127.0.0.1 (required)
  OTEL_SERVICE_NAME            service.name of its spans (default: python-service)
  OTEL_EXPORTER_OTLP_ENDPOINT  OTLP/HTTP base URL to export spans to (no export when unset)
  OTEL_PROPAGATORS             read by the SDK: tracecontext, baggage, b3, b3multi (default: tracecontext,baggage)
  NEXT_URL                     on GET, call this URL with the instrumented aiohttp client
  FORWARD_TRACEPARENT          "upper": send NEXT_URL an upper-cased traceparent, as some proxies do

Every GET answers JSON: the trace headers it received, its SERVER span's trace and span ids, and
NEXT_URL's status and body when it called one.
"""

import os

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from opentelemetry.instrumentation.utils import suppress_http_instrumentation
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

TRACE_HEADERS = ("traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled")

SERVICE = os.environ.get("OTEL_SERVICE_NAME", "python-service")
provider = TracerProvider(resource=Resource.create({SERVICE_NAME: SERVICE}))
if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # The exporter adds /v1/traces to OTEL_EXPORTER_OTLP_ENDPOINT; a short delay gets spans to the tests quickly.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=100))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("meshtrace.peers-fixtures.service")

# The server instrumentation replaces web.Application, so it must run before the app is made.
AioHttpServerInstrumentor().instrument()
AioHttpClientInstrumentor().instrument()

import aiohttp  # noqa: E402  (after instrument(): sessions made from here on are traced)


async def call_next(url: str) -> dict:
    async with aiohttp.ClientSession() as session:
        if os.environ.get("FORWARD_TRACEPARENT") == "upper":
            # A CLIENT span of our own with the header spelled in upper case; the instrumentation stays
            # out so it does not inject a second, well-formed traceparent. The span records what the
            # instrumentation's would (http.method, http.url, http.status_code), so the peer it called is known.
            attributes = {"http.method": "GET", "http.url": url}
            with tracer.start_as_current_span("GET", kind=trace.SpanKind.CLIENT, attributes=attributes) as span:
                headers: dict = {}
                propagate.inject(headers)
                if "traceparent" in headers:
                    headers["traceparent"] = headers["traceparent"].upper()
                with suppress_http_instrumentation():
                    async with session.get(url, headers=headers) as res:
                        span.set_attribute("http.status_code", res.status)
                        return {"status": res.status, "body": await res.text()}
        async with session.get(url) as res:
            return {"status": res.status, "body": await res.text()}


async def handle(request: web.Request) -> web.Response:
    span = trace.get_current_span().get_span_context()
    body = {
        "service": SERVICE,
        "received": {name: request.headers[name] for name in TRACE_HEADERS if name in request.headers},
        "traceId": format(span.trace_id, "032x"),
        "spanId": format(span.span_id, "016x"),
    }
    next_url = os.environ.get("NEXT_URL")
    if next_url:
        body["next"] = await call_next(next_url)
    return web.json_response(body)


def main() -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    try:
        web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, handle_signals=True)
    finally:
        # Flush what the batch processor still holds before the process ends (SIGTERM lands here too).
        provider.shutdown()


if __name__ == "__main__":
    main()
