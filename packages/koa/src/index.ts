export { meshTrace } from './middleware';
export type { KoaMeshTraceOptions, KoaRequestTrace } from './middleware';
