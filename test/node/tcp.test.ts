// Library tests of the TCP/TLS transport: the progress deadline, PSK key files, a sender that
// gives up and returns its device to RUNNING, early and late verdicts, and a device round trip
// over TLS-PSK.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { MigrationError } from "../../src/core/errors.js";
import { ProgressDeadline, PROGRESS_BYTES } from "../../src/node/transport/deadline.js";
import { parsePskKeys } from "../../src/node/transport/tls.js";
import { receiveDevice, receiveFile, sendDevice, sendFile } from "../../src/node/tcp.js";
import { fillRandom, makeDevice } from "../migration/helpers.js";

describe("ProgressDeadline", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("a drip never restarts the clock; 64 KiB does", () => {
    vi.useFakeTimers();
    const expired = vi.fn();
    const deadline = new ProgressDeadline(1000, expired);
    for (let t = 0; t < 900; t += 100) {
      vi.advanceTimersByTime(100);
      deadline.moved(1000);
    }
    vi.advanceTimersByTime(150);
    expect(expired).toHaveBeenCalledTimes(1);

    const expired2 = vi.fn();
    const d2 = new ProgressDeadline(1000, expired2);
    for (let i = 0; i < 10; i++) {
      vi.advanceTimersByTime(900);
      d2.moved(PROGRESS_BYTES);
    }
    expect(expired2).not.toHaveBeenCalled();
    d2.restart();
    vi.advanceTimersByTime(999);
    expect(expired2).not.toHaveBeenCalled();
    d2.stop();
    vi.advanceTimersByTime(5000);
    expect(expired2).not.toHaveBeenCalled();
  });

  it("refuses a timeout that is not a positive number", () => {
    for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => new ProgressDeadline(bad, () => undefined)).toThrow(MigrationError);
    }
  });
});

describe("parsePskKeys (QEMU tls-creds-psk format)", () => {
  it("reads identity:hexkey lines, skipping blank ones", () => {
    const keys = parsePskKeys(`qemu:${"0f".repeat(16)}\n\nbackup:${"AB".repeat(32)}\r\n`);
    expect(keys.map((k) => k.identity)).toEqual(["qemu", "backup"]);
    expect(Buffer.from(keys[0]!.key).toString("hex")).toBe("0f".repeat(16));
    expect(keys[1]!.key.length).toBe(32);
  });

  it.each([
    ["empty", ""],
    ["no colon", "qemu"],
    ["no identity", `:${"00".repeat(16)}`],
    ["odd hex", `qemu:${"0".repeat(33)}`],
    ["not hex", `qemu:${"zz".repeat(16)}`],
    ["too short a key", `qemu:${"00".repeat(8)}`],
    ["too long a key", `qemu:${"00".repeat(65)}`],
    ["too long an identity", `${"i".repeat(129)}:${"00".repeat(16)}`],
  ])("refuses %s (EINVAL)", (_name, text) => {
    expect(() => parsePskKeys(text)).toThrow(expect.objectContaining({ code: "EINVAL" }));
  });
});

function fake(onSocket: (socket: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on("error", () => undefined);
    onSocket(socket);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, port: (server.address() as { port: number }).port })));
}

