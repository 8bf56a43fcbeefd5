import { ROOT_CONTEXT, context, createContextKey } from '@opentelemetry/api';
import type { Context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { EventEmitter } from 'node:events';
import { IncomingMessage, ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import { bindEmitter, bindingOf } from './emitter';
import { usePublicApiOnly } from './otel-internals';

const KEY = createContextKey('emitter-test');
const named = (name: string): Context => ROOT_CONTEXT.setValue(KEY, name);
const seen = (): string => (context.active().getValue(KEY) as string | undefined) ?? 'none';

beforeAll(() => void context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable()));
afterAll(() => context.disable());

/** A request emitter whose prototype a framework replaced, as Express does to req and res. */
class Message extends EventEmitter {}
const frameworkProto = Object.create(Message.prototype) as Message;
const subAppProto = Object.create(frameworkProto) as Message;
function frameworkMessage(proto: Message = frameworkProto): Message {
  const m = new Message();
  Object.setPrototypeOf(m, proto);
  return m;
}

const KINDS: ReadonlyArray<readonly [string, () => EventEmitter]> = [
  ['an EventEmitter', () => new EventEmitter()],
  ['an IncomingMessage', () => new IncomingMessage(new Socket())],
  ['a ServerResponse', () => new ServerResponse(new IncomingMessage(new Socket()))],
  ['an emitter on a framework prototype', () => frameworkMessage()],
  ['an emitter on a sub-app prototype', () => frameworkMessage(subAppProto)],
];

type Binder = (ctx: Context, ee: EventEmitter) => void;
const BINDERS: ReadonlyArray<readonly [string, Binder]> = [
  ['bindEmitter', (ctx, ee) => void bindEmitter(ctx, ee)],
  ['context.bind', (ctx, ee) => void context.bind(ctx, ee)],
  [
    'bindEmitter on the public route (the shortcut switched off)',
    (ctx, ee) => {
      usePublicApiOnly(true);
      try {
        bindEmitter(ctx, ee);
      } finally {
        usePublicApiOnly(false);
      }
    },
  ],
];

/** Adds, removes and emits in every way there is, and records what each listener saw. */
function script(ee: EventEmitter, bind: Binder): string[] {
  const log: string[] = [];
  const listener = (name: string) => () => log.push(`${name} in ${seen()}`);
  ee.on('x', listener('added before binding'));
  bind(named('request'), ee);
  const on = listener('on');
  ee.on('x', on);
  ee.addListener('x', listener('addListener'));
  ee.prependListener('x', listener('prependListener'));
  ee.once('x', listener('once'));
  ee.prependOnceListener('x', listener('prependOnceListener'));
  const removedOnce = listener('once removed before it fired');
  ee.once('x', removedOnce);
  ee.removeListener('x', removedOnce);
  const offed = listener('off');
  ee.on('x', offed);
  ee.off('x', offed);
  ee.on('y', listener('y'));
  context.with(named('emitter'), () => {
    ee.emit('x');
    log.push(`after the first emit: ${ee.listenerCount('x')} listeners`);
    ee.emit('x');
    ee.removeListener('x', on);
    log.push(`after removing on: ${ee.listenerCount('x')} listeners`);
    ee.removeAllListeners('y');
    ee.emit('y');
    ee.removeAllListeners();
    ee.on('x', listener('added after removeAllListeners'));
    ee.emit('x');
  });
  return log;
}

describe.each(KINDS)('%s', (_kind, make) => {
  test('bindEmitter does what the context manager does', () => {
    const mine = script(make(), BINDERS[0][1]);
    expect(mine).toEqual(script(make(), BINDERS[1][1]));
    // What both do: listeners added after binding run in the request's context, the others where they are emitted.
    expect(mine).toContain('on in request');
    expect(mine).toContain('added before binding in emitter');
    expect(mine).not.toContain('once removed before it fired in request');
    expect(mine.filter((l) => l.startsWith('once in'))).toEqual(['once in request']);
  });

  test('bindEmitter on the public route does the same, and keeps its record for the caller', () => {
    const ee = make();
    expect(script(ee, BINDERS[2][1])).toEqual(script(make(), BINDERS[1][1]));
    expect(bindingOf(ee)).toBeDefined();
  });

  test('the first context bound stays', () => {
    const ee = make();
    bindEmitter(named('first'), ee);
    bindEmitter(named('second'), ee);
    let got = '';
    ee.on('x', () => (got = seen()));
    ee.emit('x');
    expect(got).toBe('first');
  });

  test("an emitter the context manager bound first keeps the manager's context", () => {
    const ee = make();
    context.bind(named('manager'), ee);
    bindEmitter(named('meshtrace'), ee);
    let got = '';
    ee.on('x', () => (got = seen()));
    ee.emit('x');
    expect(got).toBe('manager');
  });

  test('a listener that is not a function is refused as without binding', () => {
    const ee = make();
    bindEmitter(named('request'), ee);
    expect(() => ee.on('x', 42 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(ee.listenerCount('x')).toBe(0);
  });

  test('the binding record keeps what the caller attaches', () => {
    const ee = make();
    expect(bindingOf(ee)).toBeUndefined();
    bindEmitter(named('a'), ee).attachment = 'trace';
    expect(bindEmitter(named('b'), ee).attachment).toBe('trace');
    expect(bindingOf(ee)?.attachment).toBe('trace');
  });
});

describe('an emitter on a framework prototype', () => {
  test('gains one property, not one per listener method', () => {
    const ee = frameworkMessage();
    const before = Reflect.ownKeys(ee).length;
    bindEmitter(named('request'), ee);
    expect(Reflect.ownKeys(ee).length - before).toBe(1);
  });

  test('leaves the listeners of unbound emitters on the same prototype where they are emitted', () => {
    bindEmitter(named('request'), frameworkMessage());
    const other = frameworkMessage();
    let got = '';
    other.on('x', () => (got = seen()));
    context.with(named('emitter'), () => other.emit('x'));
    expect(got).toBe('emitter');
  });

  test('stays bound while the framework moves it between its prototypes (a mounted sub-app)', () => {
    const ee = frameworkMessage(subAppProto);
    bindEmitter(named('request'), ee);
    Object.setPrototypeOf(ee, frameworkProto);
    let got = '';
    ee.on('x', () => (got = seen()));
    ee.emit('x');
    expect(got).toBe('request');
  });

  test('with a listener method overridden in front of the patched prototype, is bound all the same', () => {
    const overriding = Object.create(frameworkProto) as Message & { on: EventEmitter['on'] };
    overriding.on = function on(this: EventEmitter, event: string | symbol, listener: (...args: unknown[]) => void) {
      return EventEmitter.prototype.on.call(this, event, listener);
    };
    const ee = frameworkMessage(overriding);
    bindEmitter(named('request'), ee);
    let got = '';
    ee.on('x', () => (got = seen()));
    ee.emit('x');
    expect(got).toBe('request');
  });
});
