export { meshTrace, meshTraceRoute } from './middleware';
export type { KoaMeshTraceOptions, KoaMeshTraceRouteOptions, KoaRequestTrace } from './middleware';
