// Staging strategies agree with a literal model: records applied in order to a plain array.
// Incremental streams decode through copy-on-write (base in core memory) and through a copied
// base (base in a JS array); full streams into fresh or reused staging; repeated ZERO coverage
// (absorbed by the kernel) and pages rewritten after zeroing included.
import { fc, test } from "@fast-check/vitest";
import { describe, expect } from "vitest";
import { allocate } from "../../src/core/buffer.js";
import { decodeSnapshot } from "../../src/codec/snapshot.js";
import { StreamBuilder, xxh3 } from "./stream-builder.js";

const PAGE = 4096;
// Five 64 KiB copy-on-write chunks and a partial last page.
const SIZE = 5 * 65536 + 123;
const PAGES = Math.ceil(SIZE / PAGE);

// Random streams may write the state many times over: no page budget here.
const UNLIMITED = { maxPagesApplied: Number.MAX_SAFE_INTEGER };

type Op = { kind: "pages" | "zero"; first: number; count: number; fill: number };

const op = fc
  .record({
    kind: fc.constantFrom<"pages" | "zero">("pages", "zero"),
    first: fc.nat(PAGES - 1),
    count: fc.integer({ min: 1, max: 40 }),
    fill: fc.integer({ min: 1, max: 255 }),
  })
  .map((o) => ({ ...o, count: Math.min(o.count, PAGES - o.first) }));

function build(ops: readonly Op[], base: Uint8Array | undefined): { stream: Uint8Array; model: Uint8Array } {
  const b = new StreamBuilder({ regions: [{ name: "s", size: SIZE }], pageSize: PAGE, maxRecordPayload: 40 * PAGE, ...(base ? { base: xxh3(base) } : {}) });
  const model = base ? base.slice() : new Uint8Array(SIZE);
  // A full stream must deliver every page: start with all of them, zero.
  if (!base) b.zero(0, 0, PAGES);
  for (const o of ops) {
    const from = o.first * PAGE;
    const to = Math.min(SIZE, (o.first + o.count) * PAGE);
    if (o.kind === "zero") {
      b.zero(0, from, o.count);
      model.fill(0, from, to);
    } else {
      const data = new Uint8Array(to - from);
      for (let i = 0; i < data.length; i += 61) data[i] = (o.fill + i) & 0xff;
      b.pages(0, from, data, o.count);
      model.set(data, from);
    }
  }
  return { stream: b.end().bytes(), model };
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.length), Buffer.from(b.buffer, b.byteOffset, b.length)) === 0;
}

describe("staging strategies", () => {
  test.prop([fc.array(op, { minLength: 1, maxLength: 30 }), fc.integer({ min: 0, max: 255 })], { numRuns: 60 })(
    "incremental: copy-on-write and copied base both give the model's state",
    (ops, seed) => {
      const base = new Uint8Array(SIZE);
      for (let i = 0; i < SIZE; i += 7) base[i] = (seed + i) & 0xff;
      const { stream, model } = build(ops, base);
      expect(same(decodeSnapshot(stream, { base, ...UNLIMITED }), model)).toBe(true);
      const inCore = allocate(SIZE);
      try {
        inCore.bytes.set(base);
        expect(same(decodeSnapshot(stream, { base: inCore.bytes, ...UNLIMITED }), model)).toBe(true);
        // The base itself is never written.
        expect(same(inCore.bytes, base)).toBe(true);
      } finally {
        inCore.free();
      }
    },
  );

  test.prop([fc.array(op, { minLength: 1, maxLength: 30 })], { numRuns: 60 })(
    "full: twice in a row (fresh, then reused staging) gives the model's state",
    (ops) => {
      const { stream, model } = build(ops, undefined);
      expect(same(decodeSnapshot(stream, UNLIMITED), model)).toBe(true);
      expect(same(decodeSnapshot(stream, UNLIMITED), model)).toBe(true);
    },
  );
});
