import { ROOT_CONTEXT, defaultTextMapGetter, defaultTextMapSetter, propagation, trace } from '@opentelemetry/api';
import { W3CBaggagePropagator, W3CTraceContextPropagator, suppressTracing } from '@opentelemetry/core';
import { MeshPropagator } from '@meshtrace/core';
import { RANDOM_TRACE_ID_KEY } from '@meshtrace/core/adapter';
import { MeshTraceState } from '../w3c/tracestate';

const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const P = '00f067aa0ba902b7';
const mesh = new MeshPropagator();

function roundTrip(
  from: { extract: typeof mesh.extract },
  to: { inject: typeof mesh.inject },
  headers: Record<string, string>,
) {
  const ctx = from.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
  const out: Record<string, string> = {};
  to.inject(ctx, out, defaultTextMapSetter);
  return out;
}

describe('MeshPropagator', () => {
  test('fields', () => {
    const b3 = ['b3', 'x-b3-traceid', 'x-b3-spanid', 'x-b3-sampled', 'x-b3-flags'];
    expect(mesh.fields()).toEqual(['traceparent', 'tracestate', 'baggage', ...b3]);
    expect(new MeshPropagator({ baggage: false, extract: ['w3c'] }).fields()).toEqual(['traceparent', 'tracestate']);
    expect(new MeshPropagator({ extract: ['w3c'], b3: 'single' }).fields()).toEqual([
      'traceparent',
      'tracestate',
      'baggage',
      ...b3,
    ]);
  });

  test('extract then inject gives the same context back', () => {
    const headers = { traceparent: `00-${T}-${P}-01`, tracestate: 'a=1,b=2', baggage: 'k=v;p=1' };
    expect(roundTrip(mesh, mesh, headers)).toEqual(headers);
  });

  test('a higher version goes out as 00 with only the defined flags', () => {
    expect(roundTrip(mesh, mesh, { traceparent: `cc-${T}-${P}-ff-extra` })).toEqual({ traceparent: `00-${T}-${P}-03` });
  });

  test('nothing malformed is ever forwarded', () => {
    expect(roundTrip(mesh, mesh, { traceparent: `00-${T.toUpperCase()}-${P}-01`, tracestate: 'a=1' })).toEqual({});
  });

  test('a span context the API accepts but the spec does not is not injected', () => {
    const ctx = trace.setSpanContext(ROOT_CONTEXT, { traceId: T.toUpperCase(), spanId: P, traceFlags: 1 });
    const out: Record<string, string> = {};
    mesh.inject(ctx, out, defaultTextMapSetter);
    expect(out).toEqual({});
  });

  test('the random flag survives into a child span context through the context', () => {
    const ctx = trace
      .setSpanContext(ROOT_CONTEXT, { traceId: T, spanId: P, traceFlags: 1 })
      .setValue(RANDOM_TRACE_ID_KEY, true);
    const out: Record<string, string> = {};
    mesh.inject(ctx, out, defaultTextMapSetter);
    expect(out.traceparent).toBe(`00-${T}-${P}-03`);
  });

  test('suppressed tracing injects nothing, baggage included', () => {
    const traced = trace.setSpanContext(ROOT_CONTEXT, { traceId: T, spanId: P, traceFlags: 1 });
    const ctx = suppressTracing(propagation.setBaggage(traced, propagation.createBaggage({ k: { value: 'v' } })));
    const out: Record<string, string> = {};
    mesh.inject(ctx, out, defaultTextMapSetter);
    expect(out).toEqual({});
  });

  test('maxBaggageBytes drops members past the budget', () => {
    const small = new MeshPropagator({ maxBaggageBytes: 10 });
    expect(roundTrip(small, small, { baggage: 'a=12345,b=67890' })).toEqual({ baggage: 'a=12345' });
  });

  test('baggage: false neither reads nor writes baggage', () => {
    const off = new MeshPropagator({ baggage: false });
    const ctx = off.extract(ROOT_CONTEXT, { baggage: 'a=1' }, defaultTextMapGetter);
    expect(propagation.getBaggage(ctx)).toBeUndefined();
    const out: Record<string, string> = {};
    off.inject(
      propagation.setBaggage(ROOT_CONTEXT, propagation.createBaggage({ a: { value: '1' } })),
      out,
      defaultTextMapSetter,
    );
    expect(out).toEqual({});
  });

  test('tracestate extracted is a MeshTraceState, limited on the way out', () => {
    const ctx = mesh.extract(ROOT_CONTEXT, { traceparent: `00-${T}-${P}-01`, tracestate: 'a=1' }, defaultTextMapGetter);
    expect(trace.getSpanContext(ctx)?.traceState).toBeInstanceOf(MeshTraceState);
  });

  const bad: Array<[string, unknown, string]> = [
    ['options', 'x', 'options'],
    ['baggage', { baggage: 'yes' }, 'baggage'],
    ['maxBaggageBytes negative', { maxBaggageBytes: -1 }, 'maxBaggageBytes'],
    ['maxBaggageBytes over the spec', { maxBaggageBytes: 9000 }, 'maxBaggageBytes'],
    ['maxBaggageBytes not an integer', { maxBaggageBytes: 1.5 }, 'maxBaggageBytes'],
  ];
  test.each(bad)('bad option %s throws a TypeError naming it', (_name, options, option) => {
    expect(() => new MeshPropagator(options as never)).toThrow(TypeError);
    expect(() => new MeshPropagator(options as never)).toThrow(`@meshtrace/core: option "${option}"`);
  });
});

describe('interop with the OpenTelemetry propagators', () => {
  const otelTrace = new W3CTraceContextPropagator();
  const otelBaggage = new W3CBaggagePropagator();
  const headers = { traceparent: `00-${T}-${P}-01`, tracestate: 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7' };

  test('OpenTelemetry injects, meshtrace extracts', () => {
    expect(roundTrip(otelTrace, mesh, headers)).toEqual(headers);
  });

  test('meshtrace injects, OpenTelemetry extracts', () => {
    expect(roundTrip(mesh, otelTrace, headers)).toEqual(headers);
  });

  test('baggage both ways', () => {
    const bag = { baggage: 'user=J%C3%BCrgen,tier=gold;ttl=60' };
    const viaOtel = roundTrip(otelBaggage, mesh, bag);
    expect(roundTrip(mesh, otelBaggage, viaOtel)).toEqual(viaOtel);
    expect(viaOtel.baggage.split(',').sort()).toEqual(bag.baggage.split(',').sort());
  });
});
