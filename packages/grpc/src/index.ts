export { meshClientInterceptor } from './client';
export type { GrpcCall, GrpcStatus, MeshGrpcOptions } from './common';
export { meshServerInterceptor, meshService } from './server';
