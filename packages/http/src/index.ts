export { meshHttp, requestTrace } from './server';
export type { HttpMeshTraceOptions, Listener } from './server';
