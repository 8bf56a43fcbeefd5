import type { IncomingMessage, ServerResponse } from 'node:http';
import { rootsIn, tracesCarrying } from '../evidence';
import type { Span } from '../model';

/**
 * Where a running receiver answers span queries (`?trace=<id>`, `?probe=<id>`, `?rootsFrom=<ms>&rootsTo=<ms>`) with
 * `{spans: Span[]}`.
 */
export const SPAN_QUERY_PATH = '/api/doctor/spans';

/**
 * Answers `GET /api/doctor/spans?trace=<id>` and `?probe=<id>` from `spans()`; returns false for any
 * other request, which the receiver then answers itself.
 */
export function answerSpanQuery(req: IncomingMessage, res: ServerResponse, spans: () => readonly Span[]): boolean {
  const url = new URL(req.url ?? '/', 'http://receiver');
  if (url.pathname !== SPAN_QUERY_PATH) return false;
  const trace = url.searchParams.get('trace');
  const probe = url.searchParams.get('probe');
  const from = Number(url.searchParams.get('rootsFrom') ?? Number.NaN);
  const to = Number(url.searchParams.get('rootsTo') ?? Number.NaN);
  let status = 200;
  let body: unknown;
  if (req.method !== 'GET') [status, body] = [405, { error: 'use GET' }];
  else if (trace !== null) body = { spans: spans().filter((s) => s.traceId === trace.toLowerCase()) };
  else if (probe !== null) body = { spans: tracesCarrying(spans(), probe) };
  else if (Number.isFinite(from) && Number.isFinite(to))
    body = { spans: rootsIn(spans(), { startMs: from, endMs: to }) };
  else [status, body] = [400, { error: 'give trace=<trace id>, probe=<probe id>, or rootsFrom=<ms>&rootsTo=<ms>' }];
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  return true;
}
