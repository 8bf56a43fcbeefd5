import { ROOT_CONTEXT, metrics, trace } from '@opentelemetry/api';
import { RPCType, setRPCMetadata, suppressTracing } from '@opentelemetry/core';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { httpRpcMetadata, isTracingSuppressed, registeredMeterProvider, withoutRpcMetadata } from './otel-internals';

// meshtrace reads these context entries without depending on an SDK line: checked here against the
// real @opentelemetry/core, so a change of its keys fails this test instead of breaking in production.
const span = trace.wrapSpanContext({
  traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
  spanId: '00f067aa0ba902b7',
  traceFlags: 1,
});

test("suppressTracing's mark is read", () => {
  expect(isTracingSuppressed(suppressTracing(ROOT_CONTEXT))).toBe(true);
  expect(isTracingSuppressed(ROOT_CONTEXT)).toBe(false);
});

test("setRPCMetadata's HTTP span is found, and removed without touching the rest", () => {
  const ctx = setRPCMetadata(trace.setSpan(ROOT_CONTEXT, span), { type: RPCType.HTTP, span });
  expect(httpRpcMetadata(ctx)?.span).toBe(span);
  const without = withoutRpcMetadata(ctx);
  expect(httpRpcMetadata(without)).toBeUndefined();
  expect(trace.getSpan(without)).toBe(span);
  expect(withoutRpcMetadata(ROOT_CONTEXT)).toBe(ROOT_CONTEXT);
});

test('RPC metadata of another kind, or not an object, is not taken for a server span', () => {
  expect(httpRpcMetadata(setRPCMetadata(ROOT_CONTEXT, { type: 'grpc', span } as never))).toBeUndefined();
  expect(httpRpcMetadata(setRPCMetadata(ROOT_CONTEXT, null as never))).toBeUndefined();
});

test("the registered MeterProvider is read from the API's global registry: the one set, gone once disabled", () => {
  const provider = new MeterProvider();
  expect(registeredMeterProvider()).not.toBe(provider);
  metrics.setGlobalMeterProvider(provider);
  try {
    expect(registeredMeterProvider()).toBe(provider);
  } finally {
    metrics.disable();
  }
  expect(registeredMeterProvider()).not.toBe(provider);
});
