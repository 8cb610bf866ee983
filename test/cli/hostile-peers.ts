// Hostile peers for the transport's lock-out and soak tests: many connections to one receiver,
// each reconnecting as soon as it is dropped, doing one of the things a peer that wants to hold
// the door does. And a throwaway PKI (certificates and pre-shared keys) made with openssl.
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { Duplex } from "node:stream";
import { type ConnectionOptions, connect as tlsConnect } from "node:tls";

/**
 * hold: connect and send nothing. drip: one byte of `opening` a second. hello: a TLS ClientHello,
 * then silence. opening: all of `opening` (a valid stream header, say), then silence.
 */
export type HostileKind = "hold" | "drip" | "hello" | "opening";

export interface HordeOptions {
  port: number;
  /** One entry per connection. */
  kinds: readonly HostileKind[];
  /** What drip and opening send. */
  opening: Uint8Array;
  /** The ClientHello hello sends (see clientHello). */
  hello?: Uint8Array;
}

/** Connections that reconnect as soon as they are dropped, until stop(). */
export class Horde {
  /** Connections established so far (reconnections included). */
  connected = 0;
  /** Connections the receiver closed or reset. */
  dropped = 0;
  readonly #sockets = new Set<Socket>();
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();
  #stopped = false;

  constructor(readonly options: HordeOptions) {
    for (const kind of options.kinds) this.#open(kind);
  }

  /** Resolves once `count` connections were established (or after `timeoutMs`). */
  async established(count: number, timeoutMs = 20_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (this.connected < count && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  }

  stop(): void {
    this.#stopped = true;
    for (const timer of this.#timers) clearTimeout(timer);
    for (const socket of this.#sockets) socket.destroy();
  }

  #later(run: () => void, ms: number): void {
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      run();
    }, ms);
    this.#timers.add(timer);
  }

  #open(kind: HostileKind): void {
    if (this.#stopped) return;
    const socket = connect(this.options.port, "127.0.0.1");
    this.#sockets.add(socket);
    let up = false;
    let drip: ReturnType<typeof setInterval> | undefined;
    socket.on("connect", () => {
      up = true;
      this.connected++;
      const { opening, hello } = this.options;
      if (kind === "opening") socket.write(opening);
      else if (kind === "hello") socket.write(hello ?? opening);
      else if (kind === "drip") {
        let i = 0;
        drip = setInterval(() => {
          if (i < opening.length) socket.write(opening.subarray(i, ++i));
        }, 1000);
      }
    });
    socket.on("data", () => undefined);
    socket.on("error", () => undefined);
    socket.on("close", () => {
      clearInterval(drip);
      this.#sockets.delete(socket);
      if (this.#stopped) return;
      if (up) this.dropped++;
      // As soon as dropped; a refused connect (nobody listening any more) waits a little.
      if (up) setImmediate(() => this.#open(kind));
      else this.#later(() => this.#open(kind), 50);
    });
  }
}

/** The first flight of a TLS client with these options: a ClientHello, captured without a peer. */
export function clientHello(options: ConnectionOptions): Promise<Uint8Array> {
  return new Promise((resolve) => {
    const wire = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        resolve(new Uint8Array(chunk));
        callback();
        queueMicrotask(() => client.destroy());
      },
    });
    const client = tlsConnect({ ...options, socket: wire });
    client.on("error", () => undefined);
  });
}

/** A throwaway CA, receiver and sender certificates (IP SAN 127.0.0.1), and a PSK file. */
export function makePki(dir: string): { dir: string; certs: (name: "receiver" | "sender") => string[]; psk: string } {
  mkdirSync(dir, { recursive: true });
  const sh = (args: string[]): void => {
    execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  };
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  writeFileSync(join(dir, "san.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  sh(["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ca"]);
  for (const name of ["receiver", "sender"]) {
    sh(["req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`]);
    sh([
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      `${name}.pem`,
      "-days",
      "2",
      "-extfile",
      "san.cnf",
    ]);
  }
  writeFileSync(join(dir, "keys.psk"), `migstream:${"a5".repeat(32)}\n`);
  return {
    dir,
    certs: (name) => ["--tls-cert", join(dir, `${name}.pem`), "--tls-key", join(dir, `${name}.key`), "--tls-ca", join(dir, "ca.pem")],
    psk: join(dir, "keys.psk"),
  };
}
