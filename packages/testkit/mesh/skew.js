'use strict';
// Preloaded with `node --require`: moves this process's wall clock by MESH_CLOCK_SKEW_MS (may be
// negative), as a host whose clock drifted would. OpenTelemetry JS reads the wall clock two ways:
// `Date.now()` (a span's start) and `performance.timeOrigin + performance.now()` (core's `hrTime()`,
// used by instrumentations); both move. `performance.now()` stays relative, so durations are true.
const skew = Number(process.env.MESH_CLOCK_SKEW_MS || 0);
if (!Number.isFinite(skew)) throw new TypeError(`MESH_CLOCK_SKEW_MS must be a number of milliseconds, not ${skew}`);
if (skew !== 0) {
  const now = Date.now;
  Date.now = function skewedNow() {
    return now() + skew;
  };
  const origin = performance.timeOrigin + skew;
  Object.defineProperty(performance, 'timeOrigin', { value: origin, configurable: true, enumerable: true });
}
