import {
  detectFormat,
  looksLikeTraceparent,
  parseEnvoyLine,
  parseIstioLine,
  parseNginxLine,
  splitFields,
  unescapeNginx,
} from './formats';

const TP = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

// Envoy's default format with ` traceparent=%REQ(TRACEPARENT)%` appended.
const ENVOY = `[2024-05-14T09:12:03.512Z] "GET /api/orders/42?expand=items HTTP/1.1" 200 - 0 512 14 12 "10.244.0.1" "curl/8.5.0" "5d3e3c9e-7d2a-4c9b-9a57-2b1b1f0c6f11" "orders.shop.svc.cluster.local:8080" "10.244.1.17:8080" traceparent=${TP}`;
// Istio's TEXT format (Envoy's plus response details, the cluster and addresses), traceparent appended.
const ISTIO_TEXT = `[2024-05-14T09:12:03.512Z] "POST /api/payments HTTP/2" 201 - via_upstream - "-" 348 97 31 30 "-" "orders/1.4.2" "9a1c0e77-55d4-4f0e-b1de-7c1f2a1e8d10" "payments.shop.svc.cluster.local:8080" "10.244.2.9:8080" outbound|8080||payments.shop.svc.cluster.local 10.244.1.17:51234 10.96.44.2:8080 10.244.1.17:51230 - default traceparent=-`;
const ISTIO_JSON = JSON.stringify({
  start_time: '2024-05-14T09:12:03.512Z',
  route_name: 'default',
  method: 'GET',
  path: '/api/orders/42?expand=items',
  protocol: 'HTTP/1.1',
  response_code: 200,
  response_flags: '-',
  bytes_received: 0,
  bytes_sent: 512,
  duration: 14,
  upstream_service_time: '12',
  x_forwarded_for: null,
  user_agent: 'curl/8.5.0',
  request_id: '5d3e3c9e-7d2a-4c9b-9a57-2b1b1f0c6f11',
  authority: 'orders.shop.svc.cluster.local:8080',
  upstream_host: '10.244.1.17:8080',
  upstream_cluster: 'inbound|8080||',
  upstream_local_address: '127.0.0.6:45011',
  downstream_local_address: '10.244.1.17:8080',
  downstream_remote_address: '10.244.0.9:40210',
  requested_server_name: 'outbound_.8080_._.orders.shop.svc.cluster.local',
  traceparent: TP,
});
// nginx `combined` plus "$http_traceparent".
const NGINX_COMBINED = `10.244.0.1 - - [14/May/2024:09:12:03 +0000] "GET /api/orders/42?expand=items HTTP/1.1" 200 512 "-" "Mozilla/5.0 (X11; Linux x86_64)" "${TP}"`;
// The testkit's `log_format mesh '$request_id "$request" $status traceparent="$http_traceparent"'`.
const NGINX_MESH = `3f1d2c4b5a6978a1b2c3d4e5f6a7b8c9 "GET /orders/7 HTTP/1.1" 200 traceparent="-"`;
const NGINX_UPSTREAM = `10.244.0.1 - - [14/May/2024:09:12:03 +0000] "GET /health HTTP/1.1" 200 2 "-" "kube-probe/1.29" traceparent="${TP}" upstream_addr=10.244.3.4:3000`;

