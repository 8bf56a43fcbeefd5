export { instrumentChannel } from './channel';
export type { AmqpChannel, PublishInfo, RabbitMqTraceOptions } from './channel';
