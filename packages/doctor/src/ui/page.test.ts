import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setupTestTracing } from '@meshtrace/testkit';
import type { TestTracing } from '@meshtrace/testkit';
import { chromium } from 'playwright-core';
import type { BrowserContext, Page } from 'playwright-core';
import { Stopper } from '../../../../demo/src/lifecycle';
import { createTelemetry } from '../../../../demo/src/telemetry';
import type { Telemetry } from '../../../../demo/src/telemetry';
import { startMesh } from '../../../../demo/src/topology';
import type { Mesh } from '../../../../demo/src/topology';
import { receivedSpanSource } from '../backends/receiver';
import { runProbe } from '../probe/command';
import { runReceive } from '../receive/command';
import type { Receiver } from '../receive/receiver';

// The mesh map in a real browser (Debian's Chromium), fed by the demo's two copies of the mesh: one
// with meshtrace, one whose services call each other with plain fetch. Both export to one
// `meshtrace receive --ui`, whose page is read split by the demo's `meshtrace.demo.run` resource attribute.

const CHROMIUM = '/usr/bin/chromium';
const XSS = '<img src=x onerror=alert(1)>';
const BATCH_DELAY_MS = 300;

let tracing: TestTracing;
let receiver: Receiver;
const stopper = new Stopper();
const copies: Array<{ run: string; telemetry: Telemetry; mesh: Mesh }> = [];
let context: BrowserContext;
let page: Page;
let profile: string;
const dialogs: string[] = [];

/** One request into a copy, as an ingress would send it (with an x-request-id), waited for until its spans reached the map. */
async function send(copy: (typeof copies)[number], i: number, headers: Record<string, string> = {}): Promise<void> {
  const before = receiver.stats().windowSpans;
  copy.telemetry.reset();
  const res = await fetch(`${copy.mesh.entry}/checkout/${i}`, {
    headers: { 'x-request-id': `${copy.run}-${i}`, ...headers },
  });
  await res.arrayBuffer();
  const spans = await copy.telemetry.waitForServerSpans(3);
  // Each copy's receiver passes the exports on to the map's; wait until they are all there.
  for (let t = 0; t < 100 && receiver.stats().windowSpans < before + spans.length; t++)
    await new Promise((r) => setTimeout(r, 50));
}

/** The edge label (an SVG group) whose accessible name names `from → to` in `run`. */
const edgeLabel = (from: string, to: string, run: string) =>
  page.locator(`g.edge-label[aria-label^="${from} (${run}) → ${to} (${run}):"]`);

