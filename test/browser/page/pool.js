// The worker pool in a page: jobs: 2 must give the bytes and the state of one thread, on two
// Web Workers when the page is cross-origin isolated, and on one thread with a note when not.
import { createPool, decodeSnapshotAsync, encodeSnapshot, encodeSnapshotAsync } from "./migstream.js";

const result = { isolated: globalThis.crossOriginIsolated === true };
try {
  const state = new Uint8Array(6 << 20);
  for (let i = 0, x = 3; i < state.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    const kind = (i >> 14) % 3;
    state[i] = kind === 0 ? 0 : kind === 1 ? i & 0x1f : x >>> 24;
  }
  const notes = [];
  const started = createPool(2);
  result.pooled = started.pool !== undefined;
  result.note = started.note;
  started.pool?.close();
  const one = encodeSnapshot(state, { compress: "lz4" });
  const two = await encodeSnapshotAsync(state, { compress: "lz4", jobs: 2, onnote: (n) => notes.push(n) });
  result.identical = one.length === two.length && one.every((b, i) => b === two[i]);
  const back = await decodeSnapshotAsync(two, { jobs: 2, onnote: (n) => notes.push(n) });
  result.decoded = back.length === state.length && back.every((b, i) => b === state[i]);
  result.notes = notes;
} catch (error) {
  result.error = `${error?.name}: ${error?.message}`;
}
globalThis.migstreamPool = result;
document.title = "done";
