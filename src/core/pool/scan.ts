// Dirty tracking by page hash on the worker pool: the region, its hashes and the bitmap live
// in the pool's shared memory, and each thread scans ranges of whole bitmap bytes (8 pages), so
// no two threads touch the same hash or bitmap byte.
import { MigrationError } from "../errors.js";
import { bitmapBytes, pageCount, validatePageSize } from "../scan.js";
import type { WorkerPool } from "./pool.js";

/**
 * scanHash (src/core/scan.ts) split over `pool`: pages whose XXH3-64 differs from the one in
 * `hashes` get their bit set in `bitmap` and their new hash stored. `data`, `hashes` (8 bytes
 * per page) and `bitmap` must be views of the pool's memory ({@link WorkerPool.core}); the
 * result and the bytes written are those of the one-thread scan.
 */
export async function scanHashOnPool(pool: WorkerPool, data: Uint8Array, pageSize: number, hashes: Uint8Array, bitmap: Uint8Array): Promise<number> {
  validatePageSize(pageSize);
  const c = pool.core;
  for (const [name, view] of [
    ["data", data],
    ["hashes", hashes],
    ["bitmap", bitmap],
  ] as const) {
    if (!c.owns(view) && view.buffer !== c.memory.buffer) throw new MigrationError("EINVAL", `${name} must live in the pool's memory`);
  }
  const length = data.length;
  const pages = pageCount(length, pageSize);
  if (hashes.length < pages * 8) throw new MigrationError("EINVAL", `hashes holds ${hashes.length} B, ${pages} pages need ${pages * 8} B`);
  if (bitmap.length < bitmapBytes(pages)) throw new MigrationError("EINVAL", `bitmap holds ${bitmap.length} B, ${pages} pages need ${bitmapBytes(pages)} B`);
  if (pages === 0) return 0;
  // Ranges of whole bitmap bytes, 16 per thread: a scan of 1 GiB takes about 35 ms on 2
  // threads, so the last range one thread runs while the other has none left is what decides
  // it. In-process on 1 GiB, three runs of 8 rounds, as memory bandwidth allowed that day: 4 per
  // thread (128 MiB ranges) 1.32-1.75x one thread's scan, 16 per thread 1.56-1.75x, 64 no better.
  const groups = Math.ceil(pages / 8);
  const parts = Math.min(groups, pool.jobs * 16);
  const tasks: Promise<unknown[]>[] = [];
  for (let i = 0; i < parts; i++) {
    const first = Math.floor((groups * i) / parts) * 8;
    const last = Math.min(pages, Math.floor((groups * (i + 1)) / parts) * 8);
    if (last <= first) continue;
    const from = first * pageSize;
    const to = Math.min(length, last * pageSize);
    tasks.push(pool.run([["scan_hash", data.byteOffset + from, to - from, pageSize, hashes.byteOffset + first * 8, bitmap.byteOffset + first / 8]]));
  }
  const results = await pool.settle(tasks);
  return results.reduce<number>((n, r) => n + ((r[0] as number) >>> 0), 0);
}
