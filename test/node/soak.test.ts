// Soak: 100 migrations back to back over TLS (pre-shared keys), with hostile peers interleaved
// at random (a fixed seed): holding, dripping, stalling after a ClientHello, a header in the
// clear, garbage. Every legitimate migration must succeed; no file descriptor may leak; the RSS
// growth after warm-up is printed (and bounded loosely: the box is shared).
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, it } from "vitest";
import { encodeHeader } from "../../src/format/header.js";
import { receiveFile, sendFile } from "../../src/node/tcp.js";
import { clientHello, Horde, type HostileKind } from "../cli/hostile-peers.js";
import { rng } from "../migration/helpers.js";

const MIGRATIONS = 100;
const WARM_UP = 10;
const KINDS: readonly HostileKind[] = ["hold", "drip", "hello", "opening"];

const openFds = (): number => readdirSync("/proc/self/fd").length;

async function settledFds(target: number, timeoutMs = 5_000): Promise<number> {
  const until = Date.now() + timeoutMs;
  let n = openFds();
  while (n > target && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 50));
    n = openFds();
  }
  return n;
}

it(`${MIGRATIONS} migrations over TLS-PSK with hostile peers interleaved: all succeed, no fd leaked`, { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "migstream-soak-"));
  const psk = [{ identity: "migstream", key: new Uint8Array(32).fill(9) }];
  const random = rng(20261206);
  const state = new Uint8Array(256 * 1024).map((_, i) => (i % 4096 < 2048 ? (i * 13) & 0xff : 0));
  writeFileSync(join(dir, "in.state"), state);
  const opening = encodeHeader({
    checksum: "xxh3",
    pageSize: 4096,
    maxRecordPayload: 1 << 20,
    deviceId: "",
    baseDigest: undefined,
    regions: [{ name: "state", size: state.length }],
  }).bytes;
  const hello = await clientHello({
    host: "127.0.0.1",
    ciphers: "PSK-AES256-GCM-SHA384",
    maxVersion: "TLSv1.2",
    pskCallback: () => ({ identity: "x", psk: Buffer.alloc(32) }),
  });
  const fdsBefore = openFds();
  let rssWarm = 0;
  let failures = 0;
  let hostileConnects = 0;
  const started = performance.now();
  try {
    for (let i = 0; i < MIGRATIONS; i++) {
      if (i === WARM_UP) rssWarm = process.memoryUsage().rss;
      let listening!: (port: number) => void;
      const bound = new Promise<number>((resolve) => (listening = resolve));
      const output = join(dir, `out-${i % 3}.state`);
      const receiving = receiveFile(output, {
        port: 0,
        tls: { psk },
        timeoutMs: 20_000,
        authTimeoutMs: 5_000,
        maxUnauthenticated: 8,
        maxPerSource: 8,
        protectedMs: 100,
        random: rng(i),
        onListening: (a) => listening(a.port),
      });
      const port = await bound;
      // About half the migrations meet a horde of 1 to 24 hostile connections of random kinds.
      const hostile = random() < 0.5 ? 1 + Math.floor(random() * 24) : 0;
      const horde =
        hostile > 0
          ? new Horde({ port, kinds: Array.from({ length: hostile }, () => KINDS[Math.floor(random() * KINDS.length)]!), opening, hello })
          : undefined;
      try {
        if (horde) await horde.established(hostile);
        const sent = await sendFile(join(dir, "in.state"), { port, tls: { psk }, timeoutMs: 20_000 });
        const received = await receiving;
        if (received.bytes !== sent.summary.bytes || !readFileSync(output).equals(Buffer.from(state))) failures++;
      } catch (error) {
        failures++;
        await receiving.catch(() => undefined);
        console.error(`migration ${i} failed:`, error);
      } finally {
        hostileConnects += horde?.connected ?? 0;
        horde?.stop();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const seconds = (performance.now() - started) / 1000;
  const rssGrowth = process.memoryUsage().rss - rssWarm;
  const fdsAfter = await settledFds(fdsBefore);
  console.info(
    `soak: ${MIGRATIONS} migrations over TLS-PSK in ${seconds.toFixed(1)} s, ${hostileConnects} hostile connections, ${failures} failed; RSS growth after ${WARM_UP} warm-up migrations ${(rssGrowth / 2 ** 20).toFixed(1)} MiB; fds ${fdsBefore} before, ${fdsAfter} after`,
  );
  expect(failures).toBe(0);
  expect(fdsAfter).toBeLessThanOrEqual(fdsBefore);
  expect(rssGrowth).toBeLessThan(64 * 2 ** 20);
});
