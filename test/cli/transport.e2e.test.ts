// End-to-end tests of the transport's trust rules through the real binary on loopback: the
// verdict comes after the output is stored, deadlines on every wait, a receiver that cannot be
// locked out, memory that follows delivered data, and TLS (certificates, pre-shared keys).
// Every case also checks that nothing was written and no temporary file is left.
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { encodeHeader } from "../../src/format/header.js";
import { makePki } from "./pki.js";
import { finished, makeState, run, type RunResult, start, tempFiles, useTestDir, waitForStderr } from "./helpers.js";

const SIZE = 2 * 1024 * 1024 + 512;
const BIG = 32 * 1024 * 1024;

const scratch = useTestDir();
const { at } = scratch;

beforeAll(async () => {
  writeFileSync(at("vm.state"), makeState(SIZE, 21));
  // Incompressible and larger than what loopback socket buffers hold: a peer that does not read
  // stalls the sender.
  writeFileSync(at("big.state"), randomBytes(BIG));
  const encoded = await run(["encode", at("vm.state"), "-o", at("vm.mig"), "--quiet"]);
  expect(encoded.code, encoded.stderr).toBe(0);
});

async function receiver(
  args: readonly string[],
  env?: Record<string, string>,
): Promise<{ port: number; done: Promise<RunResult>; child: ReturnType<typeof start> }> {
  const child = start(["receive", "--listen", "0", ...args], env ? { env } : {});
  const listening = waitForStderr(child, /listening on [^\s]+:(\d+)/);
  const done = finished(child);
  const match = await listening;
  return { port: Number(match[1]), done, child };
}

/** A local server for fake receivers; resolves with its port. */
function fakeServer(onSocket: (socket: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true }, onSocket);
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, port: (server.address() as { port: number }).port })));
}

const same = (a: string, b: string): boolean => readFileSync(a).equals(readFileSync(b));

describe("the verdict comes after the commit", () => {
  it("a receiver that cannot write its output answers ERR EIO: the sender does not exit 0", async () => {
    const target = await receiver(["-o", at("full.state")], { MIGSTREAM_FAULT_ENOSPC_AT: String(1 << 20) });
    const sent = await run(["send", at("vm.state"), "--to", String(target.port)]);
    const received = await target.done;
    expect(received.code, received.stderr).toBe(4);
    expect(received.stderr).toMatch(/EIO: cannot write .*full\.state.*ENOSPC/);
    expect(sent.code, sent.stderr).toBe(4);
    expect(sent.stderr).toMatch(/EIO/);
    expect(existsSync(at("full.state"))).toBe(false);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });

  it("encode onto a full disk: EIO naming the output, no temporary file left", async () => {
    const result = await run(["encode", at("vm.state"), "-o", at("full.mig")], { env: { MIGSTREAM_FAULT_ENOSPC_AT: String(1 << 20) } });
    expect(result.code, result.stderr).toBe(4);
    expect(result.stderr).toMatch(/EIO: cannot write .*full\.mig.*ENOSPC/);
    expect(existsSync(at("full.mig"))).toBe(false);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });

  it("an OK before the sender finished is a protocol error (exit 4)", async () => {
    const fake = await fakeServer((socket) => {
      socket.on("error", () => undefined);
      socket.pause();
      socket.write("OK\n");
    });
    try {
      const sent = await run(["send", at("big.state"), "--to", String(fake.port), "--timeout", "10"]);
      expect(sent.code, sent.stderr).toBe(4);
      expect(sent.stderr).toMatch(/EIO: protocol error: .*OK before the stream was complete/);
    } finally {
      fake.server.close();
    }
  });

  it("an OK at once for a stream small enough to leave in one write is still refused (exit 4)", async () => {
    writeFileSync(at("tiny.state"), makeState(64 * 1024, 3));
    const fake = await fakeServer((socket) => {
      socket.on("error", () => undefined);
      socket.write("OK\n");
      socket.resume();
    });
    try {
      for (let i = 0; i < 3; i++) {
        const sent = await run(["send", at("tiny.state"), "--to", String(fake.port), "--timeout", "10"]);
        expect(sent.code, sent.stderr).toBe(4);
        expect(sent.stderr).toMatch(/EIO: protocol error: .*OK/);
      }
    } finally {
      fake.server.close();
    }
  });
});

