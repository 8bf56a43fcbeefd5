export { meshClientInterceptor } from './client';
export type { GrpcCall, GrpcStatus, MeshGrpcOptions } from './options';
export { meshServerInterceptor, meshService } from './server';
