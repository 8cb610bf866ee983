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
export {
  sendDevice,
  sendFile,
  sendStream,
  receiveDevice,
  receiveFile,
  receiveStream,
  parsePskKeys,
  DEFAULT_TIMEOUT_MS,
  PROGRESS_BYTES,
  type DialTarget,
  type ListenOptions,
  type Peer,
  type PskKey,
  type Received,
  type ReceiveFileOptions,
  type ReceiveFileResult,
  type ReceiveOptions,
  type ReceiveResult,
  type SendFileOptions,
  type SendFileResult,
  type SendOptions,
  type SendResult,
  type StreamSink,
  type TlsCertificates,
  type TlsPsk,
  type TransportSecurity,
} from "./tcp.js";
export { serveVfioUser, type VfioUserServer, type VfioUserServerOptions } from "./vfio-user/server.js";
export type { PciIdentity } from "./vfio-user/pci.js";
