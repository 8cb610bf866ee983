// The Wasm RAM page loop against its pure-TS twin (src/core/reference/qemu-ram.ts): the same
// statuses, the same bytes consumed and the same memory, on generated and on damaged records.
import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { core } from "../../src/core/instance.js";
import { qemuRamRunReference, type ReferenceRamState } from "../../src/core/reference/qemu-ram.js";
import { type RamBlock, RamKernel, type RamSpill } from "../../src/qemu/ram-kernel.js";
import { be64, cat, normalPage, u8, xbzrlePage, zeroPage } from "./stream-builder.js";

const BLOCKS: RamBlock[] = [
  { name: "pc.ram", size: 64 * 1024 },
  { name: "rom", size: 8192 },
];

/** Runs the kernel over `input` (copied into core memory) until it stops; memory mode. */
function runKernel(kernel: RamKernel, input: Uint8Array): { status: number; used: number } {
  const c = core();
  const ptr = c.alloc(input.length + 1);
  c.u8.set(input, ptr);
  const { status, used } = kernel.run(ptr, input.length);
  c.free(ptr);
  return { status, used };
}

const record = fc.oneof(
  fc.record({ kind: fc.constant("zero" as const), block: fc.nat(1), page: fc.nat(18), named: fc.boolean(), fill: fc.oneof(fc.constant(0), fc.nat(255)) }),
  fc.record({ kind: fc.constant("page" as const), block: fc.nat(1), page: fc.nat(18), named: fc.boolean(), seed: fc.nat(255) }),
  fc.record({
    kind: fc.constant("xbzrle" as const),
    block: fc.nat(1),
    page: fc.nat(18),
    named: fc.boolean(),
    zrun: fc.nat(5000),
    run: fc.integer({ min: 0, max: 20 }),
  }),
);

type GeneratedRecord = typeof record extends fc.Arbitrary<infer T> ? T : never;

function encode(records: GeneratedRecord[]): Uint8Array {
  return cat(
    ...records.map((r) => {
      const name = r.named ? BLOCKS[r.block]!.name : undefined;
      const offset = r.page * 4096;
      if (r.kind === "zero") return zeroPage(offset, name, r.fill);
      if (r.kind === "page")
        return normalPage(
          offset,
          Uint8Array.from({ length: 4096 }, (_, i) => (i + r.seed) & 0xff),
          name,
        );
      // Lengths past 0x7f take two bytes; runs may overflow the page (a refusal both must agree on).
      const len = (n: number) => (n < 0x80 ? u8(n) : u8((n & 0x7f) | 0x80, n >> 7));
      return xbzrlePage(offset, cat(len(r.zrun), len(r.run), new Uint8Array(r.run).fill(0xa5)), name);
    }),
    be64(0x10),
  );
}

function compare(input: Uint8Array): void {
  const kernel = new RamKernel(BLOCKS, { kind: "memory" }, 4096);
  const state: ReferenceRamState = { last: -1, normal: 0, zero: 0, xbzrle: 0 };
  const memories = BLOCKS.map((b) => new Uint8Array(b.size));
  const expected = qemuRamRunReference(
    input,
    BLOCKS.map((b, i) => ({ name: new TextEncoder().encode(b.name), size: b.size, memory: memories[i]! })),
    state,
  );
  const got = runKernel(kernel, input);
  expect(got).toEqual(expected);
  if (expected.status >= 0) expect(kernel.counts).toEqual({ normal: state.normal, zero: state.zero, xbzrle: state.xbzrle });
  // Buffer.compare: a deep toEqual over megabytes takes minutes.
  for (const [i, memory] of memories.entries()) expect(Buffer.compare(kernel.read(i), memory), BLOCKS[i]!.name).toBe(0);
  kernel.release();
}

describe("qemu_ram_run against the reference", () => {
  fcTest.prop([fc.array(record, { maxLength: 24 })], { seed: 4242, numRuns: 60 })("generated records", (records) => {
    compare(encode(records));
  });

  fcTest.prop([fc.array(record, { minLength: 1, maxLength: 8 }), fc.nat(), fc.integer({ min: 1, max: 255 })], { seed: 4243, numRuns: 120 })(
    "records with one byte changed",
    (records, where, xor) => {
      const input = encode(records);
      input[where % input.length]! ^= xor;
      compare(input);
    },
  );

  it("cut at every byte of a few records: same stop, same memory", () => {
    const input = encode([
      { kind: "page", block: 0, page: 3, named: true, seed: 1 },
      { kind: "xbzrle", block: 0, page: 3, named: false, zrun: 130, run: 9 },
      { kind: "zero", block: 1, page: 1, named: true, fill: 7 },
    ]);
    for (let n = 0; n <= input.length; n++) compare(input.subarray(0, n));
  });
});

describe("memory follows the pages that arrive", () => {
  it("zero pages onto a block never written allocate nothing; one page makes one chunk resident", () => {
    const kernel = new RamKernel([{ name: "big", size: 2 ** 34 }], { kind: "memory" }, 4096);
    const zeros = cat(...Array.from({ length: 64 }, (_, i) => zeroPage(i * 2 ** 24, i === 0 ? "big" : undefined)), be64(0x10));
    expect(runKernel(kernel, zeros).status).toBe(1);
    expect(kernel.residentBytes).toBe(0);
    expect(runKernel(kernel, cat(normalPage(2 ** 33, new Uint8Array(4096).fill(1), "big"), be64(0x10))).status).toBe(1);
    expect(kernel.residentBytes).toBe(2 ** 20);
    kernel.release();
  });

  it("spilled chunks are written out at the budget and read back for later pages", () => {
    const store = new Map<string, Uint8Array>();
    const spill: RamSpill = {
      write: (block, offset, bytes) => store.set(`${block}:${offset}`, bytes.slice()),
      read: (block, offset, into) => into.set(store.get(`${block}:${offset}`)!),
    };
    const kernel = new RamKernel([{ name: "ram", size: 8 * 2 ** 20 }], { kind: "spill", spill, residentBytes: 2 * 2 ** 20 }, 4096);
    const pages = Array.from({ length: 8 }, (_, i) => normalPage(i * 2 ** 20, new Uint8Array(4096).fill(i + 1), i === 0 ? "ram" : undefined));
    expect(runKernel(kernel, cat(...pages, be64(0x10))).status).toBe(1);
    expect(kernel.residentBytes).toBeLessThanOrEqual(2 * 2 ** 20);
    // A delta onto a page that went to the spill: it comes back first.
    expect(runKernel(kernel, cat(xbzrlePage(0, u8(1, 1, 0x77), "ram"), be64(0x10))).status).toBe(1);
    kernel.flush();
    const first = store.get("0:0")!;
    expect([first[0], first[1], first[2]]).toEqual([1, 0x77, 1]);
    expect(store.get(`0:${7 * 2 ** 20}`)![0]).toBe(8);
    kernel.release();
  });
});