describe('access-log formats', () => {
  it('splits fields, keeping brackets and quotes, and quoted values inside key=value', () => {
    expect(splitFields('[a b] "c d" e=" f g" h')).toEqual(['[a b]', '"c d"', 'e=" f g"', 'h']);
    expect(splitFields('"unclosed')).toBeUndefined();
    expect(splitFields('[unclosed')).toBeUndefined();
  });

  it.each([
    [
      'envoy default + traceparent: grouped by authority, not by pod address',
      parseEnvoyLine,
      ENVOY,
      { kind: 'upstream', name: 'orders.shop.svc.cluster.local:8080', traceparent: TP },
    ],
    [
      'istio text, traceparent -',
      parseEnvoyLine,
      ISTIO_TEXT,
      { kind: 'upstream', name: 'payments.shop.svc.cluster.local:8080', traceparent: undefined },
    ],
    [
      'envoy without authority: the upstream host',
      parseEnvoyLine,
      ENVOY.replace('"orders.shop.svc.cluster.local:8080"', '"-"'),
      { kind: 'upstream', name: '10.244.1.17:8080', traceparent: TP },
    ],
    [
      'envoy custom with key=value only',
      parseEnvoyLine,
      `[2024-05-14T09:12:03.512Z] "GET /a?b=1 HTTP/1.1" 503 request_id=abc traceparent=${TP}`,
      { kind: 'route', name: 'GET /a', traceparent: TP },
    ],
    [
      'istio json inbound: by authority',
      parseIstioLine,
      ISTIO_JSON,
      { kind: 'inbound', name: 'orders.shop.svc.cluster.local:8080', traceparent: TP },
    ],
    [
      'istio json, traceparent null',
      parseIstioLine,
      ISTIO_JSON.replace(`"${TP}"`, 'null'),
      { kind: 'inbound', name: 'orders.shop.svc.cluster.local:8080', traceparent: undefined },
    ],
    [
      'istio json, no traceparent key, no upstream',
      parseIstioLine,
      '{"method":"GET","path":"/x?y=1","upstream_cluster":null}',
      { kind: 'route', name: 'GET /x', traceparent: undefined },
    ],
    [
      'nginx combined + "$http_traceparent"',
      parseNginxLine,
      NGINX_COMBINED,
      { kind: 'route', name: 'GET /api/orders/42', traceparent: TP },
    ],
    [
      'nginx mesh (testkit), traceparent -',
      parseNginxLine,
      NGINX_MESH,
      { kind: 'route', name: 'GET /orders/7', traceparent: undefined },
    ],
    [
      'nginx with upstream_addr',
      parseNginxLine,
      NGINX_UPSTREAM,
      { kind: 'upstream', name: '10.244.3.4:3000', traceparent: TP },
    ],
    [
      'nginx, folded header kept as logged',
      parseNginxLine,
      `x "GET / HTTP/1.1" 200 traceparent="${TP}, ${TP}"`,
      { kind: 'route', name: 'GET /', traceparent: `${TP}, ${TP}` },
    ],
  ])('%s', (_name, parse, line, expected) => {
    expect(parse(line)).toEqual(expected);
  });

  it.each([
    [
      'envoy line without a traceparent field',
      parseEnvoyLine,
      ENVOY.replace(/ traceparent=.*/, ''),
      'no-traceparent-field',
    ],
    [
      'nginx combined without traceparent',
      parseNginxLine,
      NGINX_COMBINED.replace(/ "00-.*"$/, ''),
      'no-traceparent-field',
    ],
    ['a stack trace in an envoy log', parseEnvoyLine, '    at Object.<anonymous> (/app/index.js:1:1)', 'not-envoy'],
    ['truncated json', parseIstioLine, ISTIO_JSON.slice(0, 80), 'not-istio'],
    ['json that is not an object', parseIstioLine, '[1,2]', 'not-istio'],
    [
      'nginx line without a request',
      parseNginxLine,
      '2024/05/14 09:12:03 [error] 31#31: *1 connect() failed (111: Connection refused)',
      'not-nginx',
    ],
  ])('%s is unparseable', (_name, parse, line, reason) => {
    expect(parse(line)).toBe(reason);
  });

  it.each([
    ['envoy', ENVOY, 'envoy'],
    ['istio text', ISTIO_TEXT, 'envoy'],
    ['istio json', ISTIO_JSON, 'istio'],
    ['nginx combined', NGINX_COMBINED, 'nginx'],
    ['nginx mesh', NGINX_MESH, 'nginx'],
    ['a start-up message', 'starting envoy', undefined],
    ['broken json', '{not json', undefined],
  ])('detects %s', (_name, line, format) => {
    expect(detectFormat(line)).toBe(format);
  });
});

// Istio's default JSON access log (meshConfig.accessLogEncoding: JSON) as a sidecar or gateway prints it, with
// `"traceparent": "%REQ(TRACEPARENT)%"` added: numbers as numbers, absent values as null.
function istioJson(fields: Record<string, unknown>): string {
  return JSON.stringify({
    authority: 'orders.default.svc.cluster.local:8080',
    bytes_received: 0,
    bytes_sent: 131,
    connection_termination_details: null,
    downstream_local_address: '10.96.12.7:8080',
    downstream_remote_address: '10.244.0.12:52814',
    duration: 9,
    method: 'GET',
    path: '/api/orders/42',
    protocol: 'HTTP/1.1',
    request_id: '7f1a6c2e-3b0d-9c4f-a1e2-55d0c9e8b7a3',
    requested_server_name: null,
    response_code: 200,
    response_code_details: 'via_upstream',
    response_flags: '-',
    route_name: 'default',
    start_time: '2024-05-14T09:12:03.512Z',
    upstream_cluster: 'outbound|8080||orders.default.svc.cluster.local',
    upstream_host: '10.244.1.17:8080',
    upstream_local_address: '10.244.0.12:40210',
    upstream_service_time: '8',
    upstream_transport_failure_reason: null,
    user_agent: 'Go-http-client/1.1',
    x_forwarded_for: null,
    traceparent: TP,
    ...fields,
  });
}

