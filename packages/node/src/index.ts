export { MeshBatchSpanProcessor, countingExporter, exportStats } from './span-export';
export type { CountingExporterOptions, ExportOutcome, ExportStats } from './span-export';
export { containerIdFrom, kubernetesDetector } from './k8s';
export type { KubernetesDetectorOptions } from './k8s';
export { MeshSampler, samplerFromEnv } from './sampler';
export type { SamplingOwner } from './sampler';
export type { BufferConfig, ExportResult, ReadableSpan, SpanExporter, SpanProcessor } from './sdk';
export { setupMeshTracing } from './setup';
export type { MeshTracing, SetupOptions } from './setup';
