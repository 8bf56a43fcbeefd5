import { hasNginx, startProcessMesh } from '@meshtrace/testkit';
import type { MeshNode, ProcessMeshSpec } from '@meshtrace/testkit';
import { receivedSpanSource, runProbe, startReceiver } from '@meshtrace/doctor';
import type { ProbeOptions, VerdictKind } from '@meshtrace/doctor';

// Every row is a mesh of real processes (meshtrace on each adapter, the official SDK, Python, nginx)
// exporting OTLP/HTTP to a receiver in this process, probed once with `meshtrace probe --json`.
// The service programs run against the built packages: `tsc -b` first, as the test command does.

beforeAll(() => {
  if (!hasNginx())
    throw new Error('nginx is not installed (apt-get install -y nginx): the scenario meshes put real nginx in front');
});

const BATCH_DELAY_MS = 300;

type Nodes = Readonly<Record<string, MeshNode>>;

/** One hop or break as the JSON names it. */
interface HopJson {
  from: string | null;
  to: string;
  proxies: string[];
  evidence: string | null;
  state?: string;
}
interface BreakJson {
  hop: { from: string | null; to: string };
  proxies: string[];
  evidence: string | null;
  outcome: string | null;
  reason: string | null;
  detail: string;
}
interface ProbeJson {
  verdict: string;
  status: number | null;
  traces: string[];
  services: string[];
  hops: HopJson[];
  breaks: BreakJson[];
  untracedPeers: Array<{ address: string; caller: string; path: string | null; declared: boolean }>;
  suspects: Array<{ service: string }>;
  reason: string | null;
}
interface ReportJson {
  command: string;
  verdict: string;
  exitCode: number;
  probes: ProbeJson[];
}

interface Row {
  readonly name: string;
  readonly mesh: Omit<ProcessMeshSpec, 'otlpEndpoint'>;
  /** More probe options, knowing the running nodes (`mesh: [address]`). */
  readonly probe?: (nodes: Nodes) => Partial<ProbeOptions>;
  /** The expected verdict. */
  readonly verdict: VerdictKind;
  /** Exactly these breaks, `from → to` (`?` for null), when given. */
  readonly breaks?: readonly string[];
  /** These hops among the hops, `from → to state`. */
  readonly hops?: readonly string[];
  /** More checks on the probe's JSON. */
  readonly also?: (probe: ProbeJson, nodes: Nodes) => void;
}

const EXIT: Record<string, number> = { whole: 0, broken: 1, unknown: 2, incomplete: 3 };
const arrow = (h: { from: string | null; to: string }): string => `${h.from ?? '?'} → ${h.to}`;
const breaksOf = (p: ProbeJson): string[] => p.breaks.map((b) => arrow(b.hop));

// The meshes: a → b → c → d on the four adapters, and variants of it.
const chain = (over: Partial<Record<'a' | 'b' | 'c' | 'd', object>> = {}): ProcessMeshSpec['nodes'] => ({
  a: { kind: 'express', calls: ['b'], forward: 'request-id', ...over.a },
  b: { kind: 'fastify', calls: ['c'], forward: 'request-id', ...over.b },
  c: { kind: 'koa', calls: ['d'], forward: 'request-id', ...over.c },
  d: { kind: 'http', ...over.d },
});
const WHOLE_CHAIN = ['probe → a continued', 'a → b continued', 'b → c continued', 'c → d continued'];
/** a → nginx (traceparent stripped) → b → c. */
const stripped = (b: object = {}): ProcessMeshSpec['nodes'] => ({
  a: { kind: 'express', calls: ['b-sidecar'], forward: 'request-id' },
  'b-sidecar': { kind: 'nginx', upstream: 'b', traceparent: 'strip' },
  b: { kind: 'fastify', calls: ['c'], forward: 'request-id', ...b },
  c: { kind: 'koa' },
});
const STRIPPED_BREAK = ['a → b'];

