// The worker pool under another runtime (run by run.mjs with Deno or Bun): encode and decode
// with jobs: 2 give the bytes and the state of one thread, on a pool of that runtime's workers.
import { createPool, decodeSnapshot, decodeSnapshotAsync, encodeSnapshot, encodeSnapshotAsync, MigrationError } from "../../dist/index.js";

const state = new Uint8Array(12 << 20);
for (let i = 0, x = 7; i < state.length; i++) {
  x = (x * 1103515245 + 12345) >>> 0;
  const kind = (i >> 14) % 4;
  state[i] = kind === 0 ? 0 : kind === 1 ? i & 0x1f : kind === 2 ? x >>> 24 : 65 + ((i >> 3) % 26);
}
const { pool, note } = createPool(2);
if (!pool) throw new Error(`no pool: ${note}`);
try {
  for (const compress of ["none", "lz4"]) {
    const one = encodeSnapshot(state, { compress });
    const two = await encodeSnapshotAsync(state, { compress, pool });
    if (one.length !== two.length || !one.every((b, i) => b === two[i])) throw new Error(`jobs 2 stream differs (${compress})`);
    const back = await decodeSnapshotAsync(two, { pool });
    if (!back.every((b, i) => b === state[i]) || back.length !== state.length) throw new Error(`jobs 2 decode differs (${compress})`);
    const cut = two.subarray(0, two.length - 9);
    const errorOf = async (f) =>
      f().then(
        () => "none",
        (e) => (e instanceof MigrationError ? `${e.code} ${e.recordIndex} ${e.byteOffset}` : String(e)),
      );
    const [a, b] = [await errorOf(async () => decodeSnapshot(cut)), await errorOf(() => decodeSnapshotAsync(cut, { pool }))];
    if (a !== b || a === "none") throw new Error(`truncated stream: ${a} vs ${b}`);
  }
  console.log("ok  worker pool (jobs: 2): encode and decode identical to one thread, with and without lz4; same error for a cut stream");
} finally {
  pool.close();
}
