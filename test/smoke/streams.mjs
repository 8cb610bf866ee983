// Runs inside the runtime under test (Deno, Bun, or Node): the stream adapters' cancellation,
// which is where runtimes' node:stream implementations differ. Imports the built package by
// path, so it needs no package resolution of its own. Prints one line per check; exits non-zero
// on the first failure, and a crash (an unhandled 'error') exits non-zero by itself.
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { encodeSnapshot } from "../../dist/index.js";
import { createDecodeStream, createEncodeStream, decodeChunks, encodeChunks } from "../../dist/node/index.js";

const sink = () => new Writable({ write: (_chunk, _encoding, callback) => callback() });

async function expectCanceled(what, promise) {
  try {
    await promise;
  } catch (error) {
    if (error?.code !== "ECANCELED") throw new Error(`${what}: expected ECANCELED, got ${error?.code}: ${error?.message}`);
    console.log(`ok  ${what}: ECANCELED`);
    return;
  }
  throw new Error(`${what}: resolved instead of failing`);
}

const state = new Uint8Array(300_000).map((_, i) => (i * 7) >> 3);
const stream = encodeSnapshot(state);

await expectCanceled(
  "encode stream, signal aborted before piping",
  pipeline(Readable.from([state]), createEncodeStream({ size: state.length, signal: AbortSignal.abort() }), sink()),
);
await expectCanceled(
  "decode stream, signal aborted before piping",
  pipeline(Readable.from([stream]), createDecodeStream({ signal: AbortSignal.abort() }), sink()),
);

const controller = new AbortController();
async function* slowly() {
  for (let at = 0; at < stream.length; at += 16_384) {
    if (at >= stream.length / 2) controller.abort();
    yield stream.subarray(at, at + 16_384);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}
await expectCanceled("decode stream, aborted midway", pipeline(Readable.from(slowly()), createDecodeStream({ signal: controller.signal }), sink()));
await expectCanceled("decodeChunks, signal aborted before", decodeChunks([stream], { signal: AbortSignal.abort() }));

const chunks = [];
for await (const chunk of encodeChunks([state.subarray(0, 1000), state.subarray(1000)], { size: state.length })) chunks.push(chunk);
const back = await decodeChunks(chunks);
if (back.length !== state.length || back.some((b, i) => b !== state[i])) throw new Error("encodeChunks/decodeChunks round trip differs");
console.log("ok  encodeChunks/decodeChunks round trip");

// A stray 'error' would surface on a later tick: give it the chance before declaring success.
await new Promise((resolve) => setTimeout(resolve, 100));
console.log("ok  no uncaught error");