const rows: Row[] = [
  {
    name: 'meshtrace on express → fastify → koa → node:http: whole',
    mesh: { entry: 'a', nodes: chain() },
    verdict: 'whole',
    breaks: [],
    hops: WHOLE_CHAIN,
    also: (p) => expect(p.services).toEqual(['a', 'b', 'c', 'd']),
  },
  {
    name: 'official SDK services (auto-instrumentations, fetch) inside the chain: whole',
    mesh: { entry: 'a', nodes: chain({ b: { kind: 'official' }, c: { kind: 'official' } }) },
    verdict: 'whole',
    breaks: [],
    hops: WHOLE_CHAIN,
  },
  {
    name: 'nginx strips traceparent before b: broken at a → b',
    mesh: { entry: 'a', nodes: stripped() },
    verdict: 'broken',
    breaks: STRIPPED_BREAK,
    hops: ['a → b broken', 'b → c continued'],
    also: (p) => expect(p.breaks[0]).toMatchObject({ outcome: 'missing', evidence: 'peer' }),
  },
  {
    name: 'nginx strips traceparent in front of the entry: broken at probe → a',
    mesh: {
      entry: 'a-sidecar',
      nodes: {
        'a-sidecar': { kind: 'nginx', upstream: 'a', traceparent: 'strip' },
        a: { kind: 'express', calls: ['b'] },
        b: { kind: 'koa' },
      },
    },
    verdict: 'broken',
    breaks: ['probe → a'],
    hops: ['a → b continued'],
  },
  {
    name: 'nginx upper-cases traceparent into an official SDK service: broken at a → b, two traces',
    mesh: {
      entry: 'a',
      nodes: {
        a: { kind: 'express', calls: ['b-sidecar'] },
        'b-sidecar': { kind: 'nginx', upstream: 'b', traceparent: 'uppercase' },
        b: { kind: 'official', calls: ['c'] },
        c: { kind: 'koa' },
      },
    },
    verdict: 'broken',
    breaks: ['a → b'],
    also: (p) => expect(p.traces.length).toBeGreaterThan(1),
  },
  {
    // Two header lines of one name are one comma-joined value (RFC 9110 §5.3; Node joins them with ", "),
    // which is no valid version-00 traceparent (W3C trace-context §3.2.2: exactly 55 characters). The
    // spec's test suite asks for a new trace when traceparent comes twice (test_traceparent_duplicated).
    name: 'nginx sends traceparent on two lines: b sees an invalid combined value, broken at a → b',
    mesh: {
      entry: 'a',
      nodes: {
        a: { kind: 'express', calls: ['b-sidecar'] },
        'b-sidecar': { kind: 'nginx', upstream: 'b', traceparent: 'duplicate' },
        b: { kind: 'fastify', calls: ['c'] },
        c: { kind: 'koa' },
      },
    },
    verdict: 'broken',
    breaks: ['a → b'],
    also: (p) => expect(p.breaks[0].outcome).toBe('malformed'),
  },
  {
    // b's plain fetch records no CLIENT span and sends neither traceparent, baggage nor x-request-id: only
    // time links c's new trace to the probe. Not whole: c is a suspect, and time never names a hop
    // (with x-request-id, see below).
    name: 'a plain-fetch service in the middle forwarding nothing: cannot tell, c a suspect, no break invented',
    mesh: { entry: 'a', nodes: chain({ b: { client: 'plain-fetch', forward: 'nothing' } }) },
    verdict: 'unknown',
    breaks: [],
    hops: ['probe → a continued', 'a → b continued'],
    also: (p) => {
      expect(p.services).toEqual(['a', 'b']);
      expect(p.suspects.map((x) => x.service)).toEqual(['c']);
      expect(p.hops.some((h) => h.to === 'c')).toBe(false);
    },
  },
  {
    name: 'fan-out a → b and a → c: whole',
    mesh: {
      entry: 'a',
      nodes: { a: { kind: 'express', calls: ['b', 'c'] }, b: { kind: 'fastify' }, c: { kind: 'koa' } },
    },
    verdict: 'whole',
    breaks: [],
    hops: ['a → b continued', 'a → c continued'],
  },
  {
    name: 'fan-out with the branch to b stripped: broken at a → b only',
    mesh: {
      entry: 'a',
      nodes: {
        a: { kind: 'express', calls: ['b-sidecar', 'c'] },
        'b-sidecar': { kind: 'nginx', upstream: 'b', traceparent: 'strip' },
        b: { kind: 'fastify' },
        c: { kind: 'koa' },
      },
    },
    verdict: 'broken',
    breaks: ['a → b'],
    hops: ['a → c continued'],
  },
  {
    name: 'a hop slower than the batch delay (1.5 s, batches every 300 ms): whole',
    mesh: { entry: 'a', nodes: chain({ c: { delayMs: 1500 } }) },
    verdict: 'whole',
    breaks: [],
    hops: WHOLE_CHAIN,
  },
  {
    name: "a hop slower than the probe's quiet period (4 s, probe told 300 ms): whole",
    mesh: { entry: 'a', nodes: chain({ d: { delayMs: 4000 } }) },
    verdict: 'whole',
    breaks: [],
    hops: WHOLE_CHAIN,
  },
  {
    name: 'a call to an external dependency: whole, the peer listed as untraced',
    mesh: externalMesh(),
    verdict: 'whole',
    breaks: [],
    hops: ['a → b continued'],
    also: (p, nodes) =>
      expect(p.untracedPeers).toEqual([
        expect.objectContaining({ address: nodes.ext.address, caller: 'a', declared: false }),
      ]),
  },
  {
    name: 'a call to an external dependency declared in the mesh: broken at a → that peer',
    mesh: externalMesh(),
    probe: (nodes) => ({ mesh: [nodes.ext.address] }),
    verdict: 'broken',
    also: (p, nodes) => {
      expect(breaksOf(p)).toEqual([`a → ${nodes.ext.address}`]);
      expect(p.untracedPeers).toEqual([expect.objectContaining({ address: nodes.ext.address, declared: true })]);
    },
  },
  {
    name: 'a call to an external dependency with strict: broken at a → that peer',
    mesh: externalMesh(),
    probe: () => ({ strict: true }),
    verdict: 'broken',
    also: (p, nodes) => expect(breaksOf(p)).toEqual([`a → ${nodes.ext.address}`]),
  },
  ...[5, -5, 2000].flatMap((skew): Row[] => [
    {
      name: `b's clock ${skew > 0 ? '+' : ''}${skew} ms on the whole chain: whole`,
      mesh: { entry: 'a', nodes: chain({ b: { clockSkewMs: skew } }) },
      verdict: 'whole',
      breaks: [],
      hops: WHOLE_CHAIN,
    },
    {
      name: `b's clock ${skew > 0 ? '+' : ''}${skew} ms behind a stripping nginx: broken at a → b`,
      mesh: { entry: 'a', nodes: stripped({ clockSkewMs: skew }) },
      verdict: 'broken',
      breaks: STRIPPED_BREAK,
    },
  ]),
  {
    name: 'health checks every 50 ms on a whole chain: whole',
    mesh: { entry: 'a', nodes: chain(), healthChecks: 50 },
    verdict: 'whole',
    breaks: [],
    hops: WHOLE_CHAIN,
  },
  {
    name: 'health checks every 50 ms behind a stripping nginx: the same break at a → b',
    mesh: { entry: 'a', nodes: stripped(), healthChecks: 50 },
    verdict: 'broken',
    breaks: STRIPPED_BREAK,
  },
  {
    name: 'a plain-fetch service forwarding only x-request-id: broken, the callee tied to the probe, no caller invented',
    mesh: { entry: 'a', nodes: chain({ b: { client: 'plain-fetch', forward: 'request-id' } }) },
    verdict: 'broken',
    breaks: ['? → c'],
    also: (p) => expect(p.breaks[0].evidence).toBe('request-id'),
  },
  {
    name: 'an untraced Python service forwarding only x-request-id: broken, the callee tied to the probe, no caller invented',
    mesh: {
      entry: 'a',
      nodes: {
        a: { kind: 'express', calls: ['py'], forward: 'request-id' },
        py: { kind: 'python-untraced', calls: ['c'], forward: 'request-id' },
        c: { kind: 'koa' },
      },
    },
    verdict: 'broken',
    breaks: ['? → c'],
    also: (p) => expect(p.breaks[0].evidence).toBe('request-id'),
  },
  {
    // a's call went unanswered and c started a trace meanwhile: a suspect, never a named hop.
    name: 'an untraced Python service in the middle forwarding nothing: not whole, c a suspect, no hop named by time',
    mesh: {
      entry: 'a',
      nodes: {
        a: { kind: 'express', calls: ['py'] },
        py: { kind: 'python-untraced', calls: ['c'] },
        c: { kind: 'koa' },
      },
    },
    verdict: 'unknown',
    breaks: [],
    also: (p) => {
      expect(p.suspects.map((x) => x.service)).toEqual(['c']);
      expect(p.hops.some((h) => h.to === 'c')).toBe(false);
    },
  },
  {
    name: 'Caddy recording its own spans between a and b: whole, Caddy listed as a proxy of the hop a → b',
    mesh: {
      entry: 'a',
      nodes: {
        a: { kind: 'express', calls: ['b-caddy'] },
        'b-caddy': { kind: 'caddy', upstream: 'b' },
        b: { kind: 'fastify', calls: ['c'] },
        c: { kind: 'koa' },
      },
    },
    verdict: 'whole',
    breaks: [],
    hops: ['probe → a continued', 'a → b continued', 'b → c continued'],
    also: (p) => {
      expect(p.hops.find((h) => h.from === 'a' && h.to === 'b')?.proxies).toEqual(['b-caddy']);
      expect(p.services).toContain('b-caddy');
    },
  },
];

