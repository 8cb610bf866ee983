// migstream: the public library entry. No `node:` imports below this file, so it runs the same
// in Node, workers and browsers; Node adapters live in `migstream/node`.
export { MigrationError, type MigrationErrorCode, type MigrationErrorDetails } from "./core/errors.js";
export { CoreBuffer, allocate } from "./core/buffer.js";
