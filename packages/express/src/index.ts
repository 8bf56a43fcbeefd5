export { meshTrace, meshTraceErrors } from './middleware';
export type { ExpressMeshTraceOptions } from './middleware';
