import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InstalledTree, NOT_REQUIRED, installApp, removeApp, tarballSpecs } from './npm';
import type { InstalledApp } from './npm';
import { packTarballs, publishablePackages } from './pack';
import { API_ONLY_API, FRAMEWORKS } from './versions';

/** What an application without an OpenTelemetry SDK must not find in its tree because of meshtrace. */
const SDK_CODE = /^(@opentelemetry\/(sdk-|exporter-|otlp-)|protobufjs$)/;

/**
 * Every publishable package an app without an SDK may install: all but @meshtrace/node, whose job
 * is to hold the SDK, and command-line tools (a `bin`), which live outside an app's tree.
 */
function apiOnlyPackages(): string[] {
  return publishablePackages()
    .filter((p) => p.name !== '@meshtrace/node')
    .filter(
      (p) => (JSON.parse(readFileSync(join(p.dir, 'package.json'), 'utf8')) as { bin?: unknown }).bin === undefined,
    )
    .map((p) => p.name);
}

/** Frameworks and transport clients meshtrace plugs into: what they bring is theirs (@grpc/grpc-js brings protobufjs). */
function boundary(names: readonly string[]): Set<string> {
  const out = new Set(Object.keys(FRAMEWORKS));
  for (const p of publishablePackages().filter((p) => names.includes(p.name))) {
    const manifest = JSON.parse(readFileSync(join(p.dir, 'package.json'), 'utf8')) as {
      peerDependencies?: Record<string, string>;
    };
    for (const peer of Object.keys(manifest.peerDependencies ?? {}))
      if (!peer.startsWith('@opentelemetry/')) out.add(peer);
  }
  return out;
}

describe('API only', () => {
  const names = apiOnlyPackages();
  let app: InstalledApp | undefined;

  beforeAll(async () => {
    const tarballs = await packTarballs();
    app = await installApp('api-only', {
      ...tarballSpecs(tarballs, names),
      ...FRAMEWORKS,
      '@opentelemetry/api': API_ONLY_API,
    });
  }, 300_000);

  afterAll(() => removeApp(app));

  test(`API only: ${names.join(', ')} install beside the frameworks and @opentelemetry/api alone with a plain npm install`, () => {
    if (!app?.ok) throw new Error(app?.report ?? 'not installed');
  });

  test('API only: nothing meshtrace brings into the tree is an OpenTelemetry SDK, exporter, OTLP package or protobufjs', () => {
    if (!app?.ok) throw new Error(`the app did not install:\n${app?.report}`);
    const tree = new InstalledTree(app.dir);
    // The walk must account for every folder npm installed, or an offender could hide from it.
    const unaccounted = tree.copiesOf(/./).filter((p) => p.via === NOT_REQUIRED);
    if (unaccounted.length > 0)
      throw new Error(
        `installed, yet reached by no dependency chain from the app:\n${unaccounted.map((p) => `- ${p.path}`).join('\n')}`,
      );
    const outside = boundary(names);
    const offenders = tree.reachable(outside).filter((p) => SDK_CODE.test(p.name));
    if (offenders.length > 0) {
      throw new Error(
        `${offenders.length} package(s) an API-only app should not have (frameworks and transport clients not looked into: ${[...outside].join(', ')}):\n` +
          offenders.map((p) => `- ${p.name}@${p.version} at ${p.path}\n    pulled in by ${p.via}`).join('\n'),
      );
    }
  });
});
