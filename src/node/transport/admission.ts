// Who may try to authenticate, and for how long: the pre-authentication policy of a receiver,
// in one place so that every kind of connection it accepts passes through the same door.
//
// Learned from sshd (LoginGraceTime, MaxStartups, PerSourcePenalties), adapted so that no number
// of hostile connections can lock an honest peer out:
// - A table of at most `maxUnauthenticated` connections being authenticated, at most
//   `maxPerSource` of them from one source address (IPv6: one /64, `sourcePrefix6`). Each has `authTimeoutMs` from its admission
//   to authenticate (TLS handshake and a verified header), or it is dropped.
// - Connections beyond the table wait, unread, in arrival order. A newcomer is never refused:
//   when the table is full and someone waits, a table member chosen at random among those that
//   had at least `protectedMs` to authenticate is dropped to make room (random early drop). A
//   peer that holds, drips or stalls keeps its slot for `protectedMs` at best, while an honest
//   peer's first bytes are already waiting in its socket when it is admitted and it
//   authenticates within a few round trips.
// - Dropped hostile peers that reconnect at once join the queue behind whoever already waits,
//   so an honest peer is admitted after at most (connections ahead of it / table size) protection
//   periods, and the drops run at most at (table size / protectedMs) a second: reconnecting
//   faster buys a hostile peer nothing.
// - The queue holds at most `maxWaiting` connections; past that the source with the most
//   waiting connections loses one of them, at random (never the newcomer).
// - A member that proved it is an extra channel of a migration (a well-formed channel preamble)
//   and waits for that migration's first channel to deliver a verified header is `shield`ed:
//   not a victim of random early drop, its deadline unchanged. Over TLS only key holders get
//   that far. Over plain TCP anyone can send a preamble: at most `maxShielded` members are
//   shielded at once (a quarter of the table, never all of it), so made-up preambles can hold
//   that quarter for their deadline but not the table, and they are dropped as soon as the
//   migration they do not belong to is known.
import type { Socket } from "node:net";
import { MigrationError } from "../../core/errors.js";
import { checkTimeout } from "./deadline.js";

/** Default of `authTimeoutMs`: LoginGraceTime-like, and separate from the transfer's timeout. */
export const DEFAULT_AUTH_TIMEOUT_MS = 10_000;

export interface AdmissionOptions {
  /** Time a connection has from its admission to authenticate (ms). Default 10 s. */
  authTimeoutMs?: number;
  /** Connections being authenticated at once. Default 64. */
  maxUnauthenticated?: number;
  /** Of those, at most this many from one source address. Default 32. */
  maxPerSource?: number;
  /** Connections waiting for a slot, unread. Default 512. */
  maxWaiting?: number;
  /**
   * A member cannot be dropped to make room during its first `protectedMs` (ms). Default 500, at
   * most half the auth timeout.
   */
  protectedMs?: number;
  /** Random numbers in [0, 1): tests pass a seeded one. Default Math.random. */
  random?: () => number;
  /**
   * IPv6 sources are counted by their first this many bits (1 to 128; default 64): addresses of
   * one /64 are one source for `maxPerSource` and for the queue's overflow rule.
   */
  sourcePrefix6?: number;
  /**
   * Members shielded from random early drop at once ({@link Admission.shield}). Default a quarter
   * of the table (rounded down); never more than the table less one; 0 turns shielding off.
   */
  maxShielded?: number;
}

/** Why a connection left the door without authenticating. */
export type DropReason = "timeout" | "evicted" | "overflow";

export interface AdmissionHandlers {
  /** The connection got a slot: start reading it (it arrives paused). */
  admit(socket: Socket): void;
  /** The connection was dropped (its socket is destroyed right after). */
  dropped(socket: Socket, reason: DropReason, error: MigrationError): void;
}

interface Member {
  socket: Socket;
  source: string;
  admittedAt: number;
  timer: ReturnType<typeof setTimeout>;
  /** Not a victim of random early drop (see {@link Admission.shield}). */
  shielded?: boolean;
}

