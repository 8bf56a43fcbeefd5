import fc from 'fast-check';
import {
  ROOT_CONTEXT,
  createContextKey,
  defaultTextMapGetter,
  defaultTextMapSetter,
  propagation,
  trace,
} from '@opentelemetry/api';
import type { Context } from '@opentelemetry/api';
import { MeshPropagator, serializeBaggage } from '@meshtrace/core';
import { extractionOf } from '@meshtrace/core/adapter';
import { MeshTraceState } from '../w3c/tracestate';
import { setupTestTracing } from '@meshtrace/testkit';

// The context extraction returns adds its values in one layer instead of copying the parent's map:
// it must read, write and delete exactly like the API's own context, however deep it is built.
const tracing = setupTestTracing();
afterAll(() => tracing.shutdown());
const mesh = new MeshPropagator();
const TP = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03';
const KEYS = Array.from({ length: 6 }, (_, i) => createContextKey(`test-${i}`));

function extracted(base: Context = ROOT_CONTEXT, headers: Record<string, string> = { traceparent: TP }): Context {
  return mesh.extract(base, headers, defaultTextMapGetter);
}

describe('extracted context', () => {
  test('reads the remote span, the random flag and the extraction, and falls through to its parent', () => {
    const parentKey = createContextKey('parent');
    const ctx = extracted(ROOT_CONTEXT.setValue(parentKey, 'kept'));
    expect(trace.getSpanContext(ctx)).toMatchObject({
      traceId: '0af7651916cd43dd8448eb211c80319c',
      spanId: 'b7ad6b7169203331',
      traceFlags: 3,
      isRemote: true,
    });
    expect(trace.getSpan(ctx)).toBe(trace.getSpan(ctx));
    expect(extractionOf(ctx)?.outcome.outcome).toBe('continued');
    expect(ctx.getValue(parentKey)).toBe('kept');
  });

  test('a request without a trace keeps the span of the context it was extracted into', () => {
    const local = trace.setSpanContext(ROOT_CONTEXT, {
      traceId: '1'.repeat(32),
      spanId: '2'.repeat(16),
      traceFlags: 1,
    });
    const ctx = extracted(local, {});
    expect(trace.getSpanContext(ctx)?.traceId).toBe('1'.repeat(32));
    expect(extractionOf(ctx)?.outcome.outcome).toBe('missing');
  });

  test('setSpan, deleteSpan, setBaggage and deleteBaggage behave as on the API context', () => {
    const ctx = extracted(ROOT_CONTEXT, { traceparent: TP, baggage: 'a=1' });
    const span = trace.wrapSpanContext({ traceId: '3'.repeat(32), spanId: '4'.repeat(16), traceFlags: 1 });
    const withSpan = trace.setSpan(ctx, span);
    expect(trace.getSpan(withSpan)).toBe(span);
    expect(trace.getSpan(trace.deleteSpan(withSpan))).toBeUndefined();
    expect(trace.getSpanContext(ctx)?.traceId).toBe('0af7651916cd43dd8448eb211c80319c');
    expect(propagation.getBaggage(ctx)?.getEntry('a')?.value).toBe('1');
    expect(propagation.getBaggage(propagation.deleteBaggage(ctx))).toBeUndefined();
    const other = propagation.createBaggage({ b: { value: '2' } });
    expect(propagation.getBaggage(propagation.setBaggage(ctx, other))).toBe(other);
  });

  test('any sequence of sets and deletes reads like the same sequence on ROOT_CONTEXT', () => {
    const op = fc.tuple(fc.integer({ min: 0, max: KEYS.length - 1 }), fc.option(fc.integer(), { nil: undefined }));
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
        let ours = extracted();
        let theirs: Context = ROOT_CONTEXT;
        const contexts: Array<[Context, Context]> = [];
        for (const [k, v] of ops) {
          ours = v === undefined ? ours.deleteValue(KEYS[k]) : ours.setValue(KEYS[k], v);
          theirs = v === undefined ? theirs.deleteValue(KEYS[k]) : theirs.setValue(KEYS[k], v);
          contexts.push([ours, theirs]);
        }
        // Every intermediate context stays as it was: none is changed by a later set.
        for (const [o, t] of contexts) for (const key of KEYS) expect(o.getValue(key)).toBe(t.getValue(key));
        expect(trace.getSpanContext(ours)?.spanId).toBe('b7ad6b7169203331');
        expect(extractionOf(ours)?.outcome.outcome).toBe('continued');
      }),
      { numRuns: 300 },
    );
  });
});

