import { context } from '@opentelemetry/api';
import type { Context } from '@opentelemetry/api';
import { onlyPublicApi } from './otel-internals';

// Binds a request's emitters the way the context manager's own `bind(context, emitter)` does:
// listeners added afterwards run in the bound context, removeListener/off find them by the function
// the caller passed, and an emitter keeps the first context it was bound to. It differs in how, for
// the per-request path:
// - The patched methods are shared functions, made once per method patched, so binding allocates no
//   closures per emitter; the state is one Symbol-keyed record on the emitter, which also carries what
//   the caller keeps with it (the request's trace). A WeakMap keyed by the emitter would cost more:
//   V8's garbage collector pays microseconds per entry whose value leads back to its key.
// - Express (and any framework that gives req/res a prototype of its own per request) leaves those
//   objects on a V8 hidden class that is never shared: every property added afterwards allocates a new
//   one, microseconds each, and the context manager adds nine to each emitter. For such an emitter the
//   methods are patched once on the framework's prototype next to the class's, and only the state
//   record is added to the object.
// - A listener's wrapper does not copy the listener's `length`: the context manager's
//   `Object.defineProperty` for it costs several times the wrapping. It points at the listener through
//   `.listener`, as Node's once() wrappers do, instead of a table from listener to wrapper.

type Listener = (...args: unknown[]) => unknown;
type Method = (this: Bindable, ...args: unknown[]) => unknown;

const STATE = Symbol('meshtrace.bound-context');

/** What {@link bindEmitter} keeps on an emitter. */
export interface EmitterBinding {
  /** The context listeners run in; undefined when another binder had bound the emitter first. */
  readonly context: Context | undefined;
  /** Whatever the caller keeps with the emitter, in the same record so the object gains one property only. */
  attachment: unknown;
}

type Binding = EmitterBinding;

type Bindable = Record<string | symbol, unknown> & { [STATE]?: Binding };

const ADD_METHODS: readonly string[] = ['addListener', 'on', 'prependListener', 'prependOnceListener', 'once'];
const METHODS: readonly string[] = [...ADD_METHODS, 'removeListener', 'off'];

/** Patched method by the method it wraps, so each original is wrapped once and shared by every emitter. */
const patches = new WeakMap<Method, Method>();
const patched = new WeakSet<Method>();
/** `once` adds through `on` (and `prependOnceListener` through `prependListener`): only the outer call wraps. */
let adding = false;

/** `listener` run in `ctx`, as `context.bind(ctx, listener)` wraps it. */
function bindListener(ctx: Context, listener: Listener): Listener {
  return function bound(this: unknown, ...args: unknown[]): unknown {
    return context.with(ctx, listener, this, ...args);
  };
}

function patchAdd(original: Method): Method {
  return function addBound(this: Bindable, event: unknown, listener: unknown): unknown {
    const binding = this[STATE];
    // Not a function: the original method throws as it would have.
    if (binding?.context === undefined || adding || typeof listener !== 'function')
      return original.call(this, event, listener);
    const wrapped = bindListener(binding.context, listener as Listener) as Listener & { listener?: Listener };
    // Node's own removeListener and listeners() look through `.listener`, as for its once() wrappers:
    // no table from listener to wrapper is needed (a WeakMap entry per listener costs the GC more).
    wrapped.listener = listener as Listener;
    adding = true;
    try {
      return original.call(this, event, wrapped);
    } finally {
      adding = false;
    }
  };
}

type Wrapped = Listener & { listener?: Wrapped };

/**
 * A listener added with once() after binding sits in Node's once wrapper around ours, two `.listener`
 * steps from the caller's function, where Node does not look: remove the last entry that leads to it,
 * as Node removes the last match.
 */
function patchRemove(original: Method): Method {
  return function removeBound(this: Bindable, event: unknown, listener: unknown): unknown {
    if (this[STATE]?.context === undefined || typeof listener !== 'function')
      return original.call(this, event, listener);
    const raw = (this as unknown as { rawListeners(event: unknown): Wrapped[] }).rawListeners(event);
    for (let i = raw.length - 1; i >= 0; i--) {
      const entry = raw[i];
      if (entry === listener || entry.listener === listener || entry.listener?.listener === listener)
        return original.call(this, event, entry);
    }
    return original.call(this, event, listener);
  };
}

function patchOf(name: string, original: Method): Method {
  let p = patches.get(original);
  if (p === undefined) {
    p = ADD_METHODS.includes(name) ? patchAdd(original) : patchRemove(original);
    patches.set(original, p);
    patched.add(p);
  }
  return p;
}

