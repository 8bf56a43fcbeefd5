import { detectFormat, parseEnvoyLine, parseIstioLine, parseNginxLine, splitFields } from './formats';

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
      'envoy default + traceparent',
      parseEnvoyLine,
      ENVOY,
      { kind: 'upstream', name: '10.244.1.17:8080', traceparent: TP },
    ],
    [
      'istio text, traceparent -',
      parseEnvoyLine,
      ISTIO_TEXT,
      { kind: 'upstream', name: 'outbound|8080||payments.shop.svc.cluster.local', traceparent: undefined },
    ],
    [
      'envoy without upstream host',
      parseEnvoyLine,
      ENVOY.replace('"10.244.1.17:8080"', '"-"'),
      { kind: 'upstream', name: 'orders.shop.svc.cluster.local:8080', traceparent: TP },
    ],
    [
      'envoy custom with key=value only',
      parseEnvoyLine,
      `[2024-05-14T09:12:03.512Z] "GET /a?b=1 HTTP/1.1" 503 request_id=abc traceparent=${TP}`,
      { kind: 'route', name: 'GET /a', traceparent: TP },
    ],
    ['istio json', parseIstioLine, ISTIO_JSON, { kind: 'upstream', name: 'inbound|8080||', traceparent: TP }],
    [
      'istio json, traceparent null',
      parseIstioLine,
      ISTIO_JSON.replace(`"${TP}"`, 'null'),
      { kind: 'upstream', name: 'inbound|8080||', traceparent: undefined },
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
