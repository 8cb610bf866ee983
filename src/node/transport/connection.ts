// Dialling a receiver and writing to it: plain TCP or TLS (authenticated before the socket is
// handed out), and a writer that keeps a bounded amount of data in flight.
import { connect as netConnect, type Socket } from "node:net";
import { type ConnectionOptions, connect as tlsConnect } from "node:tls";
import { MigrationError } from "../../core/errors.js";
import type { ProgressDeadline } from "./deadline.js";
import { clientTlsOptions, type TransportSecurity } from "./tls.js";
import { ioError } from "./verdict.js";

export interface DialOptions {
  host: string;
  port: number;
  tls: TransportSecurity | undefined;
  /** Connecting, and the TLS handshake, must finish within this (ms). */
  timeoutMs: number;
  signal: AbortSignal | undefined;
}

/**
 * Connects (and completes the TLS handshake, the receiver's certificate verified). A TLS
 * connection reset before its handshake completed is dialled again while time is left: a
 * receiver flooded with connections drops some that are still authenticating to make room
 * (random early drop), and an honest sender that was unlucky just comes back.
 */
export async function dial(options: DialOptions): Promise<Socket> {
  const until = performance.now() + options.timeoutMs;
  for (let attempt = 0; ; attempt++) {
    try {
      return await dialOnce({ ...options, timeoutMs: Math.max(1, until - performance.now()) });
    } catch (error) {
      const reset = error instanceof MigrationError && (error.cause as NodeJS.ErrnoException | undefined)?.code === "ECONNRESET";
      if (!options.tls || !reset || options.signal?.aborted) throw error;
      // Backing off a little, with jitter, so the retries of many senders do not arrive together.
      const pause = Math.min(1000, 50 * 2 ** Math.min(attempt, 4)) * (0.5 + Math.random());
      if (performance.now() + pause >= until) throw error;
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
  }
}

function dialOnce(options: DialOptions): Promise<Socket> {
  const { host, port, timeoutMs, signal } = options;
  return new Promise((resolve, reject) => {
    const socket = options.tls
      ? // allowHalfOpen is passed on to the socket (the verdict arrives after our FIN) but is
        // missing from ConnectionOptions' type.
        tlsConnect({ ...clientTlsOptions(options.tls, host), port, allowHalfOpen: true } as ConnectionOptions)
      : netConnect({ host, port, allowHalfOpen: true });
    const ready = options.tls ? "secureConnect" : "connect";
    const timer = setTimeout(() => fail(new MigrationError("ETIMEDOUT", `cannot connect to ${host}:${port}: no answer within ${timeoutMs} ms`)), timeoutMs);
    const onAbort = (): void => fail(new MigrationError("ECANCELED", "migration aborted while connecting"));
    signal?.addEventListener("abort", onAbort, { once: true });
    function cleanup(): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      socket.off("error", fail);
      socket.off(ready, onReady);
    }
    function fail(error: Error): void {
      cleanup();
      socket.destroy();
      if (error instanceof MigrationError) reject(error);
      // Socket errors name a syscall (connect, read); certificate and handshake errors do not.
      else if (options.tls && !(error as NodeJS.ErrnoException).syscall) reject(ioError(`TLS handshake with ${host}:${port} failed`, error));
      else reject(ioError(`cannot connect to ${host}:${port}`, error));
    }
    function onReady(): void {
      cleanup();
      socket.setNoDelay(true);
      resolve(socket);
    }
    socket.once("error", fail);
    socket.once(ready, onReady);
  });
}

/** Bytes handed to the socket but not yet taken by the kernel, before `write` waits. */
const IN_FLIGHT = 8 << 20;

/**
 * Writes chunks with a bounded amount in flight: producing the next chunk overlaps sending the
 * previous ones, and a peer that stops reading stops the producer (backpressure) instead of
 * growing a queue. Every byte the kernel takes counts as progress on `deadline`.
 * A chunk must not be modified after `write` until it was sent (the socket holds it).
 */
export class SocketWriter {
  readonly #socket: Socket;
  readonly #deadline: ProgressDeadline;
  #inFlight = 0;
  #wake: (() => void) | undefined;
  #failure: Error | undefined;
  readonly #limit: number;

  /**
   * `stop` ends a wait for the socket at once (the receiver answered early, time is up).
   * `share` divides the in-flight bound: the writers of one migration's channels share it.
   */
  constructor(socket: Socket, deadline: ProgressDeadline, stop: AbortSignal, share = 1) {
    this.#limit = Math.max(1 << 20, Math.floor(IN_FLIGHT / share));
    this.#socket = socket;
    this.#deadline = deadline;
    const fail = (error?: Error): void => {
      this.#failure ??= error ?? new Error("connection closed");
      this.#wake?.();
    };
    socket.on("error", fail);
    socket.on("close", () => fail());
    stop.addEventListener("abort", () => fail(new MigrationError("ECANCELED", "connection ended")), { once: true });
  }

  /** `release` runs once the socket no longer needs `chunk` (sent, or failed). */
  async write(chunk: Uint8Array, release?: () => void): Promise<void> {
    if (this.#failure) throw this.#failure;
    const length = chunk.length;
    this.#inFlight += length;
    this.#socket.write(chunk, (error) => {
      release?.();
      this.#inFlight -= length;
      if (error) this.#failure ??= error;
      else this.#deadline.moved(length);
      this.#wake?.();
    });
    while (this.#inFlight > this.#limit && !this.#failure) {
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
    if (this.#failure) throw this.#failure;
  }
}
