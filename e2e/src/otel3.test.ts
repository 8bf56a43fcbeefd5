import { describeOtelLine } from './interop';
import { OTEL_3 } from './versions';

// One file per line, so jest can run the two lines' installs and apps in parallel workers.
describeOtelLine(OTEL_3);
