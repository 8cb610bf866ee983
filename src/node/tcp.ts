// Live migration over TCP (or TLS), with the v2 state machine on both ends.
//
// Protocol (one connection, one migration):
//   sender -> receiver   the migstream stream (header, pre-copy rounds, stop-copy, end record),
//                        a trailer ("MSNONCE1" and a random nonce), then a half-close (FIN)
//   receiver -> sender   one verdict line once the state is durably where it was asked to go:
//                        "OK <stream bytes> <proof>\n" (the proof hashes the end digest and the
//                        nonce: only a reader can give it), or "ERR <code> <message>\n", then close
//
// The half-close matters: the receiver cannot tell a finished stream from a dropped one by the
// connection alone (both end in FIN), so it validates and lets validation decide; a cut stream
// lacks its end record and fails as incomplete (ENODATA). The verdict is what lets the sender's
// exit code say whether the target stored the state, not only whether the bytes left. The
// pieces live in ./transport/.
export {
  type DialTarget,
  sendDevice,
  sendFile,
  sendStream,
  type SendFileOptions,
  type SendFileResult,
  type SendOptions,
  type SendResult,
} from "./transport/sender.js";
export {
  type ListenOptions,
  type Peer,
  type Received,
  receiveDevice,
  receiveFile,
  type ReceiveFileOptions,
  type ReceiveFileResult,
  type ReceiveOptions,
  type ReceiveResult,
  receiveStream,
  type StreamSink,
} from "./transport/receiver.js";
export {
  loadSecurity,
  parsePskKeys,
  type PskKey,
  type SecurityFiles,
  type TlsCertificates,
  type TlsPsk,
  type TransportSecurity,
  isLoopback,
} from "./transport/tls.js";
export { DEFAULT_TIMEOUT_MS, PROGRESS_BYTES } from "./transport/deadline.js";
