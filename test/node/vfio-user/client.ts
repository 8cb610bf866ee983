// A vfio-user client written from the specification (qemu docs/interop/vfio-user.rst) for the
// tests, sharing no code with the server: its own header coding, framing, message ids, and a
// guest memory the server reaches with DMA_READ / DMA_WRITE.
import { connect, type Socket } from "node:net";
import { constants } from "node:os";

export const CMD = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
} as const;

/** enum vfio_device_mig_state. */
export const STATE = { ERROR: 0, STOP: 1, RUNNING: 2, STOP_COPY: 3, RESUMING: 4, RUNNING_P2P: 5, PRE_COPY: 6, PRE_COPY_P2P: 7 } as const;
export const FEATURE = {
  GET: 1 << 16,
  SET: 1 << 17,
  PROBE: 1 << 18,
  MIGRATION: 1,
  MIG_DEVICE_STATE: 2,
  DMA_LOGGING_START: 6,
  DMA_LOGGING_STOP: 7,
  DMA_LOGGING_REPORT: 8,
  MIG_DATA_SIZE: 9,
};

export class ReplyError extends Error {
  constructor(
    readonly command: number,
    readonly errno: number,
  ) {
    const name = Object.entries(constants.errno).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`;
    super(`command ${command} failed: ${name}`);
  }
  /** The errno's name (EINVAL...). */
  get code(): string {
    return Object.entries(constants.errno).find(([, v]) => v === this.errno)?.[0] ?? `E${this.errno}`;
  }
}

export interface Message {
  id: number;
  cmd: number;
  flags: number;
  error: number;
  body: Buffer;
}

export function encodeMessage(id: number, cmd: number, body: Uint8Array, flags = 0, error = 0): Buffer {
  const out = Buffer.alloc(16 + body.length);
  out.writeUInt16LE(id, 0);
  out.writeUInt16LE(cmd, 2);
  out.writeUInt32LE(16 + body.length, 4);
  out.writeUInt32LE(flags, 8);
  out.writeUInt32LE(error, 12);
  out.set(body, 16);
  return out;
}

/** Guest memory of the client: windows it maps for the server's DMA. */
export class GuestMemory {
  readonly windows: { address: number; bytes: Buffer }[] = [];
  add(address: number, size: number): Buffer {
    const bytes = Buffer.alloc(size);
    this.windows.push({ address, bytes });
    return bytes;
  }
  find(address: number, count: number): Buffer | undefined {
    const w = this.windows.find((x) => x.address <= address && address + count <= x.address + x.bytes.length);
    return w?.bytes.subarray(address - w.address, address - w.address + count);
  }
}

export class TestClient {
  readonly socket: Socket;
  readonly guest = new GuestMemory();
  /** DMA messages the server sent, in order. */
  readonly dmaLog: { cmd: number; address: number; count: number }[] = [];
  #chunks: Buffer[] = [];
  #buffered = 0;
  #nextId = 1;
  readonly #waiting = new Map<number, { resolve: (m: Message) => void; reject: (e: Error) => void }>();
  #ended: Promise<void>;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on("data", (chunk: Buffer) => this.#data(chunk));
    this.#ended = new Promise((resolve) => socket.on("close", () => resolve()));
    socket.on("close", () => {
      for (const w of this.#waiting.values()) w.reject(new Error("connection closed"));
      this.#waiting.clear();
    });
    socket.on("error", () => undefined);
  }

  static connect(path: string): Promise<TestClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      socket.once("connect", () => resolve(new TestClient(socket)));
      socket.once("error", reject);
    });
  }

  /** Resolves when the server closes the connection. */
  closed(): Promise<void> {
    return this.#ended;
  }

  close(): Promise<void> {
    this.socket.end();
    this.socket.destroy();
    return this.#ended;
  }

  #data(chunk: Buffer): void {
    // Chunks are joined once per message, when all of it is there (no copy per chunk).
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    for (;;) {
      if (this.#buffered < 16) return;
      if (this.#chunks[0]!.length < 16) this.#chunks = [Buffer.concat(this.#chunks)];
      const size = this.#chunks[0]!.readUInt32LE(4);
      if (this.#buffered < size) return;
      if (this.#chunks[0]!.length < size) this.#chunks = [Buffer.concat(this.#chunks)];
      const first = this.#chunks[0]!;
      const m: Message = {
        id: first.readUInt16LE(0),
        cmd: first.readUInt16LE(2),
        flags: first.readUInt32LE(8),
        error: first.readUInt32LE(12),
        body: first.subarray(16, size),
      };
      if (first.length === size) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(size);
      this.#buffered -= size;
      if ((m.flags & 0xf) === 1) {
        const w = this.#waiting.get(m.id);
        this.#waiting.delete(m.id);
        w?.resolve(m);
      } else this.#serve(m);
    }
  }

  /** The server's DMA_READ / DMA_WRITE, answered from guest memory. */
  #serve(m: Message): void {
    const address = Number(m.body.readBigUInt64LE(0));
    const count = Number(m.body.readBigUInt64LE(8));
    this.dmaLog.push({ cmd: m.cmd, address, count });
    const target = this.guest.find(address, count);
    if (!target || (m.cmd !== CMD.DMA_READ && m.cmd !== CMD.DMA_WRITE)) {
      this.socket.write(encodeMessage(m.id, m.cmd, new Uint8Array(0), 1 | 0x20, constants.errno.EFAULT));
      return;
    }
    if (m.cmd === CMD.DMA_WRITE) {
      m.body.copy(target, 0, 16, 16 + count);
      this.socket.write(encodeMessage(m.id, m.cmd, m.body.subarray(0, 16), 1));
    } else {
      this.socket.write(encodeMessage(m.id, m.cmd, Buffer.concat([m.body.subarray(0, 16), target]), 1));
    }
  }

  /** Sends a command and waits for its reply; an error reply rejects with ReplyError. */
  async call(cmd: number, body: Uint8Array = new Uint8Array(0)): Promise<Buffer> {
    const m = await this.callRaw(cmd, body);
    if ((m.flags & 0x20) !== 0) throw new ReplyError(cmd, m.error);
    return m.body;
  }

  callRaw(cmd: number, body: Uint8Array = new Uint8Array(0), flags = 0): Promise<Message> {
    const id = this.#nextId;
    this.#nextId = (this.#nextId + 1) & 0xffff;
    const reply = new Promise<Message>((resolve, reject) => this.#waiting.set(id, { resolve, reject }));
    this.socket.write(encodeMessage(id, cmd, body, flags));
    return reply;
  }

  /** Sends a command with no_reply set: nothing comes back. */
  sendNoReply(cmd: number, body: Uint8Array): void {
    const id = this.#nextId;
    this.#nextId = (this.#nextId + 1) & 0xffff;
    this.socket.write(encodeMessage(id, cmd, body, 0x10));
  }

  /** Waits for the reply to message `id` (sent raw). */
  replyTo(id: number): Promise<Message> {
    return new Promise((resolve, reject) => this.#waiting.set(id, { resolve, reject }));
  }

  async version(
    caps: object = { capabilities: { max_msg_fds: 0, max_data_xfer_size: 1 << 20 } },
  ): Promise<{ major: number; minor: number; json: Record<string, unknown> }> {
    const text = Buffer.from(`${JSON.stringify(caps)}\0`);
    const body = Buffer.alloc(4);
    body.writeUInt16LE(0, 0);
    body.writeUInt16LE(1, 2);
    const reply = await this.call(CMD.VERSION, Buffer.concat([body, text]));
    const json = JSON.parse(reply.subarray(4, reply.length - 1).toString("utf8")) as Record<string, unknown>;
    return { major: reply.readUInt16LE(0), minor: reply.readUInt16LE(2), json };
  }

  async deviceInfo(): Promise<{ flags: number; regions: number; irqs: number }> {
    const body = Buffer.alloc(16);
    body.writeUInt32LE(16, 0);
    const r = await this.call(CMD.DEVICE_GET_INFO, body);
    return { flags: r.readUInt32LE(4), regions: r.readUInt32LE(8), irqs: r.readUInt32LE(12) };
  }

  async regionInfo(index: number): Promise<{ flags: number; index: number; size: number; raw: Buffer }> {
    const body = Buffer.alloc(32);
    body.writeUInt32LE(32, 0);
    body.writeUInt32LE(index, 8);
    const r = await this.call(CMD.DEVICE_GET_REGION_INFO, body);
    return { flags: r.readUInt32LE(4), index: r.readUInt32LE(8), size: Number(r.readBigUInt64LE(16)), raw: r };
  }

  async regionRead(region: number, offset: number, count: number): Promise<Buffer> {
    const body = Buffer.alloc(16);
    body.writeBigUInt64LE(BigInt(offset), 0);
    body.writeUInt32LE(region, 8);
    body.writeUInt32LE(count, 12);
    const r = await this.call(CMD.REGION_READ, body);
    if (r.readUInt32LE(12) !== count) throw new Error("short region read");
    return r.subarray(16);
  }

  async regionWrite(region: number, offset: number, data: Uint8Array): Promise<void> {
    const body = Buffer.alloc(16 + data.length);
    body.writeBigUInt64LE(BigInt(offset), 0);
    body.writeUInt32LE(region, 8);
    body.writeUInt32LE(data.length, 12);
    body.set(data, 16);
    await this.call(CMD.REGION_WRITE, body);
  }

  async dmaMap(address: number, size: number, flags = 3): Promise<Buffer> {
    const body = Buffer.alloc(32);
    body.writeUInt32LE(32, 0);
    body.writeUInt32LE(flags, 4);
    body.writeBigUInt64LE(BigInt(address), 16);
    body.writeBigUInt64LE(BigInt(size), 24);
    await this.call(CMD.DMA_MAP, body);
    return this.guest.add(address, size);
  }

  async dmaUnmap(address: number, size: number, flags = 0): Promise<Buffer> {
    const body = Buffer.alloc(24);
    body.writeUInt32LE(24, 0);
    body.writeUInt32LE(flags, 4);
    body.writeBigUInt64LE(BigInt(address), 8);
    body.writeBigUInt64LE(BigInt(size), 16);
    return this.call(CMD.DMA_UNMAP, body);
  }

  /** DEVICE_FEATURE with `data`, accepting `argsz` bytes back; returns the reply's data part. */
  async feature(flags: number, data: Uint8Array = new Uint8Array(0), argsz = 8 + data.length): Promise<Buffer> {
    const body = Buffer.alloc(8 + data.length);
    body.writeUInt32LE(argsz, 0);
    body.writeUInt32LE(flags, 4);
    body.set(data, 8);
    const r = await this.call(CMD.DEVICE_FEATURE, body);
    if (r.readUInt32LE(0) !== r.length) throw new Error(`feature reply argsz ${r.readUInt32LE(0)} for ${r.length} bytes`);
    return r.subarray(8);
  }

  async setState(state: number): Promise<void> {
    const data = Buffer.alloc(8);
    data.writeUInt32LE(state, 0);
    data.writeInt32LE(-1, 4);
    await this.feature(FEATURE.SET | FEATURE.MIG_DEVICE_STATE, data);
  }

  async getState(): Promise<number> {
    return (await this.feature(FEATURE.GET | FEATURE.MIG_DEVICE_STATE, new Uint8Array(0), 16)).readUInt32LE(0);
  }

  /** MIG_DATA_READ of up to `size` bytes. */
  async migRead(size: number): Promise<Buffer> {
    const body = Buffer.alloc(8);
    body.writeUInt32LE(8 + size, 0);
    body.writeUInt32LE(size, 4);
    const r = await this.call(CMD.MIG_DATA_READ, body);
    const got = r.readUInt32LE(4);
    if (r.readUInt32LE(0) !== 8 + got || r.length !== 8 + got) throw new Error("malformed MIG_DATA_READ reply");
    return r.subarray(8);
  }

  async migWrite(data: Uint8Array): Promise<void> {
    const body = Buffer.alloc(8 + data.length);
    body.writeUInt32LE(8, 0);
    body.writeUInt32LE(data.length, 4);
    body.set(data, 8);
    await this.call(CMD.MIG_DATA_WRITE, body);
  }

  async reset(): Promise<void> {
    await this.call(CMD.DEVICE_RESET);
  }
}
