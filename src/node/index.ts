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