describe("deadlines", () => {
  it("a server that accepts and never reads: send gives up after --timeout without progress (exit 4)", async () => {
    const fake = await fakeServer((socket) => {
      socket.on("error", () => undefined);
      socket.pause();
    });
    try {
      const started = Date.now();
      const sent = await run(["send", at("big.state"), "--to", String(fake.port), "--timeout", "1"]);
      expect(sent.code, sent.stderr).toBe(4);
      expect(sent.stderr).toMatch(/ETIMEDOUT/);
      // Generous on a loaded machine: it gave up, it did not hang.
      expect(Date.now() - started).toBeLessThan(30_000);
    } finally {
      fake.server.close();
    }
  });

  it("dripping, garbage and cut-off peers are dropped; a real sender after them succeeds", async () => {
    const target = await receiver(["-o", at("after-drip.state"), "--timeout", "1.5"]);
    const stream = encodeHeader({
      checksum: "xxh3",
      pageSize: 4096,
      maxRecordPayload: 1 << 20,
      deviceId: "",
      baseDigest: undefined,
      regions: [{ name: "state", size: SIZE }],
    }).bytes;
    const peers: Socket[] = [];
    const open = (): Promise<Socket> =>
      new Promise((resolve, reject) => {
        const socket = connect(target.port, "127.0.0.1", () => resolve(socket));
        socket.on("error", reject);
        peers.push(socket);
      });
    // One byte of a valid header now and then: never a whole header within the timeout.
    const dripper = await open();
    dripper.on("error", () => undefined);
    let i = 0;
    const drip = setInterval(() => {
      if (i < stream.length && !dripper.destroyed) dripper.write(stream.subarray(i, ++i));
    }, 200);
    // Not a migstream stream at all.
    const garbage = await open();
    garbage.on("error", () => undefined);
    garbage.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // A header cut off by the peer.
    const cut = await open();
    cut.on("error", () => undefined);
    cut.end(stream.subarray(0, 20));
    try {
      const sent = await run(["send", at("vm.state"), "--to", String(target.port)]);
      const received = await target.done;
      expect(sent.code, sent.stderr).toBe(0);
      expect(received.code, received.stderr).toBe(0);
      expect(received.stderr).toMatch(/dropped .*bad magic|dropped .*corrupt|dropped .*not a migstream/i);
      expect(same(at("after-drip.state"), at("vm.state"))).toBe(true);
      expect(tempFiles(scratch.dir)).toEqual([]);
    } finally {
      clearInterval(drip);
      for (const p of peers) p.destroy();
    }
  });

  it("a peer that sends a valid header and then drips owns the migration and times out: exit 4, nothing written", async () => {
    const target = await receiver(["-o", at("dripped.state"), "--timeout", "1"]);
    // A real stream: its header at once, then the rest at 1 KB/s (progress needs 64 KiB).
    const stream = readFileSync(at("vm.mig"));
    const socket = connect(target.port, "127.0.0.1");
    socket.on("error", () => undefined);
    socket.write(stream.subarray(0, 200));
    let sent = 200;
    const drip = setInterval(() => {
      socket.write(stream.subarray(sent, sent + 100));
      sent += 100;
    }, 100);
    try {
      const received = await target.done;
      expect(received.code, received.stderr).toBe(4);
      expect(received.stderr).toMatch(/ETIMEDOUT: no progress/);
      expect(existsSync(at("dripped.state"))).toBe(false);
      expect(tempFiles(scratch.dir)).toEqual([]);
    } finally {
      clearInterval(drip);
      socket.destroy();
    }
  });
});

describe("memory follows the data, not the claim", () => {
  it("a header claiming 1 GiB, then EOF: exit 2, receiver peak RSS under 128 MiB", async () => {
    const target = await receiver(["-o", at("claim.state"), "--json"]);
    const header = encodeHeader({
      checksum: "xxh3",
      pageSize: 4096,
      maxRecordPayload: 1 << 20,
      deviceId: "",
      baseDigest: undefined,
      regions: [{ name: "state", size: 1 << 30 }],
    }).bytes;
    await new Promise<void>((resolve, reject) => {
      const socket = connect(target.port, "127.0.0.1", () => socket.end(header));
      socket.on("error", reject);
      socket.on("close", () => resolve());
      socket.resume();
    });
    const received = await target.done;
    expect(received.code, received.stderr).toBe(2);
    expect(received.stderr).toMatch(/ENODATA: incomplete stream: it ends right after its header/);
    const report = JSON.parse(received.stdout.toString()) as { error: { code: string }; maxRssBytes: number };
    expect(report.error.code).toBe("ENODATA");
    expect(report.maxRssBytes).toBeGreaterThan(0);
    expect(report.maxRssBytes).toBeLessThan(128 * 1024 * 1024);
    expect(existsSync(at("claim.state"))).toBe(false);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });
});

