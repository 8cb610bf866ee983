// createEncoder({ shared: true }) hands out views into the encoder's own buffer, reused from one
// callback to the next; by default each chunk is a fresh copy the callee keeps.
import { describe, expect, test } from "vitest";
import { createEncoder } from "../../src/codec/encoder.js";
import { encodeSnapshot } from "../../src/codec/snapshot.js";
import { core } from "../../src/core/instance.js";
import { concatBytes } from "../../src/core/bytes.js";

const SIZE = 6 * 1024 * 1024;
function state(): Uint8Array {
  const s = new Uint8Array(SIZE);
  let x = 12345;
  for (let i = 0; i < SIZE; i += 4) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    s[i] = x >>> 24;
  }
  return s;
}

const concat = concatBytes;

function encode(shared: boolean | undefined, data: Uint8Array) {
  const kept: Uint8Array[] = [];
  const copies: Uint8Array[] = [];
  const encoder = createEncoder({
    size: data.length,
    ...(shared === undefined ? {} : { shared }),
    ondata: (chunk) => {
      kept.push(chunk);
      copies.push(chunk.slice());
    },
  });
  encoder.writePages(0, 0, data);
  encoder.end();
  return { kept, copies };
}

describe("shared views", () => {
  const data = state();
  const expected = encodeSnapshot(data);

  test("shared: true reuses one buffer in core memory; copies taken in the callback make the stream", () => {
    const { kept, copies } = encode(true, data);
    expect(Buffer.compare(Buffer.from(concat(copies)), Buffer.from(expected))).toBe(0);
    const inCore = kept.filter((k) => core().owns(k) || k.length === 0);
    // Several chunks come from the same place of the same buffer: the view is reused.
    const places = new Set(inCore.map((k) => k.byteOffset));
    expect(inCore.length).toBeGreaterThan(2);
    expect(places.size).toBeLessThan(inCore.length);
    // So what was kept past its callback now shows other bytes.
    expect(Buffer.compare(Buffer.from(concat(kept)), Buffer.from(expected))).not.toBe(0);
  });

  test("by default (and with shared: false) each chunk is a fresh copy the callee keeps", () => {
    for (const shared of [undefined, false]) {
      const { kept } = encode(shared, data);
      expect(kept.length).toBeGreaterThan(2);
      for (const k of kept) expect(core().owns(k)).toBe(false);
      expect(new Set(kept.map((k) => k.buffer)).size).toBe(kept.length);
      expect(Buffer.compare(Buffer.from(concat(kept)), Buffer.from(expected))).toBe(0);
    }
  });
});
