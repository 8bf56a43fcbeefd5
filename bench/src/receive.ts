// `meshtrace receive` throughput: OTLP protobuf bodies made by @opentelemetry/otlp-transformer from
// spans a real SDK made, (a) decoded and analysed in this process, (b) posted over loopback to a
// receiver in this process, which decodes them into its window; the window is analysed at the end.
import { createRequire } from 'node:module';
import { ROOT_CONTEXT, SpanKind, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import { decodeTraces, startReceiver, summarize } from '@meshtrace/doctor';
import { fmt, table } from './stats';
import type { Section } from './stats';

// otlp-transformer is a development dependency of the doctor, whose tests already make bodies with it.
interface Serializer {
  serializeRequest(spans: ReadableSpan[]): Uint8Array | undefined;
}
const fromDoctor = createRequire(require.resolve('@meshtrace/doctor/package.json'));
const { ProtobufTraceSerializer } = fromDoctor('@opentelemetry/otlp-transformer') as {
  ProtobufTraceSerializer: Serializer;
};

/** Options of {@link benchReceive}. */
export interface ReceiveBenchOptions {
  /** Bodies decoded and posted, each of `tracesPerBody` traces of 5 spans (gateway → orders → inventory), all ids and keys distinct. */
  bodies: number;
  tracesPerBody: number;
  /** Posts in flight at once. */
  concurrency: number;
}

// The full run posts 200 000 spans into the default window of 100 000, so eviction is part of it.
export const RECEIVE_FULL: ReceiveBenchOptions = { bodies: 2000, tracesPerBody: 20, concurrency: 8 };
export const RECEIVE_QUICK: ReceiveBenchOptions = { bodies: 400, tracesPerBody: 20, concurrency: 8 };

/** One body's spans: per trace a SERVER and CLIENT span at the gateway and orders, and an inventory SERVER span, with the attributes meshtrace records. */
let request = 0;

function body(traces: number): Buffer {
  const exporter = new InMemorySpanExporter();
  // One resource for all (bench has no @opentelemetry/resources); the analysis does not need service names to differ.
  const provider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] });
  const tracers = {
    gateway: provider.getTracer('gateway'),
    orders: provider.getTracer('orders'),
    inventory: provider.getTracer('inventory'),
  };
  for (let t = 0; t < traces; t++) {
    const i = request++;
    const attrs = (path: string) => ({
      'url.path': path,
      'server.address': '10.0.0.1',
      'server.port': 8080,
      'meshtrace.propagation.outcome': 'continued',
      'http.request.header.x-request-id': [`r-${i}`],
    });
    const g = tracers.gateway.startSpan('GET /checkout/:id', {
      kind: SpanKind.SERVER,
      attributes: attrs(`/checkout/${i}`),
    });
    const gc = tracers.gateway.startSpan(
      'GET',
      {
        kind: SpanKind.CLIENT,
        attributes: { 'url.full': `http://orders:80/orders/${i}`, 'http.response.status_code': 200 },
      },
      trace.setSpan(ROOT_CONTEXT, g),
    );
    const o = tracers.orders.startSpan(
      'GET /orders/:id',
      { kind: SpanKind.SERVER, attributes: attrs(`/orders/${i}`) },
      trace.setSpan(ROOT_CONTEXT, gc),
    );
    const oc = tracers.orders.startSpan(
      'GET',
      { kind: SpanKind.CLIENT, attributes: { 'url.full': `http://inventory:80/stock/${i}` } },
      trace.setSpan(ROOT_CONTEXT, o),
    );
    // Every fourth inventory call loses its trace: a root the analysis has to tie to its caller.
    const inv = tracers.inventory.startSpan(
      'GET /stock/:sku',
      { kind: SpanKind.SERVER, attributes: attrs(`/stock/${i}`) },
      i % 4 === 0 ? ROOT_CONTEXT : trace.setSpan(ROOT_CONTEXT, oc),
    );
    for (const s of [inv, oc, o, gc, g]) s.end();
  }
  return Buffer.from(ProtobufTraceSerializer.serializeRequest(exporter.getFinishedSpans())!);
}

const mib = (bytes: number): string => fmt(bytes / 2 ** 20, 0);

/**
 * Spans per second decoded and analysed, in process and through a receiver over loopback, with
 * the process's RSS after each; a Markdown section like the other parts of the benchmark.
 */
export async function benchReceive(
  options: ReceiveBenchOptions = RECEIVE_FULL,
  log: (line: string) => void = () => undefined,
): Promise<Section> {
  const bodies = Array.from({ length: options.bodies }, () => body(options.tracesPerBody));
  const spansPerBody = options.tracesPerBody * 5;
  const total = options.bodies * spansPerBody;
  const rows: string[][] = [];

  log(`receive: decoding ${fmt(total)} spans in process`);
  let start = performance.now();
  const all = bodies.flatMap((b) => decodeTraces(b, 'application/x-protobuf'));
  const decodeMs = performance.now() - start;
  const decoded = all.length;
  start = performance.now();
  const summary = summarize(all);
  const analyseMs = performance.now() - start;
  rows.push([
    'decode in process (`decodeTraces`)',
    fmt(decoded),
    fmt(decoded / (decodeMs / 1000)),
    mib(process.memoryUsage().rss),
  ]);
  rows.push([
    `analyse a window of ${fmt(all.length)} spans (\`summarize\`, ${summary.orphans.length} orphans tied)`,
    fmt(all.length),
    fmt(all.length / (analyseMs / 1000)),
    mib(process.memoryUsage().rss),
  ]);

  log(`receive: posting ${fmt(options.bodies)} bodies over loopback, ${options.concurrency} at a time`);
  const receiver = await startReceiver({ port: 0 });
  try {
    const url = `${receiver.url}/v1/traces`;
    let next = 0;
    start = performance.now();
    await Promise.all(
      Array.from({ length: options.concurrency }, async () => {
        while (next < bodies.length) {
          const res = await fetch(url, {
            method: 'POST',
            headers: { 'content-type': 'application/x-protobuf' },
            body: bodies[next++],
          });
          await res.arrayBuffer();
          if (res.status !== 200) throw new Error(`the receiver answered ${res.status}`);
        }
      }),
    );
    const windowSummary = summarize(receiver.spans());
    const ms = performance.now() - start;
    const stats = receiver.stats();
    rows.push([
      `POST over loopback, then analyse the window (${fmt(windowSummary.spans)} spans kept, ${fmt(stats.evictedSpans)} evicted)`,
      fmt(stats.spans),
      fmt(stats.spans / (ms / 1000)),
      mib(process.memoryUsage().rss),
    ]);
  } finally {
    await receiver.close();
  }

  return {
    title: '`meshtrace receive` throughput',
    lines: [
      `OTLP protobuf bodies of ${spansPerBody} spans (${options.tracesPerBody} traces of 5) made by \`@opentelemetry/otlp-transformer\`; RSS of the whole bench process after each row.`,
      '',
      ...table(['what', 'spans', 'spans / s', 'RSS MiB'], ['l', 'r', 'r', 'r'], rows),
    ],
    checks: [],
  };
}
