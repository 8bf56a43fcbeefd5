export { meshTrace } from './plugin';
export type { FastifyMeshTraceOptions } from './plugin';
