export { HEADER_CASES, PARENT_ID, TRACE_ID, checkCase, delta, observe, runCase, runHttpCase } from './cases';
export type { HeaderCase, Observed } from './cases';
export { freePort, hasNginx, selfSignedCert, startNginx } from './nginx';
export type { NginxSidecar, SidecarOptions } from './nginx';
export { setupTestTracing } from './otel';
export type { TestTracing } from './otel';
export { startRabbitMq } from './rabbitmq';
export type { RabbitMqBroker, RabbitMqOptions } from './rabbitmq';
