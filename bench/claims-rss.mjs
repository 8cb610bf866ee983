// Peak RSS (VmHWM) of a process facing 1 GiB header-only claims: `node bench/claims-rss.mjs
// <device|decoder> <successive|concurrent|dropped> <n> [header|page]`. Uses dist/ (npm run
// build first).
// device: receiveDevice servers, each owned by a peer that sends the header, then drops
// (successive) or stalls (concurrent, all at once). decoder: push decoders given the header,
// then aborted (successive), kept (concurrent), or dropped without end() or abort() and
// collected (dropped; needs --expose-gc). Prints one JSON line: VmHWM before and after in MiB,
// core memory allocated before and after, and the codes the claims ended with.
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { core } from "../dist/core/instance.js";
import { createDecoder, createEncoder } from "../dist/index.js";
import { encodeHeader } from "../dist/format/header.js";
import { receiveDevice } from "../dist/node/index.js";

const [api = "device", mode = "successive", countText = "1", what = "header"] = process.argv.slice(2);
/** "page": each claim also carries one page of data, which makes a decoder stage the region. */
const withPage = what === "page";
const count = Number(countText);
const GiB = 1024 ** 3;
const header = encodeHeader({
  checksum: "xxh3",
  pageSize: 4096,
  maxRecordPayload: 16 << 20,
  deviceId: "",
  baseDigest: undefined,
  regions: [{ name: "state", size: GiB }],
}).bytes;
/** A header, one page of data and an END record: a decoder makes its 1 GiB staging for it. */
const onePage = (() => {
  const parts = [];
  const encoder = createEncoder({ size: GiB, maxRecordPayload: 16 << 20, ondata: (chunk) => parts.push(chunk) });
  encoder.writePages(0, 0, new Uint8Array(4096).fill(1));
  encoder.end();
  return Buffer.concat(parts);
})();
const hwm = () => Number(/VmHWM:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))[1]) / 1024;

/** One receiveDevice, one peer that sends the header; the caller drops or keeps the socket. */
async function deviceClaim() {
  let port;
  const listening = new Promise((r) => (port = r));
  const receiving = receiveDevice({ port: 0, timeoutMs: 60_000, onListening: (a) => port(a.port) }).then(
    (r) => (r.device.free(), "accepted"),
    (e) => e.code,
  );
  const socket = connect(await listening, "127.0.0.1");
  socket.on("error", () => undefined);
  // Handed to the system (so connected) before the wait: a peer destroyed before its header
  // went out would be an empty connection, which the receiver drops and keeps listening.
  await new Promise((r) => socket.write(header, r));
  await new Promise((r) => setTimeout(r, 150));
  return { receiving, socket };
}

const collect = async () => {
  globalThis.gc?.();
  await new Promise((r) => setTimeout(r, 10));
};

const before = hwm();
const coreBefore = core().allocatedBytes;
const codes = [];
if (api === "device") {
  const held = [];
  for (let i = 0; i < count; i++) {
    const claim = await deviceClaim();
    if (mode === "successive") {
      claim.socket.destroy();
      codes.push(await claim.receiving);
    } else held.push(claim);
  }
  for (const c of held) c.socket.destroy();
  codes.push(...(await Promise.all(held.map((c) => c.receiving))));
} else {
  const kept = [];
  /** One claim, in a function of its own: nothing but `kept` refers to the decoder afterwards. */
  const claimOnce = () => {
    const decoder = createDecoder({ maxRecordPayload: 16 << 20 });
    decoder.push(withPage ? onePage : header);
    if (mode === "successive") decoder.abort();
    else if (mode === "concurrent") kept.push(decoder);
  };
  for (let i = 0; i < count; i++) {
    try {
      claimOnce();
      codes.push("ok");
    } catch (error) {
      codes.push(error.code);
    }
    // Dropped decoders: the reference just went; collect now and then, as a busy process would.
    if (mode === "dropped" && i % 2 === 1) await collect();
  }
  for (const d of kept) d.abort();
  await collect();
  await collect();
}
const tally = {};
for (const code of codes) tally[code] = (tally[code] ?? 0) + 1;
console.log(
  JSON.stringify({
    api,
    mode,
    count,
    hwmBeforeMiB: Math.round(before),
    hwmAfterMiB: Math.round(hwm()),
    coreBefore,
    coreAfter: core().allocatedBytes,
    codes: tally,
  }),
);