describe("sendDevice", () => {
  it("gives up on a receiver that never reads (ETIMEDOUT) and returns the device to RUNNING", { timeout: 30_000 }, async () => {
    const { server, port } = await fake((socket) => socket.pause());
    const device = makeDevice({ regions: [{ name: "ram", size: 24 << 20 }] });
    try {
      fillRandom(device, 3);
      const error = await sendDevice(device, { port, timeoutMs: 500 }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: "ETIMEDOUT" });
      expect(device.state).toBe("RUNNING");
    } finally {
      device.free();
      server.close();
    }
  });

  it("an OK before the half-close is a protocol error; the device runs on", { timeout: 30_000 }, async () => {
    const { server, port } = await fake((socket) => {
      socket.pause();
      socket.write("OK\n");
    });
    const device = makeDevice({ regions: [{ name: "ram", size: 24 << 20 }] });
    try {
      fillRandom(device, 4);
      const error = await sendDevice(device, { port, timeoutMs: 10_000 }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: "EIO" });
      expect((error as Error).message).toMatch(/OK before the stream was complete/);
      expect(device.state).toBe("RUNNING");
    } finally {
      device.free();
      server.close();
    }
  });

  it("a receiver that takes the stream but never answers: ETIMEDOUT after the end, device RUNNING", { timeout: 30_000 }, async () => {
    const { server, port } = await fake((socket) => socket.resume());
    const device = makeDevice();
    try {
      fillRandom(device, 5);
      const error = await sendDevice(device, { port, timeoutMs: 1_500 }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: "ETIMEDOUT" });
      expect((error as Error).message).toMatch(/no verdict/);
      expect(device.state).toBe("RUNNING");
    } finally {
      device.free();
      server.close();
    }
  });

  it("migrates a device over TLS-PSK; a wrong key never reaches the receiver's device", { timeout: 30_000 }, async () => {
    const psk = [{ identity: "migstream", key: new Uint8Array(32).fill(7) }];
    const wrong = [{ identity: "migstream", key: new Uint8Array(32).fill(8) }];
    let listening!: (port: number) => void;
    const bound = new Promise<number>((resolve) => (listening = resolve));
    const dropped: string[] = [];
    const receiving = receiveDevice({
      port: 0,
      tls: { psk },
      final: "STOP",
      timeoutMs: 5000,
      onListening: (a) => listening(a.port),
      onDropped: (_p, reason) => dropped.push(reason.message),
    });
    const port = await bound;
    const device = makeDevice();
    try {
      fillRandom(device, 6);
      const refused = await sendDevice(device, { port, tls: { psk: wrong }, timeoutMs: 5000 }).catch((e: unknown) => e);
      expect(refused).toMatchObject({ code: "EIO" });
      expect(device.state).toBe("RUNNING");
      expect(dropped.length).toBe(1);
      const sent = await sendDevice(device, { port, tls: { psk }, timeoutMs: 5000 });
      const received = await receiving;
      expect(received.digest).toBe(sent.digest);
      expect(received.device.state).toBe("STOP");
      received.device.free();
    } finally {
      device.free();
    }
  });
});

describe("sendFile / receiveFile", () => {
  it("a silent peer does not lock the receiver out; the file arrives byte-identical", { timeout: 30_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "migstream-tcp-"));
    try {
      const state = new Uint8Array(3 * 1024 * 1024 + 100);
      for (let i = 0; i < state.length; i += 7) state[i] = (i * 31) & 0xff;
      writeFileSync(join(dir, "in.state"), state);
      let listening!: (port: number) => void;
      const bound = new Promise<number>((resolve) => (listening = resolve));
      const dropped: string[] = [];
      const receiving = receiveFile(join(dir, "out.state"), {
        port: 0,
        timeoutMs: 5_000,
        onListening: (a) => listening(a.port),
        onDropped: (_p, e) => dropped.push(e.message),
      });
      const port = await bound;
      const silent = connect(port, "127.0.0.1");
      silent.on("error", () => undefined);
      await new Promise((resolve) => silent.once("connect", resolve));
      const sent = await sendFile(join(dir, "in.state"), { port, timeoutMs: 10_000 });
      const received = await receiving;
      expect(readFileSync(join(dir, "out.state")).equals(Buffer.from(state))).toBe(true);
      expect(received.bytes).toBe(sent.summary.bytes);
      expect(received.summary.ended).toBe(true);
      silent.destroy();
      expect(readdirSync(dir).filter((n) => n.endsWith(".migstream-tmp"))).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("sendFile connects first: nobody listening fails with ECONNREFUSED even for a missing file", async () => {
    // Nothing listens on port 1 (a privileged port no test binds).
    const error = await sendFile("/nonexistent/state", { port: 1, timeoutMs: 5000 }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "EIO" });
    expect((error as Error).message).toMatch(/ECONNREFUSED/);
    expect(existsSync("/nonexistent/state")).toBe(false);
  });
});
