import { SpanKind, context, trace } from '@opentelemetry/api';
import type { Span, TextMapGetter, TextMapSetter } from '@opentelemetry/api';
import { InterceptingCall, status as Status } from '@grpc/grpc-js';
import type { Interceptor, InterceptorOptions, Metadata, NextCall, StatusObject } from '@grpc/grpc-js';
import { headerGetter } from '@meshtrace/core';
import { callHook, outboundTrace, warner } from '@meshtrace/core/adapter';
import { PACKAGE, resolveOptions, tracerOf } from './options';
import type { MeshGrpcOptions } from './options';
import { endSpan, rpcAttributes, setAddress, targetEndpoint } from './rpc-span';

/** Writes into grpc-js `Metadata`; a value it refuses is reported, never thrown into the call. */
const metadataSetter: TextMapSetter<Metadata> = {
  set(metadata, key, value) {
    try {
      metadata.set(key, value);
    } catch (err) {
      warner.warn(
        `grpc:inject:${key}`,
        () =>
          `${PACKAGE}: could not write ${key} into gRPC metadata: ` +
          (err instanceof Error ? err.message : String(err)),
      );
    }
  },
};

/**
 * A grpc-js client interceptor: one CLIENT span per call, ended when its status arrives, its context in the
 * outgoing metadata, and the caller's context around response callbacks. Put it first in `interceptors`.
 * @example
 * const client = new EchoClient(target, credentials.createInsecure(), { interceptors: [meshClientInterceptor()] });
 */
export function meshClientInterceptor(options?: MeshGrpcOptions): Interceptor {
  const o = resolveOptions(options);
  return function meshClientInterceptor(callOptions: InterceptorOptions, nextCall: NextCall): InterceptingCall {
    const parent = context.active();
    const path = callOptions.method_definition.path;
    const call = nextCall(callOptions);
    return new InterceptingCall(call, {
      start(metadata, _listener, next) {
        // A copy: callers often forward the metadata they received, and stale trace fields in it
        // (a malformed traceparent, the tracestate beside it) must not travel further.
        const outgoing = metadata.clone();
        const ot = outboundTrace(parent, outgoing.toJSON(), headerGetter as TextMapGetter<unknown>);
        const info = { path, metadata: outgoing };
        // Before the call starts, grpc-js reports the channel target as its peer.
        const target = call.getPeer();
        let span: Span | undefined;
        if (!o.ignored(info)) {
          const [name, attributes] = rpcAttributes(path);
          setAddress(attributes, 'server', targetEndpoint(target));
          span = tracerOf(o).startSpan(name, { kind: SpanKind.CLIENT, attributes }, ot.context);
        }
        // Metadata keys are case-insensitive already: one remove takes every spelling of a name.
        const { drop, set } = ot.traceHeaders(span === undefined ? ot.context : trace.setSpan(ot.context, span));
        for (const name of drop) outgoing.remove(name);
        for (const name of Object.keys(set)) metadataSetter.set(outgoing, name, set[name]);
        if (span !== undefined) callHook('requestHook', o.requestHook, span, info);
        next(outgoing, {
          onReceiveMetadata(received, next) {
            context.with(parent, next, undefined, received);
          },
          onReceiveMessage(message, next) {
            context.with(parent, next, undefined, message);
          },
          onReceiveStatus(status: StatusObject, next) {
            if (span !== undefined) {
              const ended = span;
              span = undefined;
              // Once connected, the peer is the address actually called.
              const peer = call.getPeer();
              if (peer !== target) {
                const attributes = {};
                setAddress(attributes, 'network.peer', peer);
                ended.setAttributes(attributes);
              }
              endSpan(ended, status, status.code !== Status.OK, o);
            }
            context.with(parent, next, undefined, status);
          },
        });
      },
    });
  };
}
