'use strict';
// The worker side of thread.test.ts. It loads the TypeScript sources the way the jest config maps
// them, so the test needs no build; a real worker would simply require('@meshtrace/handoff').
const Module = require('node:module');
const path = require('node:path');
const { parentPort } = require('node:worker_threads');

require('ts-node').register({
  transpileOnly: true,
  swc: true,
  skipProject: true,
  compilerOptions: { module: 'commonjs', target: 'es2022' },
});
const resolveFilename = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  const workspace = /^@meshtrace\/([a-z0-9-]+)$/.exec(request);
  return resolveFilename.call(
    this,
    workspace ? path.join(__dirname, '..', '..', workspace[1], 'src', 'index.ts') : request,
    ...rest,
  );
};

const { trace } = require('@opentelemetry/api');
const { setupMeshTracing } = require('@meshtrace/node');
const { observe } = require('@meshtrace/testkit');
const { runWithCarrier } = require('@meshtrace/handoff');

// A worker has its own OpenTelemetry globals: it sets up tracing like any service, and this
// processor reports each finished span to the parent.
setupMeshTracing({
  log: false,
  env: {},
  spanProcessors: [
    {
      onStart() {},
      onEnd(span) {
        const { traceId, spanId } = span.spanContext();
        parentPort.postMessage({
          span: { name: span.name, traceId, spanId, parentSpanId: span.parentSpanContext?.spanId },
        });
      },
      forceFlush: () => Promise.resolve(),
      shutdown: () => Promise.resolve(),
    },
  ],
});

const tasks = {
  observe,
  span: () =>
    trace.getTracer('worker').startActiveSpan('resize image', (span) => {
      span.end();
      return span.spanContext().spanId;
    }),
};

parentPort.on('message', ({ id, task, carrier }) => {
  const result = carrier === undefined ? tasks[task]() : runWithCarrier(carrier, tasks[task]);
  parentPort.postMessage({ id, result });
});
