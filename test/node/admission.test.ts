// The pre-authentication door on real loopback sockets: a bounded table, newcomers that wait
// instead of being refused, random early drop of members past their protection, caps per source
// address, a bounded queue, and the auth deadline.
import { connect, createServer, type Server, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { Admission, type AdmissionOptions, type DropReason, sourceOf } from "../../src/node/transport/admission.js";
import { rng } from "../migration/helpers.js";

interface Door {
  admission: Admission;
  admitted: Socket[];
  dropped: { socket: Socket; reason: DropReason; code: string }[];
  /** Opens a client connection from `from` (a loopback address) and waits until the server saw it. */
  dial: (from?: string) => Promise<Socket>;
}

const servers: Server[] = [];
const clients: Socket[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.destroy();
  for (const s of servers.splice(0)) s.close();
});

async function door(options: AdmissionOptions): Promise<Door> {
  const admitted: Socket[] = [];
  const dropped: Door["dropped"] = [];
  const admission = new Admission(
    { random: rng(17), ...options },
    { admit: (s) => admitted.push(s), dropped: (socket, reason, error) => dropped.push({ socket, reason, code: error.code }) },
  );
  let seen: (() => void) | undefined;
  const server = createServer({ pauseOnConnect: true }, (socket) => {
    admission.offer(socket);
    seen?.();
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  const dial = (from?: string): Promise<Socket> =>
    new Promise((resolve) => {
      seen = () => resolve(client);
      const client = connect({ port, host: "127.0.0.1", ...(from ? { localAddress: from } : {}) });
      client.on("error", () => undefined);
      clients.push(client);
    });
  return { admission, admitted, dropped, dial };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits until `done()` holds (the timers fire late on a loaded machine), or fails after 10 s. */
async function until(done: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!done()) {
    if (Date.now() > deadline) throw new Error("condition not reached within 10 s");
    await sleep(10);
  }
}

describe("Admission", () => {
  it("admits up to the table size; a newcomer waits, unrefused, while every member is protected", async () => {
    const d = await door({ maxUnauthenticated: 3, protectedMs: 5_000 });
    for (let i = 0; i < 4; i++) await d.dial();
    expect(d.admitted).toHaveLength(3);
    expect(d.admission.waiting).toBe(1);
    expect(d.dropped).toEqual([]);
    d.admission.close();
  });

  it("past their protection, a random member is dropped for each waiting newcomer (random early drop)", async () => {
    const d = await door({ maxUnauthenticated: 3, protectedMs: 1_000 });
    for (let i = 0; i < 3; i++) await d.dial();
    const first = [...d.admitted];
    await d.dial();
    await d.dial();
    expect(d.admission.waiting).toBe(2);
    await until(() => d.dropped.length >= 2);
    expect(d.dropped.map((x) => [x.reason, x.code])).toEqual([
      ["evicted", "EBUSY"],
      ["evicted", "EBUSY"],
    ]);
    expect(d.dropped.every((x) => first.includes(x.socket))).toBe(true);
    expect(d.admitted).toHaveLength(5);
    expect(d.admission.unauthenticated).toBe(3);
    expect(d.admission.waiting).toBe(0);
    d.admission.close();
  });

  it("an authenticated member frees its slot at once for the first waiter", async () => {
    const d = await door({ maxUnauthenticated: 1, protectedMs: 5_000 });
    await d.dial();
    const second = await d.dial();
    await d.dial();
    expect(d.admission.waiting).toBe(2);
    d.admission.authenticated(d.admitted[0]!);
    expect(d.admitted).toHaveLength(2);
    expect(d.admitted[1]!.remotePort).toBe(second.localPort);
    expect(d.admission.waiting).toBe(1);
    expect(d.dropped).toEqual([]);
    d.admission.close();
  });

  it("a member that does not authenticate within authTimeoutMs is dropped with ETIMEDOUT", async () => {
    const d = await door({ authTimeoutMs: 150 });
    await d.dial();
    expect(d.admission.remainingMs(d.admitted[0]!)).toBeGreaterThan(0);
    await until(() => d.dropped.length >= 1);
    expect(d.dropped.map((x) => [x.reason, x.code])).toEqual([["timeout", "ETIMEDOUT"]]);
    expect(d.admission.unauthenticated).toBe(0);
  });

  it("a source at its cap waits while another source is admitted at once; room is made within the capped source", async () => {
    const d = await door({ maxUnauthenticated: 8, maxPerSource: 2, protectedMs: 1_000 });
    const a = [await d.dial("127.0.0.1"), await d.dial("127.0.0.1"), await d.dial("127.0.0.1")];
    expect(d.admitted).toHaveLength(2);
    await d.dial("127.0.0.2");
    expect(d.admitted).toHaveLength(3);
    expect(d.admitted[2]!.remoteAddress).toBe("127.0.0.2");
    await until(() => d.dropped.length >= 1);
    // The third from 127.0.0.1 got in by dropping one of its own source, not the other source's.
    expect(d.dropped).toHaveLength(1);
    expect(d.dropped[0]!.socket.remoteAddress).toBe("127.0.0.1");
    expect(d.admitted.some((s) => s.remotePort === a[2]!.localPort)).toBe(true);
    d.admission.close();
  });

  it("an overflowing queue loses a waiter of the source with the most waiting, never the newcomer", async () => {
    const d = await door({ maxUnauthenticated: 1, maxWaiting: 3, protectedMs: 5_000 });
    await d.dial("127.0.0.1");
    const flood = [await d.dial("127.0.0.1"), await d.dial("127.0.0.1")];
    await d.dial("127.0.0.2");
    expect(d.admission.waiting).toBe(3);
    const last = await d.dial("127.0.0.3");
    expect(d.dropped.map((x) => x.reason)).toEqual(["overflow"]);
    expect(flood.map((c) => c.localPort)).toContain(d.dropped[0]!.socket.remotePort);
    expect(last.destroyed).toBe(false);
    expect(d.admission.waiting).toBe(3);
    d.admission.close();
  });

  it("a shielded member (a channel waiting for its migration) is never the one dropped to make room; at most maxShielded", async () => {
    // A deadline far beyond the test: on a loaded machine, only eviction may drop anyone here.
    const d = await door({ maxUnauthenticated: 3, protectedMs: 100, maxShielded: 2, authTimeoutMs: 120_000 });
    for (let i = 0; i < 3; i++) await d.dial();
    const [a, b, c] = d.admitted;
    expect(d.admission.shield(a!)).toBe(true);
    expect(d.admission.shield(a!)).toBe(true);
    expect(d.admission.shield(b!)).toBe(true);
    // The cap: c stays droppable.
    expect(d.admission.shield(c!)).toBe(false);
    await d.dial();
    await d.dial();
    // Room is made only in c's slot (c, then the newcomer in it once past its protection).
    await until(() => d.dropped.length >= 2);
    const names = new Map<Socket, string>(
      [...d.admitted.entries()].map(([i, socket]) => [socket, ["a", "b", "c", "first newcomer", "second newcomer"][i] ?? `#${i}`]),
    );
    expect(d.dropped.slice(0, 2).map((x) => [names.get(x.socket), x.reason])).toEqual([
      ["c", "evicted"],
      ["first newcomer", "evicted"],
    ]);
    expect(d.admission.unauthenticated).toBe(3);
    // A shielded member that authenticates leaves, and frees its place under the cap.
    d.admission.authenticated(a!);
    const last = d.admitted[d.admitted.length - 1]!;
    expect(d.admission.shield(last)).toBe(true);
    d.admission.close();
  });

  it("never shields the whole table (a table of 1 shields nobody), and 0 turns shielding off", async () => {
    const one = await door({ maxUnauthenticated: 1, maxShielded: 5 });
    await one.dial();
    expect(one.admission.shield(one.admitted[0]!)).toBe(false);
    one.admission.close();
    const off = await door({ maxUnauthenticated: 4, maxShielded: 0 });
    await off.dial();
    expect(off.admission.shield(off.admitted[0]!)).toBe(false);
    off.admission.close();
  });

  it("a shielded member still has its deadline", async () => {
    const d = await door({ maxUnauthenticated: 2, authTimeoutMs: 300, protectedMs: 100, maxShielded: 1 });
    await d.dial();
    expect(d.admission.shield(d.admitted[0]!)).toBe(true);
    await until(() => d.dropped.length === 1);
    expect(d.dropped.map((x) => [x.reason, x.code])).toEqual([["timeout", "ETIMEDOUT"]]);
    d.admission.close();
  });

  it("counts IPv6 peers by their /64 (sourcePrefix6), IPv4 and IPv4-mapped ones by address", () => {
    const of = (remoteAddress: string, prefix?: number) => sourceOf({ remoteAddress }, prefix);
    expect(of("192.0.2.7")).toBe("192.0.2.7");
    expect(of("::ffff:192.0.2.7")).toBe("192.0.2.7");
    // One /64, however the addresses are written: one source.
    const one = ["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:0db8:0001:0002:0:0:0:9", "2001:db8:1:2::a%eth0"].map((a) => of(a));
    expect(new Set(one)).toEqual(new Set(["2001:db8:1:2:0:0:0:0/64"]));
    expect(of("2001:db8:1:3::1")).not.toBe(one[0]);
    expect(of("::1")).toBe("0:0:0:0:0:0:0:0/64");
    expect(of("::192.0.2.1", 128)).toBe("0:0:0:0:0:0:c000:201/128");
    expect(of("2001:db8:1:2::1", 128)).toBe("2001:db8:1:2:0:0:0:1/128");
    expect(of("2001:db8:abcd:1234::1", 36)).toBe("2001:db8:a000:0:0:0:0:0/36");
    // Not an address this parser knows: itself.
    expect(of("1:2:3:4:5:6:7:8:9")).toBe("1:2:3:4:5:6:7:8:9");
  });

  it("refuses options that are not positive integers (EINVAL)", () => {
    const handlers = { admit: () => undefined, dropped: () => undefined };
    expect(() => new Admission({ maxUnauthenticated: 0 }, handlers)).toThrow(expect.objectContaining({ code: "EINVAL" }));
    expect(() => new Admission({ maxPerSource: 1.5 }, handlers)).toThrow(expect.objectContaining({ code: "EINVAL" }));
    expect(() => new Admission({ maxWaiting: -1 }, handlers)).toThrow(expect.objectContaining({ code: "EINVAL" }));
    expect(() => new Admission({ authTimeoutMs: 0 }, handlers)).toThrow(expect.objectContaining({ code: "EINVAL" }));
    expect(() => new Admission({ maxShielded: -1 }, handlers)).toThrow(expect.objectContaining({ code: "EINVAL" }));
    expect(() => new Admission({ sourcePrefix6: 0 }, handlers)).toThrow(expect.objectContaining({ code: "EINVAL" }));
    expect(() => new Admission({ sourcePrefix6: 129 }, handlers)).toThrow(expect.objectContaining({ code: "EINVAL" }));
  });
});
