export { meshTrace, meshTraceErrors, meshTraceRoute } from './middleware';
export type { ExpressMeshTraceOptions, ExpressMeshTraceRouteOptions } from './middleware';