beforeAll(async () => {
  tracing = setupTestTracing();
  receiver = await runReceive(
    { port: 0, ui: true, print: 'none', entryServices: ['gateway'], quietMs: 500 },
    { line: () => undefined, color: false, width: 100 },
  );
  for (const [run, propagate] of [
    ['with-meshtrace', true],
    ['plain-fetch', false],
  ] as const) {
    const telemetry = await createTelemetry({ otlpUrl: `${receiver.url}/v1/traces`, run });
    stopper.track(Promise.resolve({ stop: () => telemetry.shutdown() }));
    const mesh = await startMesh({ sidecars: 'node', propagate, providers: telemetry.providers, stopper });
    copies.push({ run, telemetry, mesh });
  }
  // The demo's three requests into each copy: a caller's traceparent, none, an upper-cased (malformed) one.
  const tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
  for (const copy of copies) {
    await send(copy, 1, { traceparent: tp });
    await send(copy, 2);
    await send(copy, 3, { traceparent: tp.toUpperCase() });
  }
  // Untrusted names: a service and its span named as markup, calling a peer that exports nothing.
  const hex = (n: number) => n.toString(16).padStart(16, '0');
  const now = BigInt(Date.now()) * 1_000_000n;
  const body = {
    resourceSpans: [
      {
        resource: { attributes: [{ key: 'service.name', value: { stringValue: XSS } }] },
        scopeSpans: [
          {
            spans: [
              { spanId: hex(1), kind: 2, name: XSS },
              {
                spanId: hex(2),
                parentSpanId: hex(1),
                kind: 3,
                name: XSS,
                attributes: [{ key: 'server.address', value: { stringValue: '<b>peer</b>' } }],
              },
            ].map((s) => ({
              traceId: 'ab'.repeat(16),
              startTimeUnixNano: String(now),
              endTimeUnixNano: String(now + 1_000_000n),
              ...s,
            })),
          },
        ],
      },
    ],
  };
  const posted = await fetch(`${receiver.url}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(posted.status).toBe(200);

  profile = mkdtempSync(join(tmpdir(), 'mesh-map-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  // Anything the page fetches from elsewhere than the receiver is a failure of "loads nothing from outside".
  await page.route(
    (url) => !url.href.startsWith(receiver.url),
    (route) => route.abort(),
  );
  await page.goto(`${receiver.url}/?by=meshtrace.demo.run`);
  await page.locator('g.edge-label').first().waitFor();
}, 45_000);

afterAll(async () => {
  await context?.close();
  if (profile !== undefined) rmSync(profile, { recursive: true, force: true });
  await stopper.stop();
  await receiver?.close();
  await tracing?.shutdown();
});

test('the map shows both copies: the plain copy loses the trace at orders and inventory, the meshtrace copy keeps it', async () => {
  for (const run of ['with-meshtrace', 'plain-fetch'])
    for (const service of ['gateway', 'orders', 'inventory'])
      await expect(page.locator(`g.node[aria-label^="${service}, service, ${run}"]`).count()).resolves.toBe(1);
  // Lost edges: marked LOST with their counts, in words as well as colour.
  for (const to of ['orders', 'inventory']) {
    const lost = edgeLabel('caller not recorded', to, 'plain-fetch');
    await expect(lost.textContent()).resolves.toBe(
      'caller not recorded (plain-fetch) → ' +
        `${to} (plain-fetch): 3 calls, 3 lost the trace: 3 missing3 calls · 3 LOST3 missing`,
    );
    await expect(lost.getAttribute('class')).resolves.toContain('lossy');
  }
  for (const [from, to] of [
    ['gateway', 'orders'],
    ['orders', 'inventory'],
  ]) {
    const whole = edgeLabel(from, to, 'with-meshtrace');
    await expect(whole.locator('text').allTextContents()).resolves.toEqual(['3 calls', '3 continued']);
    await expect(whole.getAttribute('class')).resolves.not.toContain('lossy');
  }
  const shot = process.env.MESH_MAP_SCREENSHOT;
  if (shot) await page.locator('#map-pane').screenshot({ path: shot });
});

test('opening an edge shows its latest broken call as a waterfall, with the outcome and the evidence', async () => {
  await edgeLabel('caller not recorded', 'orders', 'plain-fetch').click();
  const detail = page.locator('#detail');
  await detail.locator('section.example').first().waitFor();
  await expect(detail.locator('h2').textContent()).resolves.toBe(
    'caller not recorded (plain-fetch) → orders (plain-fetch)',
  );
  const broken = detail.locator('section.example').first();
  await expect(broken.locator('h3').textContent()).resolves.toBe('Latest broken call');
  await expect(broken.textContent()).resolves.toMatch(
    /orders's SERVER span "GET \/orders\/:id" \(\w+\) recorded outcome missing/,
  );
  await expect(broken.locator('.evidence').textContent()).resolves.toMatch(
    /shares x-request-id plain-fetch-3 with trace \w+/,
  );
  await expect(broken.locator('.wf-head').allTextContents()).resolves.toEqual([
    expect.stringMatching(/^trace \w+ {2}new trace at the edge \(malformed: bad-trace-id\)$/),
    expect.stringMatching(/^trace \w+ {2}ORPHANED ROOT: orders started a new trace \(missing\)$/),
  ]);
  await expect(broken.locator('.wf-row').count()).resolves.toBe(2);
});

test('keyboard: Tab reaches an edge and Enter opens it', async () => {
  await page.locator('#by').focus();
  let kind: string | null = null;
  for (let i = 0; i < 40 && kind !== 'edge'; i++) {
    await page.keyboard.press('Tab');
    kind = await page.locator(':focus').getAttribute('data-kind');
  }
  expect(kind).toBe('edge');
  const name = (await page.locator(':focus').getAttribute('aria-label')) ?? '';
  await page.keyboard.press('Enter');
  await page.locator('#detail .wf-row').first().waitFor();
  const title = await page.locator('#detail h2').textContent();
  expect(name.startsWith(`${title}:`)).toBe(true);
});

test('live: a new request shows on the map without a reload', async () => {
  await send(copies[0], 4);
  await edgeLabel('gateway', 'orders', 'with-meshtrace').filter({ hasText: '4 calls' }).waitFor({ timeout: 10_000 });
});

test('the probe form gives the verdict the command gives, and marks the path', async () => {
  const plain = copies[1];
  await page.locator('#probe-url').fill(`${plain.mesh.entry}/checkout/probe`);
  await page.locator('#probe-delay').fill(String(BATCH_DELAY_MS));
  await page.locator('#probe-run').click();
  await page.locator('#probe-verdict').waitFor({ timeout: 25_000 });
  const lines: string[] = [];
  await runProbe(
    {
      url: `${plain.mesh.entry}/checkout/cli`,
      source: receivedSpanSource(receiver),
      json: true,
      batchDelayMs: BATCH_DELAY_MS,
      waitMs: 15_000,
    },
    { line: (t = '') => void lines.push(t), color: false, width: 100 },
  );
  const cli = JSON.parse(lines.join('\n')) as {
    verdict: string;
    probes: Array<{ breaks: Array<{ hop: { from: string | null; to: string } }> }>;
  };
  expect(cli.verdict).toBe('broken');
  await expect(page.locator('#probe-verdict').textContent()).resolves.toBe(cli.verdict.toUpperCase());
  const breaks = cli.probes[0].breaks.map((b) => `${b.hop.from ?? '?'} → ${b.hop.to}`);
  await expect(page.locator('.probe-breaks li strong').allTextContents()).resolves.toEqual(breaks);
  // The path of the probe's traces is marked: the gateway it entered, and the two lost edges.
  await expect(page.locator('g.edge-label.on-path').count()).resolves.toBe(2);
  await expect(page.locator('g.node.on-path[aria-label^="gateway, service, plain-fetch"]').count()).resolves.toBe(1);
}, 40_000);

test('span data stays text: a service and span named as markup run nothing', async () => {
  const node = page.locator('g.node').filter({ hasText: XSS });
  await expect(node.locator('text.name').textContent()).resolves.toBe(XSS);
  await page.locator('#by').selectOption('');
  const edge = page.locator(`g.edge-label[aria-label^="${XSS} → <b>peer</b>:80:"]`);
  await edge.waitFor();
  await edge.click();
  await page.locator('#detail .wf-row').first().waitFor();
  await expect(page.locator('#detail h2').textContent()).resolves.toBe(`${XSS} → <b>peer</b>:80`);
  await expect(page.locator('#detail .wf-row').first().textContent()).resolves.toContain(XSS);
  await expect(page.locator('img, b').count()).resolves.toBe(0);
  expect(dialogs).toEqual([]);
  const headers = (await page.request.get(`${receiver.url}/`)).headers();
  expect(headers['content-security-policy']).toMatch(/^default-src 'self'; script-src 'self';/);
  expect(headers['x-content-type-options']).toBe('nosniff');
});
