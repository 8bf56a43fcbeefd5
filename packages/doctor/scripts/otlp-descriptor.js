// Builds src/otlp/otlp.json, the protobufjs descriptor of OTLP trace export, from the official
// .proto files that @opentelemetry/otlp-grpc-exporter-base ships. Run it after changing that
// dependency; a test regenerates the descriptor and fails when the committed file differs.
//   node scripts/otlp-descriptor.js           writes src/otlp/otlp.json
//   node scripts/otlp-descriptor.js --stdout  prints it instead
'use strict';
const { writeFileSync } = require('node:fs');
const { dirname, join } = require('node:path');
const protobuf = require('protobufjs');

const PACKAGE = join(__dirname, '..');
const PROTOS = join(
  dirname(require.resolve('@opentelemetry/otlp-grpc-exporter-base/package.json', { paths: [PACKAGE] })),
  'build',
  'protos',
);
// trace_service.proto imports the other three by their path under the protos directory.
const FILES = ['opentelemetry/proto/collector/trace/v1/trace_service.proto'];

/** The descriptor as text: what the committed file must hold. */
function descriptorText() {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => join(PROTOS, target);
  root.loadSync(FILES);
  return `${JSON.stringify(root.toJSON(), null, 2)}\n`;
}

if (require.main === module) {
  const text = descriptorText();
  if (process.argv.includes('--stdout')) process.stdout.write(text);
  else writeFileSync(join(PACKAGE, 'src', 'otlp', 'otlp.json'), text);
}

module.exports = { descriptorText };
