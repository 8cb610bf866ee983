import { describe, expect, it } from "vitest";
import { allocate, CoreBuffer } from "../../src/core/buffer.js";
import { MigrationError } from "../../src/core/errors.js";
import { core, coreModule } from "../../src/core/instance.js";

describe("core instance", () => {
  it("has no imports, so it instantiates anywhere without glue", () => {
    expect(WebAssembly.Module.imports(coreModule())).toEqual([]);
  });

  it("instantiates lazily and synchronously, once", () => {
    expect(core()).toBe(core());
    expect(core().memory).toBeInstanceOf(WebAssembly.Memory);
  });
});

describe("allocator", () => {
  it("aligns blocks to 64 bytes and never overlaps live blocks", () => {
    const c = core();
    const ptrs = [1, 100, 4096, 65536, 3].map((n) => [c.alloc(n), n] as const);
    for (const [p] of ptrs) expect(p % 64).toBe(0);
    const sorted = [...ptrs].sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < sorted.length; i++) expect(sorted[i]![0]).toBeGreaterThanOrEqual(sorted[i - 1]![0] + sorted[i - 1]![1]);
    for (const [p] of ptrs) c.free(p);
  });

  it("reuses freed space and coalesces neighbours", () => {
    const c = core();
    const before = c.allocatedBytes;
    const a = c.alloc(1000);
    const b = c.alloc(1000);
    const d = c.alloc(1000);
    c.free(a);
    c.free(b);
    // a and b coalesced: a 2000-byte request fits where they were.
    const e = c.alloc(2000);
    expect(e).toBe(a);
    c.free(e);
    c.free(d);
    c.free(d); // double free is ignored
    expect(c.allocatedBytes).toBe(before);
  });

  it("grows memory for large blocks and keeps old data", () => {
    const small = allocate(16);
    small.bytes.set([1, 2, 3]);
    const pagesBefore = core().memory.buffer.byteLength;
    const big = allocate(8 * 1024 * 1024);
    expect(core().memory.buffer.byteLength).toBeGreaterThan(pagesBefore);
    expect(Array.from(small.bytes.subarray(0, 3))).toEqual([1, 2, 3]);
    expect(big.bytes.every((b) => b === 0)).toBe(true);
    big.free();
    small.free();
  });

  it("rejects use after free and invalid sizes with typed errors", () => {
    const buf = allocate(8);
    buf.free();
    expect(() => buf.bytes).toThrow(MigrationError);
    expect(() => new CoreBuffer(-1)).toThrow(MigrationError);
    expect(() => core().alloc(1.5)).toThrow(/invalid allocation size/);
  });
});

describe("trap recovery", () => {
  it("turns a trap into EFAULT, replaces the instance, and retires blocks of the old one", async () => {
    const { guarded } = await import("../../src/core/instance.js");
    const { xxh3 } = await import("../../src/core/xxh3.js");
    const before = core();
    const block = allocate(64);
    let error: unknown;
    try {
      guarded(() => {
        // What a kernel bug would raise: the same error type V8 throws for `unreachable`.
        throw new WebAssembly.RuntimeError("unreachable");
      });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(MigrationError);
    expect((error as MigrationError).code).toBe("EFAULT");
    const after = core();
    expect(after).not.toBe(before);
    expect(after.generation).toBeGreaterThan(before.generation);
    expect(() => block.bytes).toThrow(/replaced/);
    expect(block.alive).toBe(false);
    // The new instance works.
    expect(xxh3(new Uint8Array(0))).toBe(0x2d06800538d394c2n);
  });

  it("lets other errors through unchanged", async () => {
    const { guarded } = await import("../../src/core/instance.js");
    const c = core();
    expect(() =>
      guarded(() => {
        throw new RangeError("not a trap");
      }),
    ).toThrow(RangeError);
    expect(core()).toBe(c);
  });
});

describe("zeroed allocation", () => {
  it("gives zeros even where freed blocks left data behind", () => {
    const c = core();
    const dirty = c.alloc(256 * 1024);
    c.u8.fill(0xab, dirty, dirty + 256 * 1024);
    c.free(dirty);
    const again = allocate(300 * 1024); // reuses the freed range and extends past it
    expect(again.bytes.every((b) => b === 0)).toBe(true);
    again.free();
  });
});