// Envoy's default format, as printed, with fields appended.
const ENVOY_DEFAULT = `[2024-05-14T09:12:03.512Z] "GET /api/orders/42 HTTP/1.1" 200 - 0 131 9 8 "-" "Go-http-client/1.1" "7f1a6c2e-3b0d-9c4f-a1e2-55d0c9e8b7a3" "orders:8080" "10.244.1.17:8080"`;
// Istio's default TEXT format, as printed.
const ISTIO_DEFAULT = `[2024-05-14T09:12:03.512Z] "GET /api/orders/42 HTTP/1.1" 200 - via_upstream - "-" 0 131 9 8 "-" "Go-http-client/1.1" "7f1a6c2e-3b0d-9c4f-a1e2-55d0c9e8b7a3" "orders:8080" "10.244.1.17:8080" outbound|8080||orders.default.svc.cluster.local 10.244.0.12:40210 10.96.12.7:8080 10.244.0.12:52814 - default`;

describe('access-log formats as real proxies print them', () => {
  it.each([
    [
      'istio gateway, outbound cluster',
      {},
      { kind: 'upstream', name: 'orders.default.svc.cluster.local:8080', traceparent: TP },
    ],
    [
      'istio outbound cluster with a subset',
      { upstream_cluster: 'outbound|9080|v2|reviews.default.svc.cluster.local', authority: 'reviews:9080' },
      { kind: 'upstream', name: 'reviews.default.svc.cluster.local:9080 (v2)', traceparent: TP },
    ],
    [
      'istio sidecar inbound: the authority, apart from outbound calls to the same service',
      { upstream_cluster: 'inbound|8080||', upstream_host: '10.244.1.17:8080' },
      { kind: 'inbound', name: 'orders.default.svc.cluster.local:8080', traceparent: TP },
    ],
    [
      'istio inbound without authority: the local address',
      { upstream_cluster: 'inbound|8080||', authority: null, upstream_host: '10.244.1.17:8080' },
      { kind: 'inbound', name: '10.244.1.17:8080', traceparent: TP },
    ],
    [
      'istio PassthroughCluster: the authority',
      { upstream_cluster: 'PassthroughCluster', authority: 'api.stripe.com', upstream_host: '54.187.216.72:443' },
      { kind: 'upstream', name: 'api.stripe.com', traceparent: TP },
    ],
    ['traceparent null is missing', { traceparent: null }, { traceparent: undefined }],
    ['traceparent "" is missing', { traceparent: '' }, { traceparent: undefined }],
    ['traceparent "-" is missing', { traceparent: '-' }, { traceparent: undefined }],
    [
      'no traceparent key at all (omit_empty_values) is missing',
      { traceparent: undefined },
      { traceparent: undefined },
    ],
    [
      'under another key containing traceparent, malformed kept',
      { traceparent: undefined, req_traceparent: 'garbage' },
      { traceparent: 'garbage' },
    ],
    ['under a key by its shape', { traceparent: undefined, tp: TP.toUpperCase() }, { traceparent: TP.toUpperCase() }],
  ])('istio json: %s', (_name, fields, expected) => {
    expect(parseIstioLine(istioJson(fields))).toMatchObject(expected);
    expect(detectFormat(istioJson(fields))).toBe('istio');
  });

  it.each([
    [
      'envoy default + "%REQ(TRACEPARENT)%"',
      `${ENVOY_DEFAULT} "${TP}"`,
      { kind: 'upstream', name: 'orders:8080', traceparent: TP },
    ],
    [
      'envoy default + "%REQ(TRACEPARENT)%", absent',
      `${ENVOY_DEFAULT} "-"`,
      { name: 'orders:8080', traceparent: undefined },
    ],
    [
      'envoy default + "%REQ(TRACEPARENT)%", malformed',
      `${ENVOY_DEFAULT} "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"`,
      { name: 'orders:8080', traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331' },
    ],
    [
      'envoy default + "%REQ(TRACEPARENT)%" "%REQ(TRACESTATE)%"',
      `${ENVOY_DEFAULT} "-" "congo=t61rcWkgMzE"`,
      { traceparent: undefined },
    ],
    ['envoy default + tp=%REQ(TRACEPARENT)%', `${ENVOY_DEFAULT} tp=${TP}`, { traceparent: TP }],
    ['envoy default + tp=%REQ(TRACEPARENT)%, absent', `${ENVOY_DEFAULT} tp=-`, { traceparent: undefined }],
    [
      'envoy default + trace="%REQ(TRACEPARENT)%"',
      `${ENVOY_DEFAULT} trace="${TP}"`,
      { name: 'orders:8080', traceparent: TP },
    ],
    ['envoy default + traceparent="", empty header', `${ENVOY_DEFAULT} traceparent=""`, { traceparent: undefined }],
    [
      'istio text + "%REQ(TRACEPARENT)%"',
      `${ISTIO_DEFAULT} "${TP}"`,
      { kind: 'upstream', name: 'orders.default.svc.cluster.local:8080', traceparent: TP },
    ],
    [
      'istio text + "%REQ(TRACEPARENT)%", absent',
      `${ISTIO_DEFAULT} "-"`,
      { name: 'orders.default.svc.cluster.local:8080', traceparent: undefined },
    ],
    [
      'istio text inbound',
      `${ISTIO_DEFAULT.replace('outbound|8080||orders.default.svc.cluster.local', 'inbound|8080||')} "${TP}"`,
      { kind: 'inbound', name: 'orders:8080', traceparent: TP },
    ],
    [
      'custom format, key by shape',
      `[2024-05-14T09:12:03.512Z] "GET /a HTTP/1.1" 200 upstream_cluster=orders x_tp="${TP}"`,
      { kind: 'upstream', name: 'orders', traceparent: TP },
    ],
  ])('envoy text: %s', (_name, line, expected) => {
    expect(parseEnvoyLine(line)).toMatchObject(expected);
  });

  it('envoy default without an appended field has no traceparent field', () => {
    expect(parseEnvoyLine(ENVOY_DEFAULT)).toBe('no-traceparent-field');
    expect(parseEnvoyLine(ISTIO_DEFAULT)).toBe('no-traceparent-field');
  });

  // log_format json escape=json '{"time_iso8601":"$time_iso8601",…,"traceparent":"$http_traceparent"}'
  const nginxJson = (fields: Record<string, unknown>) =>
    JSON.stringify({
      time_iso8601: '2024-05-14T09:12:03+00:00',
      remote_addr: '10.244.0.1',
      request: 'GET /api/orders/42?expand=items HTTP/1.1',
      status: '200',
      body_bytes_sent: '512',
      http_referer: '',
      http_user_agent: 'Mozilla/5.0 "quoted"',
      upstream_addr: '10.244.3.4:3000',
      http_traceparent: TP,
      ...fields,
    });

  it.each([
    ['escape=json', {}, { kind: 'upstream', name: '10.244.3.4:3000', traceparent: TP }],
    ['escape=json, header absent ("")', { http_traceparent: '' }, { traceparent: undefined }],
    [
      'escape=json, retried upstream: the last one',
      { upstream_addr: '10.244.3.4:3000, 10.244.3.5:3000' },
      { kind: 'upstream', name: '10.244.3.5:3000' },
    ],
    [
      'escape=json, no upstream: method and uri',
      { request: undefined, upstream_addr: '', request_method: 'POST', request_uri: '/pay?x=1' },
      { kind: 'route', name: 'POST /pay' },
    ],
  ])('nginx %s', (_name, fields, expected) => {
    expect(parseNginxLine(nginxJson(fields))).toMatchObject(expected);
    expect(detectFormat(nginxJson(fields))).toBe('nginx');
  });

  it('nginx default escaping: \\xHH read back in the request, user agent and traceparent', () => {
    const line = `10.244.0.1 - - [14/May/2024:09:12:03 +0000] "GET /caf\\xC3\\xA9?q=\\x22x\\x22 HTTP/1.1" 200 512 "-" "say \\x22hi\\x22" "\\x22${TP}\\x22"`;
    expect(parseNginxLine(line)).toEqual({ kind: 'route', name: 'GET /café', traceparent: `"${TP}"` });
    expect(unescapeNginx('a\\x5Cb\\x22')).toBe('a\\b"');
    expect(parseNginxLine(line.replace(/"\\x22.*\\x22"$/, '"-"'))).toMatchObject({ traceparent: undefined });
  });

  it('JSON that is not an access log is no format', () => {
    const app = '{"level":"info","time":"2024-05-14T09:12:03Z","msg":"listening on :8080"}';
    expect(detectFormat(app)).toBeUndefined();
    expect(parseIstioLine(app)).toBe('not-istio');
    expect(parseNginxLine(app)).toBe('not-nginx');
  });

  it('knows a traceparent by its shape, not a request id or a date', () => {
    expect(looksLikeTraceparent(TP)).toBe(true);
    expect(looksLikeTraceparent(TP.toUpperCase())).toBe(true);
    expect(looksLikeTraceparent('7f1a6c2e-3b0d-9c4f-a1e2-55d0c9e8b7a3')).toBe(false);
    expect(looksLikeTraceparent('2024-05-14T09:12:03.512Z')).toBe(false);
    expect(looksLikeTraceparent('80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1')).toBe(false);
  });
});
