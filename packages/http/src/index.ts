export { injectHeaders, meshClient, meshFetch, meshRequest } from './client';
export type { MeshClient, MeshClientOptions, MeshRequest } from './client';
export { meshHttp, requestTrace } from './server';
export type { HttpMeshTraceOptions, Listener } from './server';
