import { STATE, TestClient } from "../test/node/vfio-user/client.js";
const path = process.argv[2]!;
for (let i = 0; i < 6; i++) {
  const c = await TestClient.connect(path);
  await c.version();
  const t0 = performance.now();
  await c.setState(STATE.STOP_COPY);
  let bytes = 0;
  let tWait = 0;
  for (;;) { const a = performance.now(); const ch = await c.migRead(1 << 20); tWait += performance.now() - a; bytes += ch.length; if (ch.length < 1 << 20) break; }
  const ms = performance.now() - t0;
  await c.setState(STATE.RUNNING);
  await c.close();
  console.log(`${bytes} in ${ms.toFixed(0)} ms: ${(bytes / ms / 1e6).toFixed(2)} GB/s`);
}