describe('tracestate and baggage are validated on first use', () => {
  test('an invalid tracestate is dropped when first read, counted once, and never forwarded', async () => {
    const before = await tracing.droppedCounts();
    const ctx = extracted(ROOT_CONTEXT, { traceparent: TP, tracestate: 'Bad Key=1,ok=2' });
    const state = trace.getSpanContext(ctx)?.traceState;
    expect(state).toBeInstanceOf(MeshTraceState);
    const out: Record<string, string> = {};
    mesh.inject(ctx, out, defaultTextMapSetter);
    mesh.inject(ctx, out, defaultTextMapSetter);
    expect(out.traceparent).toBe('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03');
    expect(out.tracestate).toBeUndefined();
    expect(state?.get('ok')).toBeUndefined();
    const after = await tracing.droppedCounts();
    expect((after['tracestate:bad-member'] ?? 0) - (before['tracestate:bad-member'] ?? 0)).toBe(1);
  });

  test('a valid tracestate reads and forwards as sent', () => {
    const ctx = extracted(ROOT_CONTEXT, { traceparent: TP, tracestate: 'congo=t61rcWkgMzE, rojo=00f067aa0ba902b7' });
    const state = trace.getSpanContext(ctx)?.traceState;
    expect(state?.get('rojo')).toBe('00f067aa0ba902b7');
    expect(state?.serialize()).toBe('congo=t61rcWkgMzE,rojo=00f067aa0ba902b7');
  });

  test('baggage without a valid member reads as the baggage the context held before', async () => {
    const held = propagation.setBaggage(ROOT_CONTEXT, propagation.createBaggage({ tenant: { value: 'acme' } }));
    const before = await tracing.droppedCounts();
    const ctx = extracted(held, { traceparent: TP, baggage: '=novalue,bad key=1' });
    expect(propagation.getBaggage(ctx)?.getAllEntries()).toEqual([['tenant', { value: 'acme' }]]);
    const after = await tracing.droppedCounts();
    expect((after['baggage:bad-member'] ?? 0) - (before['baggage:bad-member'] ?? 0)).toBe(2);
    expect(
      propagation.getBaggage(extracted(ROOT_CONTEXT, { traceparent: TP, baggage: 'bad key=1' }))?.getAllEntries(),
    ).toEqual([]);
  });

  test('inbound baggage forwards the same header on every outbound call, within each budget', () => {
    const ctx = extracted(ROOT_CONTEXT, {
      traceparent: TP,
      baggage: 'userId=alice,serverNode=DF%2028,isProduction=false',
    });
    const bag = propagation.getBaggage(ctx)!;
    expect(serializeBaggage(bag).header).toBe('userId=alice,serverNode=DF%2028,isProduction=false');
    expect(serializeBaggage(bag, 20)).toEqual({ header: 'userId=alice', dropped: 2 });
    expect(serializeBaggage(bag).header).toBe('userId=alice,serverNode=DF%2028,isProduction=false');
    const changed = bag.setEntry('userId', { value: 'bob' });
    expect(serializeBaggage(changed).header).toBe('userId=bob,serverNode=DF%2028,isProduction=false');
  });

  test('a value that cannot be encoded (a lone surrogate) is dropped, not thrown', () => {
    const bag = propagation.createBaggage({ a: { value: 'x\ud800' }, b: { value: 'ok' } });
    expect(serializeBaggage(bag)).toEqual({ header: 'b=ok', dropped: 1 });
    const out: Record<string, string> = {};
    expect(() => mesh.inject(propagation.setBaggage(ROOT_CONTEXT, bag), out, defaultTextMapSetter)).not.toThrow();
    expect(out.baggage).toBe('b=ok');
  });
});
