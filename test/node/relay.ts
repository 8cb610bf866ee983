// A TCP relay for fault tests: forwards connections to a port and resets one of them midway.
import { connect, createServer, type Server } from "node:net";

/** A TCP relay to `port` that cuts connection number `victim` (0-based) after `after` bytes. */
export function cuttingRelay(port: number, victim: number, after: number): Promise<{ server: Server; port: number; cut: Promise<void> }> {
  let n = 0;
  let cutDone!: () => void;
  const cut = new Promise<void>((r) => (cutDone = r));
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: false }, (inbound) => {
    const index = n++;
    const outbound = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    inbound.on("error", () => undefined);
    outbound.on("error", () => undefined);
    let passed = 0;
    inbound.on("data", (data: Buffer) => {
      passed += data.length;
      if (index === victim && passed > after) {
        inbound.resetAndDestroy();
        outbound.resetAndDestroy();
        cutDone();
        return;
      }
      if (!outbound.write(data)) {
        inbound.pause();
        outbound.once("drain", () => inbound.resume());
      }
    });
    inbound.on("end", () => outbound.end());
    outbound.on("data", (data: Buffer) => inbound.write(data));
    outbound.on("end", () => inbound.end());
    inbound.on("close", () => outbound.destroy());
    outbound.on("close", () => inbound.destroy());
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, port: (server.address() as { port: number }).port, cut })));
}