/**
 * Default of `sourcePrefix6`: one IPv6 host or site usually holds a whole /64, so counting its
 * addresses apart would give one peer 2^64 sources (sshd's PerSourceNetBlockSize, with /64).
 */
export const DEFAULT_SOURCE_PREFIX6 = 64;

/**
 * The source a connection counts against: its IPv4 address (IPv4-mapped IPv6 addresses too), or
 * its IPv6 address cut to its first `prefix6` bits ("2001:db8:1:2:0:0:0:0/64").
 */
export function sourceOf(socket: Pick<Socket, "remoteAddress">, prefix6 = DEFAULT_SOURCE_PREFIX6): string {
  const address = socket.remoteAddress ?? "?";
  if (address.startsWith("::ffff:") && address.includes(".")) return address.slice(7);
  if (!address.includes(":")) return address;
  const groups = ipv6Groups(address);
  if (!groups) return address;
  const kept = groups.map((group, i) => {
    const bits = Math.max(0, Math.min(16, prefix6 - 16 * i));
    return bits === 0 ? 0 : group & ((0xffff << (16 - bits)) & 0xffff);
  });
  return `${kept.map((g) => g.toString(16)).join(":")}/${prefix6}`;
}

/** The eight 16-bit groups of an IPv6 address in text (zone dropped), or undefined. */
function ipv6Groups(address: string): number[] | undefined {
  const bare = address.split("%")[0]!;
  const halves = bare.split("::");
  if (halves.length > 2) return undefined;
  const parse = (part: string): string[] =>
    part === ""
      ? []
      : part.split(":").flatMap((group) => {
          if (!group.includes(".")) return [group];
          // An IPv4 tail (::1.2.3.4) is the last two groups.
          const bytes = group.split(".").map(Number);
          return [((bytes[0]! << 8) | bytes[1]!).toString(16), ((bytes[2]! << 8) | bytes[3]!).toString(16)];
        });
  const head = parse(halves[0]!);
  const tail = halves.length === 2 ? parse(halves[1]!) : [];
  const zeros = halves.length === 2 ? 8 - head.length - tail.length : 0;
  if (zeros < 0) return undefined;
  const groups = [...head, ...Array<string>(zeros).fill("0"), ...tail].map((g) => (/^[0-9a-f]{1,4}$/i.test(g) ? Number.parseInt(g, 16) : Number.NaN));
  return groups.length === 8 && groups.every((g) => Number.isInteger(g)) ? groups : undefined;
}

export class Admission {
  readonly authTimeoutMs: number;
  readonly #max: number;
  readonly #perSource: number;
  readonly #maxWaiting: number;
  readonly #protectedMs: number;
  readonly #random: () => number;
  readonly #handlers: AdmissionHandlers;
  readonly #members = new Map<Socket, Member>();
  readonly #perSourceCount = new Map<string, number>();
  #waiting: Socket[] = [];
  #wakeup: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  readonly #maxShielded: number;
  #shielded = 0;
  readonly #prefix6: number;

