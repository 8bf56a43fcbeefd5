export { FRAME_VERSION, MAX_FRAME_HEADER_BYTES, decodeFrame, encodeFrame } from './frame';
export type { Frame, FrameData, FrameError, FrameHeaderInput, FrameHeaders } from './frame';
export { meshFrameHandler } from './frame-handler';
export type { FrameHandler, FrameHandlerOptions } from './frame-handler';
