// A verdict only a reader can give: fake receivers that answer without reading (at connect time,
// with the byte count and digest predicted by encoding the same snapshot), that read but answer
// as an older receiver would, and an honest minimal one that computes the proof from the nonce;
// and an older sender (no trailer) against the real receiver. All through the real CLI.
import { createHash } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { beforeAll, describe, expect, it } from "vitest";
import { NONCE_BYTES, TRAILER_BYTES, verdictProof } from "../../src/node/transport/verdict.js";
import { finished, makeState, run, start, tempFiles, useTestDir, waitForStderr } from "./helpers.js";

const scratch = useTestDir();
const { at } = scratch;

/** The stream `send` writes for these snapshots (a snapshot is encoded deterministically). */
const streams: Record<string, Buffer> = {};

beforeAll(async () => {
  for (const [name, size] of [
    ["small", 200_000],
    ["large", 3_000_000],
  ] as const) {
    writeFileSync(at(`${name}.state`), makeState(size, 11));
    const encoded = await run(["encode", at(`${name}.state`), "-o", at(`${name}.mig`), "--quiet"]);
    expect(encoded.code, encoded.stderr).toBe(0);
    streams[name] = readFileSync(at(`${name}.mig`));
  }
});

function fakeServer(onSocket: (socket: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on("error", () => undefined);
    onSocket(socket);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, port: (server.address() as { port: number }).port })));
}

/** Reads everything up to the sender's half-close, then answers what `answer` makes of it. */
function reader(answer: (received: Buffer) => string): (socket: Socket) => void {
  return (socket) => {
    const parts: Buffer[] = [];
    socket.on("data", (d: Buffer) => parts.push(d));
    socket.on("end", () => socket.end(answer(Buffer.concat(parts))));
  };
}

async function sendTo(port: number, name: string): Promise<Awaited<ReturnType<typeof run>>> {
  return run(["send", at(`${name}.state`), "--to", String(port), "--timeout", "10"]);
}

describe.each(["small", "large"])("a %s snapshot", (name) => {
  it("an OK with the predicted byte count and digest at connect time is refused (exit 4)", async () => {
    const stream = streams[name]!;
    // The best a liar can do without the nonce: everything else about the stream is predictable.
    const guess = verdictProof(stream.length, stream.subarray(stream.length - 56), new Uint8Array(NONCE_BYTES));
    const fake = await fakeServer((socket) => {
      socket.write(`OK ${stream.length} ${guess}\n`);
      socket.resume();
    });
    try {
      const sent = await sendTo(fake.port, name);
      expect(sent.code, sent.stderr).toBe(4);
      expect(sent.stderr).toMatch(/EIO: protocol error: .*OK/);
    } finally {
      fake.server.close();
    }
  });

  it("a receiver that reads it all but answers with a guessed proof is refused (exit 4)", async () => {
    const fake = await fakeServer(
      reader((all) => {
        const streamBytes = all.length - TRAILER_BYTES;
        const digest = createHash("sha256").update(all.subarray(0, streamBytes)).digest("hex");
        return `OK ${streamBytes} ${digest}\n`;
      }),
    );
    try {
      const sent = await sendTo(fake.port, name);
      expect(sent.code, sent.stderr).toBe(4);
      expect(sent.stderr).toMatch(/EIO: protocol error: the receiver's OK does not prove it read the stream/);
    } finally {
      fake.server.close();
    }
  });

  it("a receiver that read everything answers with the nonce's proof: exit 0 (the proof is as FORMAT.md §8 says)", async () => {
    let took: Buffer | undefined;
    const fake = await fakeServer(
      reader((all) => {
        took = all;
        const streamBytes = all.length - TRAILER_BYTES;
        return `OK ${streamBytes} ${verdictProof(streamBytes, all.subarray(streamBytes - 56, streamBytes), all.subarray(all.length - NONCE_BYTES))}\n`;
      }),
    );
    try {
      const sent = await sendTo(fake.port, name);
      expect(sent.code, sent.stderr).toBe(0);
      // What arrived: exactly the stream, then "MSNONCE1" and 32 bytes.
      expect(took!.subarray(0, took!.length - TRAILER_BYTES).equals(streams[name]!)).toBe(true);
      expect(took!.subarray(took!.length - TRAILER_BYTES, took!.length - NONCE_BYTES).toString("latin1")).toBe("MSNONCE1");
    } finally {
      fake.server.close();
    }
  });
});

describe("older and newer ends fail clearly", () => {
  it("a receiver answering the old verdict (OK <bytes>, no proof): EPROTONOSUPPORT, exit 3", async () => {
    const fake = await fakeServer(reader((all) => `OK ${all.length - TRAILER_BYTES}\n`));
    try {
      const sent = await sendTo(fake.port, "small");
      expect(sent.code, sent.stderr).toBe(3);
      expect(sent.stderr).toMatch(/EPROTONOSUPPORT: .*without proof .*upgrade it/);
    } finally {
      fake.server.close();
    }
  });

  it("an older receiver, refusing the trailer as trailing bytes: EPROTONOSUPPORT, exit 3", async () => {
    const fake = await fakeServer(reader(() => "ERR EBADMSG record 33 at byte 200104: trailing bytes after the end of the stream\n"));
    try {
      const sent = await sendTo(fake.port, "small");
      expect(sent.code, sent.stderr).toBe(3);
      expect(sent.stderr).toMatch(/EPROTONOSUPPORT: the receiver does not take the verdict nonce .*upgrade it/);
    } finally {
      fake.server.close();
    }
  });

  it("an older sender (the stream, no trailer) gets ERR EPROTONOSUPPORT; receive exits 3 and writes nothing", async () => {
    const child = start(["receive", "--listen", "0", "-o", at("old.state")]);
    const done = finished(child);
    const port = Number((await waitForStderr(child, /listening on [^\s]+:(\d+)/))[1]);
    const verdict = await new Promise<string>((resolve) => {
      const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
      let line = "";
      socket.on("data", (d: Buffer) => (line += d.toString()));
      socket.on("end", () => resolve(line));
      socket.on("error", () => resolve(line));
      socket.end(streams.small!);
    });
    const received = await done;
    expect(verdict).toMatch(/^ERR EPROTONOSUPPORT the sender did not follow the stream with the verdict nonce/);
    expect(received.code, received.stderr).toBe(3);
    expect(existsSync(at("old.state"))).toBe(false);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });

  it("a stream cut inside a record is still ENODATA naming where it stopped (exit 2)", async () => {
    const child = start(["receive", "--listen", "0", "-o", at("cut.state")]);
    const done = finished(child);
    const port = Number((await waitForStderr(child, /listening on [^\s]+:(\d+)/))[1]);
    const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    socket.on("error", () => undefined);
    socket.on("data", () => undefined);
    socket.end(streams.small!.subarray(0, streams.small!.length >> 1));
    const received = await done;
    socket.destroy();
    expect(received.code, received.stderr).toBe(2);
    expect(received.stderr).toMatch(/ENODATA: .*record \d+/);
    expect(existsSync(at("cut.state"))).toBe(false);
  });
});
