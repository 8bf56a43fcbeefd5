import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '@meshtrace/testkit';

// The command as users run it: the built file, in its own process (build first: `tsc -b packages/doctor`).
const CLI = join(__dirname, '..', 'dist', 'cli.js');
const TP = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

function meshtrace(args: string[], input?: string): { code: number | null; out: string } {
  const run = spawnSync(process.execPath, [CLI, ...args], { input, encoding: 'utf8', env: { PATH: process.env.PATH } });
  return { code: run.status, out: run.stdout + run.stderr };
}

const envoy = (host: string, traceparent: string) =>
  `[2024-05-14T09:12:03.512Z] "GET /orders HTTP/1.1" 200 - 0 512 14 12 "-" "curl/8.5.0" "5d3e3c9e-7d2a-4c9b-9a57-2b1b1f0c6f11" "orders:8080" "${host}" traceparent=${traceparent}\n`;

describe('meshtrace', () => {
  let dir: string;
  beforeAll(() => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build with \`npx tsc -b packages/doctor\` first`);
    dir = mkdtempSync(join(tmpdir(), 'meshtrace-cli-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('prints the package version and help with examples', () => {
    const { version } = JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { version: string };
    expect(meshtrace(['--version'])).toEqual({ code: 0, out: `${version}\n` });
    const help = meshtrace(['--help']);
    expect(help.code).toBe(0);
    expect(help.out).toContain('meshtrace check 00-');
    expect(help.out).toContain('meshtrace logs');
  });

  it('probe: 64 for a URL it cannot use, one line without the package prefix; 2 at once for a URL that refuses', async () => {
    const { code, out } = meshtrace(['probe', 'not-a-url']);
    expect(code).toBe(64);
    expect(out).toBe('meshtrace: option "url" must be an http(s) URL, got "not-a-url"\n');
    const started = Date.now();
    // A port nothing listens on: the connection is refused.
    const closed = await freePort();
    const refused = meshtrace(['probe', '--port', '0', `http://127.0.0.1:${closed}/`]);
    expect(refused).toEqual({ code: 2, out: `meshtrace: cannot reach http://127.0.0.1:${closed}/: ECONNREFUSED\n` });
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('probe: a receiver port in use says to read from it with --endpoint, exit 2', async () => {
    const busy = createServer().listen(0, '127.0.0.1');
    await once(busy, 'listening');
    const { port } = busy.address() as AddressInfo;
    try {
      const run = spawn(process.execPath, [CLI, 'probe', '--port', String(port), 'http://127.0.0.1:9/'], {
        env: { PATH: process.env.PATH },
      });
      let out = '';
      run.stderr.on('data', (c: Buffer) => {
        out += c.toString();
      });
      const [code] = (await once(run, 'exit')) as [number];
      expect(code).toBe(2);
      expect(out).toContain(`port 127.0.0.1:${port} is in use`);
      expect(out).toContain(`--endpoint http://127.0.0.1:${port}`);
    } finally {
      busy.close();
    }
  });

  it('a usage error is one line and a hint, exit 64; a closed pipe ends quietly with 0', () => {
    const typo = meshtrace(['probe', '--wiat', '10', 'http://127.0.0.1:1/']);
    expect(typo.code).toBe(64);
    expect(typo.out).toBe("error: unknown option '--wiat'\n(Did you mean --wait?)\n(add --help for usage)\n");
    const piped = spawnSync('sh', ['-c', `"${process.execPath}" "${CLI}" --help | head -1`], { encoding: 'utf8' });
    expect([piped.status, piped.stderr]).toEqual([0, '']);
    expect(piped.stdout).toBe('Usage: meshtrace [options] [command]\n');
  });

  it('check: 0 for valid headers, 1 for an invalid one, 2 without arguments', () => {
    expect(meshtrace(['check', TP, 'congo=t61rcWkgMzE', 'userId=alice']).code).toBe(0);
    const bad = meshtrace(['check', TP.replace('-01', '-0x')]);
    expect(bad.code).toBe(1);
    expect(bad.out).toContain('(bad-flags): "x" is not a hex digit, in the flags at index 54');
    // Not a terminal: no colour codes.
    expect(bad.out).not.toContain('\u001b[');
    expect(meshtrace(['check']).code).toBe(64);
  });

  it('check --json', () => {
    const { code, out } = meshtrace(['check', '--json', TP]);
    expect(code).toBe(0);
    expect(JSON.parse(out)).toMatchObject({
      valid: true,
      traceparent: { traceId: '0af7651916cd43dd8448eb211c80319c', sampled: true },
    });
  });

  it('logs -: 0 when every request carried a valid traceparent, 1 with findings', () => {
    expect(meshtrace(['logs', '-'], envoy('10.0.0.1:80', TP)).code).toBe(0);
    const { code, out } = meshtrace(['logs'], envoy('10.0.0.1:80', TP) + envoy('10.0.0.1:80', '-'));
    expect(code).toBe(1);
    expect(out).toContain('upstream orders:8080: 2 requests, 1 with a valid traceparent');
    expect(out).toContain('1 without traceparent');
  });

  it('logs --json over several files', () => {
    const a = join(dir, 'gateway.log');
    const b = join(dir, 'orders.log');
    writeFileSync(a, envoy('10.0.0.1:80', TP));
    writeFileSync(
      b,
      `${JSON.stringify({ method: 'GET', path: '/orders', upstream_cluster: 'inbound|8080||', traceparent: TP })}\n`,
    );
    const { code, out } = meshtrace(['logs', '--json', a, b]);
    expect(code).toBe(0);
    const report = JSON.parse(out);
    expect(report.files.map((f: { format: string }) => f.format)).toEqual(['envoy', 'istio']);
    expect(report.hops).toMatchObject({ hop: 'files', judged: true, traceIds: 1 });
  });

  it('logs: 2 for a file it cannot open or input with no access-log line', () => {
    const missing = meshtrace(['logs', join(dir, 'nope.log')]);
    expect(missing.code).toBe(2);
    expect(missing.out).toContain('ENOENT');
    expect(meshtrace(['logs', '--format', 'nginx', '-'], 'not a log\nat all\n').code).toBe(2);
    // A format it does not know is a usage error.
    expect(meshtrace(['logs', '--format', 'apache', '-'], '').code).toBe(64);
  });
});