  constructor(options: AdmissionOptions, handlers: AdmissionHandlers) {
    this.authTimeoutMs = checkTimeout(options.authTimeoutMs ?? DEFAULT_AUTH_TIMEOUT_MS);
    this.#max = positive(options.maxUnauthenticated ?? 64, "maxUnauthenticated");
    this.#perSource = Math.min(this.#max, positive(options.maxPerSource ?? 32, "maxPerSource"));
    this.#maxWaiting = positive(options.maxWaiting ?? 512, "maxWaiting");
    this.#protectedMs = Math.min(options.protectedMs ?? 500, this.authTimeoutMs / 2);
    this.#random = options.random ?? Math.random;
    // Never the whole table: someone must always be droppable to make room.
    const shielded = options.maxShielded ?? Math.floor(this.#max / 4);
    if (!Number.isInteger(shielded) || shielded < 0) throw new MigrationError("EINVAL", `maxShielded must be a non-negative integer, got ${shielded}`);
    this.#maxShielded = Math.min(shielded, this.#max - 1);
    const prefix6 = options.sourcePrefix6 ?? DEFAULT_SOURCE_PREFIX6;
    if (!Number.isInteger(prefix6) || prefix6 < 1 || prefix6 > 128)
      throw new MigrationError("EINVAL", `sourcePrefix6 must be an integer from 1 to 128, got ${prefix6}`);
    this.#prefix6 = prefix6;
    this.#handlers = handlers;
  }

  /** Connections being authenticated. */
  get unauthenticated(): number {
    return this.#members.size;
  }

  /** Connections waiting for a slot. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** A new connection (paused): it waits for a slot, and gets one as soon as one is free. */
  offer(socket: Socket): void {
    if (this.#closed) {
      socket.destroy();
      return;
    }
    socket.on("error", () => undefined);
    // Waiters are not read, so a hang-up is seen once admitted (the reader gets EOF at once);
    // a member that closes leaves the table.
    socket.once("close", () => this.#leave(socket));
    this.#waiting.push(socket);
    if (this.#waiting.length > this.#maxWaiting) this.#overflow(socket);
    this.#pump();
  }

  /**
   * The member showed it is an extra channel of a migration and waits for the migration's first
   * channel: it is not dropped to make room (its deadline still runs). False when
   * `maxShielded` members are shielded already (it stays as it was) or it is not a member.
   */
  shield(socket: Socket): boolean {
    const member = this.#members.get(socket);
    if (!member) return false;
    if (member.shielded) return true;
    if (this.#shielded >= this.#maxShielded) return false;
    member.shielded = true;
    this.#shielded++;
    return true;
  }

  /** The connection authenticated: it leaves the table, and its deadline with it. */
  authenticated(socket: Socket): void {
    this.#remove(socket);
    this.#pump();
  }

  /** Milliseconds the connection has left to authenticate (0 when it is not in the table). */
  remainingMs(socket: Socket): number {
    const member = this.#members.get(socket);
    if (!member) return 0;
    return Math.max(0, this.authTimeoutMs - (performance.now() - member.admittedAt));
  }

  /** Drops everything that is waiting or authenticating; later offers are refused. */
  close(): void {
    this.#closed = true;
    if (this.#wakeup) clearTimeout(this.#wakeup);
    for (const socket of this.#waiting) socket.destroy();
    this.#waiting = [];
    for (const member of this.#members.values()) {
      clearTimeout(member.timer);
      member.socket.destroy();
    }
    this.#members.clear();
    this.#perSourceCount.clear();
    this.#shielded = 0;
  }

  #leave(socket: Socket): void {
    if (this.#members.has(socket)) this.#remove(socket);
    else {
      const at = this.#waiting.indexOf(socket);
      if (at >= 0) this.#waiting.splice(at, 1);
    }
    this.#pump();
  }

  #remove(socket: Socket): void {
    const member = this.#members.get(socket);
    if (!member) return;
    clearTimeout(member.timer);
    this.#members.delete(socket);
    if (member.shielded) this.#shielded--;
    const left = (this.#perSourceCount.get(member.source) ?? 1) - 1;
    if (left > 0) this.#perSourceCount.set(member.source, left);
    else this.#perSourceCount.delete(member.source);
  }

  #drop(socket: Socket, reason: DropReason, error: MigrationError): void {
    this.#remove(socket);
    const at = this.#waiting.indexOf(socket);
    if (at >= 0) this.#waiting.splice(at, 1);
    this.#handlers.dropped(socket, reason, error);
    // A reset, not a FIN: the peer learns at once, and no TIME_WAIT is left on this side.
    if (!socket.destroyed) socket.resetAndDestroy();
  }

  /**
   * The queue is over its bound: a source with the most waiting connections loses one, chosen at
   * random among all tied for most (with one connection per source, that is any waiter, not
   * always the oldest: the honest peer reaching the head of the queue is no likelier a victim).
   */
  #overflow(newcomer: Socket): void {
    const bySource = new Map<string, Socket[]>();
    for (const socket of this.#waiting) {
      if (socket === newcomer) continue;
      const source = sourceOf(socket, this.#prefix6);
      const list = bySource.get(source);
      if (list) list.push(socket);
      else bySource.set(source, [socket]);
    }
    let most = 0;
    for (const list of bySource.values()) most = Math.max(most, list.length);
    const tied = [...bySource.values()].filter((list) => list.length === most).flat();
    const victim = tied[Math.floor(this.#random() * tied.length)];
    if (victim) this.#drop(victim, "overflow", new MigrationError("EBUSY", `more than ${this.#maxWaiting} connections waiting to authenticate`));
  }

  /** Admits waiting connections while there is room, making room by random early drop. */
  #pump(): void {
    if (this.#closed) return;
    if (this.#wakeup) {
      clearTimeout(this.#wakeup);
      this.#wakeup = undefined;
    }
    let i = 0;
    while (i < this.#waiting.length) {
      const socket = this.#waiting[i]!;
      const source = sourceOf(socket, this.#prefix6);
      const fromSource = this.#perSourceCount.get(source) ?? 0;
      const full = this.#members.size >= this.#max;
      if (!full && fromSource < this.#perSource) {
        this.#waiting.splice(i, 1);
        this.#admit(socket, source);
        continue;
      }
      // Room is made among the members this newcomer competes with: its own source's when that
      // source is at its cap, everyone's otherwise.
      const victim = this.#victim(fromSource >= this.#perSource ? source : undefined);
      if (victim) {
        this.#drop(
          victim,
          "evicted",
          new MigrationError("EBUSY", `dropped to make room: no authentication within ${Math.round(this.#protectedMs)} ms while others waited`),
        );
        continue;
      }
      // Nobody in its way can be dropped yet; a later waiter from another source may still fit.
      if (full) break;
      i++;
    }
    if (this.#waiting.length > 0) this.#scheduleWakeup();
  }

  #admit(socket: Socket, source: string): void {
    const timer = setTimeout(() => {
      this.#drop(socket, "timeout", new MigrationError("ETIMEDOUT", `no authentication and verified header within ${this.authTimeoutMs} ms`));
      this.#pump();
    }, this.authTimeoutMs);
    this.#members.set(socket, { socket, source, admittedAt: performance.now(), timer });
    this.#perSourceCount.set(source, (this.#perSourceCount.get(source) ?? 0) + 1);
    this.#handlers.admit(socket);
  }

  /** A random member (of `source`, when given) past its protection, if any. */
  #victim(source: string | undefined): Socket | undefined {
    const now = performance.now();
    const eligible: Socket[] = [];
    for (const member of this.#members.values()) {
      if (source !== undefined && member.source !== source) continue;
      if (!member.shielded && now - member.admittedAt >= this.#protectedMs) eligible.push(member.socket);
    }
    return eligible[Math.floor(this.#random() * eligible.length)];
  }

  /** Runs the pump again when the next member's protection ends (members leaving run it too). */
  #scheduleWakeup(): void {
    const now = performance.now();
    let next = Number.POSITIVE_INFINITY;
    for (const member of this.#members.values()) {
      const end = member.admittedAt + this.#protectedMs;
      if (end > now) next = Math.min(next, end);
    }
    if (next === Number.POSITIVE_INFINITY) return;
    this.#wakeup = setTimeout(() => this.#pump(), Math.max(1, next - now));
  }
}

function positive(value: number, name: string): number {
  if (!Number.isInteger(value) || value < 1) throw new MigrationError("EINVAL", `${name} must be a positive integer, got ${value}`);
  return value;
}