describe("TLS", () => {
  let pki: string;
  const pem = (name: string): string => join(pki, name);

  beforeAll(() => {
    pki = join(scratch.dir, "pki");
    makePki(pki);
  });

  const certs = (name: string, ca = "ca"): string[] => ["--tls-cert", pem(`${name}.pem`), "--tls-key", pem(`${name}.key`), "--tls-ca", pem(`${ca}.pem`)];

  it("certificates: plaintext, a client of another CA and a client not trusting the receiver are refused; the right peer succeeds", {
    timeout: 120_000,
  }, async () => {
    const target = await receiver(["-o", at("tls.state"), "--timeout", "5", ...certs("receiver")]);
    const to = ["--to", `127.0.0.1:${target.port}`, "--timeout", "5"];
    const attempts = [
      await run(["send", at("vm.state"), ...to]),
      await run(["send", at("vm.state"), ...to, ...certs("intruder", "ca")]),
      await run(["send", at("vm.state"), ...to, ...certs("sender", "other-ca")]),
    ];
    for (const attempt of attempts) {
      expect(attempt.code, attempt.stderr).toBe(4);
      expect(existsSync(at("tls.state"))).toBe(false);
      expect(tempFiles(scratch.dir)).toEqual([]);
    }
    expect(attempts[2]!.stderr).toMatch(/TLS handshake|certificate/i);
    const good = await run(["send", at("vm.state"), ...to, ...certs("sender"), "--json"]);
    const received = await target.done;
    expect(good.code, good.stderr).toBe(0);
    expect(received.code, received.stderr).toBe(0);
    expect(JSON.parse(good.stdout.toString())).toMatchObject({ tls: "certificates", accepted: true });
    expect(same(at("tls.state"), at("vm.state"))).toBe(true);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });

  it("certificates: a receiver whose certificate names another host is refused by the sender", { timeout: 120_000 }, async () => {
    const target = await receiver(["-o", at("elsewhere.state"), "--timeout", "5", ...certs("elsewhere")]);
    const sent = await run(["send", at("vm.state"), "--to", `127.0.0.1:${target.port}`, "--timeout", "5", ...certs("sender")]);
    expect(sent.code, sent.stderr).toBe(4);
    expect(sent.stderr).toMatch(/TLS handshake .*failed.*(IP|altnames|host)/i);
    target.child.kill("SIGTERM");
    await target.done;
    expect(existsSync(at("elsewhere.state"))).toBe(false);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });

  it("pre-shared keys: the wrong key is refused, the right one succeeds", { timeout: 120_000 }, async () => {
    const target = await receiver(["-o", at("psk.state"), "--timeout", "5", "--tls-psk", pem("keys.psk")]);
    const to = ["--to", `127.0.0.1:${target.port}`, "--timeout", "5"];
    const wrong = await run(["send", at("vm.state"), ...to, "--tls-psk", pem("wrong.psk")]);
    expect(wrong.code, wrong.stderr).toBe(4);
    expect(existsSync(at("psk.state"))).toBe(false);
    expect(tempFiles(scratch.dir)).toEqual([]);
    const right = await run(["send", at("vm.state"), ...to, "--tls-psk", pem("keys.psk")]);
    const received = await target.done;
    expect(right.code, right.stderr).toBe(0);
    expect(received.code, received.stderr).toBe(0);
    expect(same(at("psk.state"), at("vm.state"))).toBe(true);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });

  it("receive on a non-loopback address without TLS warns", async () => {
    const child = start(["receive", "--listen", "0.0.0.0:0", "-o", at("open.state")]);
    const done = finished(child);
    await waitForStderr(child, /listening on/);
    child.kill("SIGTERM");
    const result = await done;
    expect(result.stderr).toMatch(/warning: listening on 0\.0\.0\.0 without TLS/);
    expect(existsSync(at("open.state"))).toBe(false);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });
});

describe("key and certificate files", () => {
  it("a key file that cannot be read is an I/O error (exit 4) naming it, before any connection", async () => {
    const sent = await run(["send", at("vm.state"), "--to", "127.0.0.1:1", "--tls-psk", at("missing.psk")]);
    expect(sent.code, sent.stderr).toBe(4);
    expect(sent.stderr).toMatch(/^migstream: ENOENT: cannot read .*missing\.psk/);
  });
});
