export { bindEmitterToActive, bindToActive } from './bind';
export { contextCarrier, runWithCarrier } from './thread';
export type { ContextCarrier } from './thread';