/** True when every listener method of `ee` already goes through the patched ones. */
function routed(ee: Bindable): boolean {
  for (const m of METHODS) if (typeof ee[m] === 'function' && !patched.has(ee[m] as Method)) return false;
  return true;
}

function install(target: Bindable): void {
  for (const m of METHODS) {
    const original = target[m];
    if (typeof original === 'function' && !patched.has(original as Method)) target[m] = patchOf(m, original as Method);
  }
}

/** What an instance of a class gets, for classes whose prototype has every listener method. */
interface Plan {
  readonly originals: readonly Method[];
  readonly patches: readonly Method[];
}

const plans = new WeakMap<object, Plan | null>();

/** The patched methods for instances of `proto`, made once; null when it lacks or already routes a method. */
function planOf(proto: Bindable): Plan | null {
  let plan = plans.get(proto);
  if (plan === undefined) {
    const originals = METHODS.map((m) => proto[m]);
    plan = originals.every((o) => typeof o === 'function' && !patched.has(o as Method))
      ? { originals: originals as Method[], patches: originals.map((o, i) => patchOf(METHODS[i], o as Method)) }
      : null;
    plans.set(proto, plan);
  }
  return plan;
}

/** `install` for an instance of a class, in one fixed sequence of stores so V8 reuses the hidden classes. */
function installOnInstance(ee: Bindable, proto: Bindable): void {
  const plan = planOf(proto);
  const o = plan?.originals;
  // Someone may have replaced a method on the prototype since the plan was made.
  if (
    plan == null ||
    o === undefined ||
    proto.addListener !== o[0] ||
    proto.on !== o[1] ||
    proto.prependListener !== o[2] ||
    proto.prependOnceListener !== o[3] ||
    proto.once !== o[4] ||
    proto.removeListener !== o[5] ||
    proto.off !== o[6]
  ) {
    install(ee);
    return;
  }
  const p = plan.patches;
  ee.addListener = p[0];
  ee.on = p[1];
  ee.prependListener = p[2];
  ee.prependOnceListener = p[3];
  ee.once = p[4];
  ee.removeListener = p[5];
  ee.off = p[6];
}

/**
 * Prototypes, put in front of a class's by a framework, whose chain routes every listener method through the patched
 * ones.
 */
const routedPrototypes = new WeakSet<object>();

/**
 * Binds the listeners later added to a request's emitter (`req`, `res`) to `ctx`, as
 * `context.bind(ctx, emitter)` does; an emitter already bound keeps its context. Returns the
 * emitter's binding record, new or not.
 */
export function bindEmitter(ctx: Context, emitter: object): EmitterBinding {
  const ee = emitter as Bindable;
  const existing = ee[STATE];
  if (existing !== undefined) return existing;
  // On objects whose hidden class is their own every property read is a slow lookup: read as few as possible.
  const ownOn = Object.hasOwn(ee, 'on');
  if (onlyPublicApi() || (ownOn && !patched.has(ee.on as Method))) {
    // The public route, or bound by another binder already (an HTTP instrumentation's): the context
    // manager's own binding, which leaves an earlier one standing.
    context.bind(ctx, emitter);
    const unbound: Binding = { context: undefined, attachment: undefined };
    ee[STATE] = unbound;
    return unbound;
  }
  const binding: Binding = { context: ctx, attachment: undefined };
  ee[STATE] = binding;
  const proto = Object.getPrototypeOf(ee) as Bindable | null;
  if (!ownOn && proto !== null && routedPrototypes.has(proto)) return binding;
  const classProto = (ee.constructor as { prototype?: unknown } | undefined)?.prototype;
  if (proto !== null && proto !== classProto && typeof classProto === 'object' && classProto !== null) {
    // A prototype the framework put in front of the class's: patch the one next to the class's, shared by
    // all the framework's apps and sub-apps, so the methods stay patched while the request moves between them.
    let target = proto;
    let up = Object.getPrototypeOf(target) as Bindable | null;
    for (; up !== null && up !== classProto; up = Object.getPrototypeOf(up) as Bindable | null) target = up;
    if (up !== null) {
      install(target);
      if (routed(proto)) {
        routedPrototypes.add(proto);
        if (!ownOn) return binding;
      }
    }
  }
  // The class's own prototype (patched for nobody), or something in front of the one patched overrides a listener
  // method.
  if (ownOn || proto === null) {
    if (!routed(ee)) install(ee);
  } else if (!routed(proto)) {
    installOnInstance(ee, proto);
  }
  return binding;
}

/** The binding record {@link bindEmitter} left on `emitter`, if any. */
export function bindingOf(emitter: object): EmitterBinding | undefined {
  return (emitter as Bindable)[STATE];
}
