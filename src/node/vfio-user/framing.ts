// Cutting a byte stream into vfio-user messages: any segmentation, several messages per read,
// and the size a header claims checked against the limit before any memory is taken for it.
import { HEADER_SIZE, type Header, readHeader } from "./protocol.js";

export interface FramingSink {
  message(header: Header, payload: Uint8Array): void;
  /** The stream cannot be framed any further (a size below the header's, or past the limit). */
  violation(header: Header, errno: "EINVAL" | "E2BIG", message: string): void;
}

export class MessageReader {
  readonly #limit: number;
  readonly #sink: FramingSink;
  readonly #headerBytes = new Uint8Array(HEADER_SIZE);
  #headerFill = 0;
  #header: Header | undefined;
  #body: Uint8Array | undefined;
  #bodyFill = 0;
  #broken = false;

  /** `limit`: the largest message (header included) accepted. */
  constructor(limit: number, sink: FramingSink) {
    this.#limit = limit;
    this.#sink = sink;
  }

  /** True while part of a message has arrived and the rest has not. */
  get partial(): boolean {
    return this.#headerFill > 0 || this.#header !== undefined;
  }

  push(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length && !this.#broken) {
      if (this.#header === undefined) {
        const take = Math.min(HEADER_SIZE - this.#headerFill, chunk.length - at);
        this.#headerBytes.set(chunk.subarray(at, at + take), this.#headerFill);
        this.#headerFill += take;
        at += take;
        if (this.#headerFill < HEADER_SIZE) return;
        const header = readHeader(this.#headerBytes);
        this.#headerFill = 0;
        if (header.size < HEADER_SIZE) {
          this.#broken = true;
          this.#sink.violation(header, "EINVAL", `message size ${header.size} is smaller than its ${HEADER_SIZE}-byte header`);
          return;
        }
        if (header.size > this.#limit) {
          this.#broken = true;
          this.#sink.violation(header, "E2BIG", `message size ${header.size} is over the limit of ${this.#limit} bytes`);
          return;
        }
        const length = header.size - HEADER_SIZE;
        if (length === 0) {
          this.#sink.message(header, new Uint8Array(0));
          continue;
        }
        // The whole body is in this chunk: a view, no copy.
        if (chunk.length - at >= length) {
          this.#sink.message(header, chunk.subarray(at, at + length));
          at += length;
          continue;
        }
        this.#header = header;
        this.#body = new Uint8Array(length);
        this.#bodyFill = 0;
        continue;
      }
      const body = this.#body!;
      const take = Math.min(body.length - this.#bodyFill, chunk.length - at);
      body.set(chunk.subarray(at, at + take), this.#bodyFill);
      this.#bodyFill += take;
      at += take;
      if (this.#bodyFill === body.length) {
        const header = this.#header;
        this.#header = undefined;
        this.#body = undefined;
        this.#sink.message(header, body);
      }
    }
  }
}
