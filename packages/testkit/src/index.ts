export { startCaddy } from './caddy';
export type { CaddyOptions, CaddyPropagator, CaddySampler, CaddySidecar } from './caddy';
export { HEADER_CASES, PARENT_ID, TRACE_ID, checkCase, delta, observe, runCase, runHttpCase } from './cases';
export type { HeaderCase, Observed } from './cases';
export { startCollector, startFaultProxy } from './fault-proxy';
export type { FaultMode, FaultProxy, FaultProxyOptions, TestCollector } from './fault-proxy';
export { jaegerTrace, startJaeger } from './jaeger';
export type { JaegerOptions, JaegerServer, JaegerSpan, JaegerTraceOptions } from './jaeger';
export { startKafka } from './kafka';
export type { KafkaBroker, KafkaOptions } from './kafka';
export { freePort, hasNginx, selfSignedCert, startNginx } from './nginx';
export type { NginxSidecar, SidecarOptions, TraceparentMode } from './nginx';
export { startProcessMesh } from './mesh';
export type {
  MeshAdapter,
  MeshNode,
  MeshProxySpec,
  MeshServiceKind,
  MeshServiceSpec,
  ProcessMesh,
  ProcessMeshSpec,
} from './mesh';
export { captureWarnings, hasContextManager, setupTestTracing } from './otel';
export {
  CALLER_BAGGAGE,
  SHARED_TRUST_ROWS,
  SPELLINGS,
  TRUST_SERVICE,
  callerHeaders,
  inServerSpan,
  runTrustRow,
  startHeaderRecorder,
} from './outbound';
export type { HeaderRecorder, Spelling, TrustRow } from './outbound';
export { hasExited, stopChild, waitExit } from './process';
export type { TestTracing } from './otel';
export { peerDir, peerVersion } from './peers';
export type { PeerName } from './peers';
export { PYTHON_SERVICE, pythonPeer, startPythonService } from './python';
export type { PythonService, PythonServiceOptions } from './python';
export { startRabbitMq } from './rabbitmq';
export type { RabbitMqBroker, RabbitMqOptions } from './rabbitmq';