/** a calls b and an external dependency outside the mesh. */
function externalMesh(): Row['mesh'] {
  return {
    entry: 'a',
    nodes: { a: { kind: 'express', calls: ['b', 'ext'] }, b: { kind: 'koa' }, ext: { kind: 'external' } },
  };
}

/** Starts the row's mesh exporting to a receiver of its own, probes it once and returns the JSON. */
async function probeRow(row: Row): Promise<{ code: number; report: ReportJson; nodes: Nodes; text: string }> {
  const receiver = await startReceiver({ port: 0 });
  try {
    const mesh = await startProcessMesh({ batchDelayMs: BATCH_DELAY_MS, ...row.mesh, otlpEndpoint: receiver.url });
    try {
      const lines: string[] = [];
      const code = await runProbe(
        {
          url: mesh.entryUrl,
          source: receivedSpanSource(receiver),
          json: true,
          batchDelayMs: BATCH_DELAY_MS,
          waitMs: 20_000,
          ...row.probe?.(mesh.services),
        },
        { line: (s = '') => void lines.push(s), color: false, width: 120 },
      );
      if (row.mesh.healthChecks) expect(mesh.healthChecks()).toBeGreaterThan(10);
      const text = lines.join('\n');
      return { code, report: JSON.parse(text) as ReportJson, nodes: mesh.services, text };
    } finally {
      await mesh.stop();
    }
  } finally {
    await receiver.close();
  }
}

describe('meshtrace probe over meshes of real processes', () => {
  test.each(rows.map((r) => [r.name, r] as const))(
    '%s',
    async (_name, row) => {
      const { code, report, nodes, text } = await probeRow(row);
      try {
        const [probe] = report.probes;
        expect(probe.status).toBe(200);
        expect(probe.verdict).toBe(row.verdict);
        expect(code).toBe(EXIT[probe.verdict]);
        if (row.breaks !== undefined) expect(breaksOf(probe)).toEqual(row.breaks);
        if (row.hops !== undefined)
          expect(probe.hops.map((h) => `${arrow(h)} ${h.state}`)).toEqual(expect.arrayContaining([...row.hops]));
        row.also?.(probe, nodes);
      } catch (err) {
        // The whole report beside the failed assertion: what the doctor said is the evidence.
        (err as Error).message += `\n\nprobe report:\n${text}`;
        throw err;
      }
    },
    60_000,
  );
});
