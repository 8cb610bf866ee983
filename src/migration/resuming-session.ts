// The resuming side of a migration data session (the writable data_fd of VFIO v2): stream
// bytes in any segmentation, verified and applied to staging copies of the regions. The device
// is only touched when RESUMING ends and the whole stream validated.
import { MigrationError } from "../core/errors.js";
import { StreamDecoder, type DecoderLimits, type DecoderSummary } from "../codec/decoder.js";
import { MemoryTarget, type StagedRegion } from "../codec/memory-target.js";
import type { DeviceModel } from "../device/device-model.js";

export interface ResumingOptions extends DecoderLimits {
  deviceId: string;
  requireConfig: boolean;
}

export class ResumingSession {
  readonly #target: MemoryTarget;
  readonly #decoder: StreamDecoder;
  /** Ended: finished (RESUMING left) or aborted (reset). */
  #closed = false;
  /** The writer said it is done (close()): no more writes, the resume still completes. */
  #writerDone = false;
  #bytes = 0;

  constructor(device: DeviceModel, options: ResumingOptions) {
    // An incremental stream was made against the device's current content: staging copies it
    // on write, chunk by chunk, and commit copies back only what changed. A full stream never
    // reads it (it must deliver every page): its staging is swapped in whole at commit.
    // A region over the embedder's memory is a base outside core memory: read once into staging.
    this.#target = new MemoryTarget((i) => {
      const region = device.regions[i]!;
      return region.memory ? region.bytes : region.data;
    });
    this.#decoder = new StreamDecoder(this.#target, {
      deviceId: options.deviceId,
      regions: device.layout,
      requireConfig: options.requireConfig,
      baseDigest: () => device.digest(),
      ...(options.maxRecordPayload !== undefined ? { maxRecordPayload: options.maxRecordPayload } : {}),
      ...(options.maxHeaderSize !== undefined ? { maxHeaderSize: options.maxHeaderSize } : {}),
      ...(options.maxPagesApplied !== undefined ? { maxPagesApplied: options.maxPagesApplied } : {}),
      maxStateSize: Math.max(options.maxStateSize ?? 0, device.size),
    });
  }

  /** True once no more bytes are taken: the writer closed it, or the session ended. */
  get closed(): boolean {
    return this.#closed || this.#writerDone;
  }

  /** Stream bytes accepted so far. */
  get bytesWritten(): number {
    return this.#bytes;
  }

  /** The decoder's counts so far (records, pages, and the work the stream caused). */
  summary(): DecoderSummary {
    return this.#decoder.summary();
  }

  /** Accepts stream bytes. A stream error is thrown here and again when RESUMING ends. */
  write(chunk: Uint8Array): number {
    if (this.#closed || this.#writerDone) throw new MigrationError("EINVAL", "write to a closed resuming session");
    if (!(chunk instanceof Uint8Array)) throw new MigrationError("EINVAL", "resuming data must be a Uint8Array");
    this.#decoder.push(chunk);
    this.#bytes += chunk.length;
    return chunk.length;
  }

  /**
   * Ends the stream (RESUMING is being left): validates it completely and returns the staged
   * regions and the config blob, or throws, leaving the device untouched.
   */
  finish(): { regions: StagedRegion[]; config: Uint8Array | undefined } {
    if (this.#closed) throw new MigrationError("EINVAL", "resuming session already closed");
    this.#closed = true;
    this.#decoder.end();
    return { regions: this.#target.take(), config: this.#decoder.config };
  }

  /**
   * The writer is done (close(2) on the data fd): later writes are refused, but the resume is not
   * aborted. QEMU closes the fd in load_cleanup before it leaves RESUMING; the stream is
   * validated and applied when RESUMING is left, as without the close.
   */
  close(): void {
    this.#writerDone = true;
  }

  /** Abandons the stream (a device reset): staging is freed, the device untouched. */
  abort(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#decoder.abort();
  }
}
