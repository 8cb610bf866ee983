// The code each pool worker runs, as a string: a worker is started from it directly (a Blob URL
// for Web Workers, Deno and Bun; `eval` for Node's worker_threads), so no file has to be found
// next to the library, whatever bundled or copied it. A worker only runs kernels of the shared
// core: it instantiates the module it is sent over the shared memory it is sent, then executes
// lists of kernel calls. Everything else (what to call, on which bytes) is decided by the caller.

/** Messages: {init, module, memory, scratch} once; then {id, calls: [[kernel, ...args], ...]}. */
export const WORKER_SOURCE = `
"use strict";
const web = typeof globalThis.postMessage === "function";
const port = web ? globalThis : require("node:worker_threads").parentPort;
let kernels;
function handle(data) {
  if (data.init) {
    const instance = new WebAssembly.Instance(data.module, { env: { memory: data.memory } });
    kernels = instance.exports;
    kernels.set_thread_scratch(data.scratch);
    port.postMessage({ ready: true });
    return;
  }
  const results = [];
  try {
    for (const [name, ...args] of data.calls) results.push(kernels[name](...args));
    port.postMessage({ id: data.id, results });
  } catch (error) {
    port.postMessage({ id: data.id, error: String((error && error.message) || error), trap: error instanceof WebAssembly.RuntimeError });
  }
}
if (web) globalThis.addEventListener("message", (event) => handle(event.data));
else port.on("message", handle);
`;
