import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { logsVerdict, runLogs } from './command';
import type { LogsOptions } from './command';
import { scanLogs } from './scan';

const TP = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
const TP2 = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

// nginx `combined` plus "$http_traceparent", as nginx prints it.
const nginx = (path: string, traceparent: string) =>
  `10.244.0.1 - - [14/May/2024:09:12:03 +0000] "GET ${path} HTTP/1.1" 200 512 "-" "curl/8.5.0" "${traceparent}"\n`;

describe('meshtrace logs', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'meshtrace-logs-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function file(name: string, text: string): string {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  }

  async function run(options: LogsOptions): Promise<{ code: number; out: string }> {
    const out: string[] = [];
    const code = await runLogs(options, { line: (t = '') => out.push(t), color: false, width: 100 });
    return { code, out: out.join('\n') };
  }

  it('an empty input is 2, cannot tell, with the file named', async () => {
    const empty = file('empty.log', '');
    const { code, out } = await run({ files: [empty] });
    expect(code).toBe(2);
    expect(out).toContain(`cannot tell: ${empty} has no lines`);
    const blank = await run({ files: [file('blank.log', '\n  \n')] });
    expect(blank.code).toBe(2);
  });

  it('stdin with no lines is 2', async () => {
    const report = await scanLogs((async function* () {})());
    expect(logsVerdict(report)).toEqual({ code: 2, error: expect.stringContaining('stdin has no lines') });
  });

  it('an empty file beside a log with findings is still 2: the comparison it was given for is not possible', async () => {
    const gateway = file('gateway.log', nginx('/a', TP) + nginx('/a', '-'));
    const { code, out } = await run({ files: [gateway, file('orders-empty.log', '')] });
    expect(code).toBe(2);
    expect(out).toContain('1 without traceparent');
    expect(out).toContain('orders-empty.log has no lines');
  });

  it('hints that the traceparent is not logged only when no request in any input carried one', async () => {
    const none = file('none.log', nginx('/a', '-') + nginx('/b', '-'));
    const some = file('some.log', nginx('/a', TP));
    const both = await run({ files: [some, none] });
    expect(both.code).toBe(1);
    expect(both.out).not.toContain('is it in the log format');
    const alone = await run({ files: [none] });
    expect(alone.code).toBe(1);
    expect(alone.out.match(/No request in any input carried a traceparent: is it in the log format/g)).toHaveLength(1);
  });

  it('several inputs that share no trace id: 2, cannot tell', async () => {
    const { code, out } = await run({ files: [file('a.log', nginx('/a', TP)), file('b.log', nginx('/a', TP2))] });
    expect(code).toBe(2);
    expect(out).toContain('no trace id is in two inputs');
    expect(await run({ files: [file('c.log', nginx('/a', TP)), file('d.log', nginx('/a', TP))] })).toMatchObject({
      code: 0,
    });
  });

  it('--json: every field present, null where unknown, and the verdict', async () => {
    const log = file('one.log', nginx('/a', TP) + nginx('/a', 'garbage'));
    const { code, out } = await run({ files: [log], json: true });
    expect(code).toBe(1);
    const r = JSON.parse(out);
    expect(Object.keys(r).sort()).toEqual(
      ['error', 'files', 'findings', 'groups', 'hops', 'lines', 'requests', 'unparseable'].sort(),
    );
    expect(r.error).toBeNull();
    expect(r.unparseable).toEqual({ count: 0, reason: null, sample: null });
    expect(r.files).toEqual([
      { name: log, format: 'nginx', lines: 2, requests: 2, unparseable: 0, withTraceparent: 2, valid: 1 },
    ]);
    expect(r.groups).toEqual([
      {
        kind: 'route',
        name: 'GET /a',
        requests: 2,
        valid: 1,
        missing: null,
        malformed: [
          { reason: 'bad-version', count: 1, sample: { file: log, line: 2, text: nginx('/a', 'garbage').trim() } },
        ],
        oneHop: null,
      },
    ]);
    expect(r.hops).toEqual({ hop: 'groups', judged: false, linked: 0, traceIds: 1, evicted: 0, maxTraces: 100_000 });

    const unknown = await run({ files: [file('noise.log', 'starting\n')], json: true });
    expect(unknown.code).toBe(2);
    const u = JSON.parse(unknown.out);
    expect(u.files[0].format).toBeNull();
    expect(u.error).toContain('no line could be read as an access log');
  });
});
