export { HEADER_CASES, PARENT_ID, TRACE_ID, checkCase, delta, observe } from './cases';
export type { HeaderCase, Observed } from './cases';
export { setupTestTracing } from './otel';
export type { TestTracing } from './otel';
