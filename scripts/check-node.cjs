// Runs before `pnpm install` and `pnpm test` (root package.json), on whatever Node the shell has, so
// an old Node stops at once with what to do instead of failing later in a type check or a test.
// Kept to syntax that old Node versions parse: it must run on the Node it is there to turn away.
const path = require('node:path');

const engines = require(path.join(__dirname, '..', 'package.json')).engines || {};
const wanted = /^\s*>=\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?\s*$/.exec(engines.node || '');
if (!wanted) {
  process.stderr.write(
    `meshtrace: package.json "engines.node" should read ">=<version>", not ${JSON.stringify(engines.node)}\n`,
  );
  process.exit(1);
}
const want = [Number(wanted[1]), Number(wanted[2] || 0), Number(wanted[3] || 0)];
const have = process.versions.node.split('.').map(Number);

function atLeast(a, b) {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] > b[i];
  return true;
}

if (!atLeast(have, want)) {
  const needs = want[1] === 0 && want[2] === 0 ? String(want[0]) : want.join('.');
  process.stderr.write(
    [
      `meshtrace needs Node.js ${needs} or newer (this is ${process.versions.node}, at ${process.execPath}).`,
      'Node 22 and 24 are tested. To run a command on Node 24 without installing it, take Node from the npm registry:',
      '  npx -y -p node@24 -p pnpm@10 -- pnpm install',
      '  npx -y -p node@24 -p pnpm@10 -- pnpm test',
      'or switch the shell to Node 24 with a version manager (nvm install 24, fnm use 24, volta install node@24).',
      '',
    ].join('\n'),
  );
  process.exit(1);
}
