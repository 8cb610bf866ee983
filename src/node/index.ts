// migstream/node: adapters that need Node (files, streams, TCP).
export {
  createDecodeStream,
  createEncodeStream,
  decodeChunks,
  decodeChunksWithSummary,
  DecodeStream,
  encodeChunks,
  EncodeStream,
  type ChunkSource,
  type DecodeChunksOptions,
  type DecodeResult,
  type DecodeStreamOptions,
  type EncodeStreamOptions,
} from "./streams.js";
export { encodeFile, decodeToFile, inspectStream, digestFile, type EncodeFileOptions, type DecodeFileOptions, type InspectReport } from "./files.js";
export { AtomicFile, abortPendingFiles } from "./atomic-file.js";
export { sendDevice, receiveDevice, type SendOptions, type SendResult, type ReceiveOptions, type ReceiveResult } from "./tcp.js";
