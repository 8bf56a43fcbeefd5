export { meshConsumer } from './consumer';
export type {
  MeshConsumer,
  MeshConsumerOptions,
  MeshConsumerRunConfig,
  MeshEachBatchHandler,
  MeshEachBatchPayload,
} from './consumer';
export { meshProducer } from './producer';
export type { MeshProducerOptions } from './producer';
