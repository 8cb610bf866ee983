// The worker pool: N threads that run kernels of the shared core over one shared
// WebAssembly.Memory, so work is split by page ranges and record ranges with no copy of the
// state per worker (docs/ARCHITECTURE.md, "Worker pool"). One code path for every runtime: Web
// Workers (browsers, Deno, Bun) where the global Worker exists, Node's worker_threads
// otherwise, both started from the same source string.
import { MigrationError } from "../errors.js";
import { Core, sharedCoreModule } from "../instance.js";
import { WORKER_SOURCE } from "./worker-source.js";

/** Most workers a pool starts, whatever is asked: past this, memory bandwidth is the limit. */
export const MAX_JOBS = 64;
/** Default `--jobs` cap: the cores there are, up to this many. */
export const DEFAULT_JOBS_CAP = 8;

/** A kernel call: the export's name, then its arguments. */
export type KernelCall = [name: string, ...args: Array<number | bigint>];

interface Thread {
  post(message: unknown): void;
  terminate(): void;
  /** Node: keep the process alive while a task runs, not while idle. */
  hold(busy: boolean): void;
}

interface NodeWorker {
  postMessage(message: unknown): void;
  terminate(): Promise<number>;
  on(event: string, listener: (value: never) => void): void;
  ref(): void;
  unref(): void;
}

interface NodeWorkerThreads {
  Worker: new (source: string, options: { eval: true }) => NodeWorker;
}

function nodeWorkerThreads(): NodeWorkerThreads | undefined {
  const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process;
  return proc?.getBuiltinModule?.("node:worker_threads") as NodeWorkerThreads | undefined;
}

/** Why this runtime cannot run a pool (undefined: it can). */
export function poolUnavailable(): string | undefined {
  const g = globalThis as { crossOriginIsolated?: boolean; Deno?: unknown; Worker?: unknown };
  if (typeof SharedArrayBuffer === "undefined" || (g.crossOriginIsolated === false && g.Deno === undefined)) {
    return "shared memory is unavailable (a browser page needs cross-origin isolation: COOP same-origin and COEP require-corp)";
  }
  if (typeof g.Worker !== "function" && !nodeWorkerThreads()) return "this runtime has no workers";
  try {
    new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
  } catch {
    return "this runtime cannot share WebAssembly memory";
  }
  return undefined;
}

/** Cores this runtime reports (navigator.hardwareConcurrency or Node's availableParallelism). */
export function availableCores(): number {
  const nav = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator;
  if (nav?.hardwareConcurrency) return nav.hardwareConcurrency;
  const os = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process?.getBuiltinModule?.("node:os") as
    | { availableParallelism?: () => number }
    | undefined;
  return os?.availableParallelism?.() ?? 1;
}

/** The CLI's default `--jobs`: the cores there are, up to {@link DEFAULT_JOBS_CAP}. */
export function defaultJobs(): number {
  return Math.max(1, Math.min(DEFAULT_JOBS_CAP, availableCores()));
}

/** Checks a `jobs` option: an integer from 1 to {@link MAX_JOBS}. */
export function checkJobs(jobs: number): number {
  if (!Number.isInteger(jobs) || jobs < 1 || jobs > MAX_JOBS) throw new MigrationError("EINVAL", `jobs must be an integer from 1 to ${MAX_JOBS}, got ${jobs}`);
  return jobs;
}

function spawn(onmessage: (data: unknown) => void, ondeath: (reason: string) => void): Thread {
  const WebWorker = (globalThis as { Worker?: new (url: string, options: { type: "module" }) => Worker }).Worker;
  if (typeof WebWorker === "function") {
    const url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
    const worker = new WebWorker(url, { type: "module" });
    worker.addEventListener("message", (event) => onmessage((event as MessageEvent).data));
    worker.addEventListener("error", (event) => {
      event.preventDefault?.();
      ondeath((event as ErrorEvent).message || "error");
    });
    worker.addEventListener("messageerror", () => ondeath("a message could not be read"));
    return {
      post: (message) => worker.postMessage(message),
      terminate: () => {
        worker.terminate();
        URL.revokeObjectURL(url);
      },
      hold: () => undefined,
    };
  }
  const threads = nodeWorkerThreads();
  if (!threads) throw new MigrationError("EINVAL", "this runtime has no workers");
  const worker = new threads.Worker(WORKER_SOURCE, { eval: true });
  worker.on("message", onmessage);
  worker.on("error", (error: Error) => ondeath(error?.message ?? String(error)));
  worker.on("exit", (code: number) => ondeath(`exited with code ${code}`));
  return {
    post: (message) => worker.postMessage(message),
    terminate: () => void worker.terminate(),
    hold: (busy) => (busy ? worker.ref() : worker.unref()),
  };
}

interface Task {
  calls: KernelCall[];
  promise?: Promise<unknown[]>;
  /** Set when handed to a worker: its reply names it. */
  id?: number;
  resolve: (results: unknown[]) => void;
  reject: (error: MigrationError) => void;
}

/**
 * Tasks handed to one worker at a time: the next one is already in its message queue when it
 * finishes one, so it does not wait for the calling thread (busy with a task of its own) to hand
 * it more.
 */
const DEPTH = 2;

interface Slot {
  thread: Thread;
  ready: boolean;
  /** The tasks this worker has, in the order it runs them. */
  tasks: Task[];
  /** Per-thread kernel scratch (xxh3 accumulators, digest input) in shared memory. */
  scratch: number;
  /** Bumped when the slot gets a new thread: events of an old one are ignored. */
  epoch: number;
  /** Set by {@link WorkerPool.crash} on an idle worker: it dies when handed its next task. */
  crashOnNextTask?: boolean;
}

/**
 * Threads running kernels of one shared core. Work is handed out in calls that name kernels and
 * pointers into {@link core}'s memory; a caller waits for every task it started before it frees
 * or reuses the memory those tasks use.
 *
 * `jobs` counts the calling thread: a pool of `jobs` runs `jobs - 1` workers, and the thread
 * that waits for them runs queued tasks itself ({@link help}, {@link settle}) instead of
 * idling. A pool of 2 on 2 cores is then 2 busy threads, not 3 (the caller reading files and
 * splicing results beside 2 workers, each preempting the others). (A pool of 1, made directly,
 * is one worker: the caller then does not help.)
 */
export class WorkerPool {
  /** Threads that do the work, the calling thread included. */
  readonly jobs: number;
  /** The core over the shared memory: the main thread allocates and runs kernels here too. */
  readonly core: Core;
  /**
   * The instance the calling thread runs pool tasks with: like a worker's, its own (kernels
   * only, no allocation; its own scratch block), replaced after a trap as a worker is.
   */
  #local: Record<string, (...args: Array<number | bigint>) => unknown>;
  readonly #localScratch: number;
  readonly #slots: Slot[] = [];
  readonly #queue: Task[] = [];
  #nextId = 1;
  #closed = false;
  /** Worker deaths seen so far (each replaced by a fresh worker). */
  restarts = 0;

  /** Use {@link createPool}. */
  constructor(jobs: number) {
    this.jobs = checkJobs(jobs);
    const memory = new WebAssembly.Memory({ initial: 32, maximum: 65536, shared: true });
    this.core = new Core(-1, memory);
    const size = this.core.exports.thread_scratch_size();
    // Every instance over the shared memory writes the module's data segments again when it
    // starts (a worker joining, or replacing one that died), zeros over the default scratch
    // block included: the main thread's kernels use a block of their own, like each worker.
    this.core.exports.set_thread_scratch(this.core.alloc(size));
    this.#localScratch = this.core.alloc(size);
    this.#local = this.#instantiate();
    for (let i = 0; i < Math.max(1, jobs - 1); i++) {
      const slot: Slot = { thread: undefined as unknown as Thread, ready: false, tasks: [], scratch: this.core.alloc(size), epoch: 0 };
      this.#slots.push(slot);
      this.#start(slot);
    }
  }

  /** Worker threads (the calling thread is not one). */
  get workers(): number {
    return this.#slots.length;
  }

  /**
   * Resolves once every worker has started (tests and benchmarks that need a worker to take a
   * task), or the pool was closed; ETIMEDOUT after `timeoutMs` (default 10 s).
   */
  async ready(timeoutMs = 10_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!this.#closed && this.#slots.some((slot) => !slot.ready)) {
      if (performance.now() >= deadline) throw new MigrationError("ETIMEDOUT", `the pool's workers did not start within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  #instantiate(): Record<string, (...args: Array<number | bigint>) => unknown> {
    const instance = new WebAssembly.Instance(sharedCoreModule(), { env: { memory: this.core.memory } });
    const kernels = instance.exports as unknown as Record<string, (...args: Array<number | bigint>) => unknown>;
    kernels.set_thread_scratch!(this.#localScratch);
    return kernels;
  }

  /**
   * Runs tasks of `tasks` that no worker has taken yet on this thread, one at a time and from
   * the back (the workers take from the front), returning to the event loop after each so that
   * a worker that finished is handed its next task at once rather than after this thread's
   * turn. Resolves when none of `tasks` waits in the queue any more (some may still run on
   * workers), or, given `until`, once that settled (looked at after each task): an operation
   * waiting for its oldest batch passes all of its tasks and the batch as `until`, and works on
   * its newest meanwhile. The calling thread's share, done while it would otherwise wait.
   * Results and failures are a worker's (a trap: EFAULT, and a fresh instance for the next task).
   */
  async help(tasks: Iterable<Promise<unknown>>, until?: Promise<unknown>): Promise<void> {
    if (this.jobs === 1) return;
    const wanted = new Set<Promise<unknown>>(tasks);
    let reached = false;
    // Looked at after each task, not before the first: taking one more task while the batch
    // waited for is done already delays its splice by one task, but keeps this thread busy
    // (measured: about 7% faster encodes on 2 threads than looking first).
    until?.then(
      () => (reached = true),
      () => (reached = true),
    );
    for (;;) {
      if (this.#closed || reached) return;
      let index = this.#queue.length - 1;
      while (index >= 0 && !wanted.has(this.#queue[index]!.promise!)) index--;
      if (index < 0) return;
      const task = this.#queue.splice(index, 1)[0]!;
      const kernels = this.#local;
      try {
        task.resolve(task.calls.map(([name, ...args]) => kernels[name]!(...args)));
      } catch (error) {
        task.reject(new MigrationError("EFAULT", `a pool worker failed: ${(error as Error)?.message ?? String(error)}`));
        if (error instanceof WebAssembly.RuntimeError) this.#local = this.#instantiate();
      }
      await nextTurn();
    }
  }

  /**
   * Takes the tasks of `tasks` that no worker has started out of the queue and fails them with
   * ECANCELED (an operation that failed: their results would be thrown away). Those already on
   * a worker run on; wait for them before freeing their memory.
   */
  cancel(tasks: Promise<unknown>[]): void {
    const wanted = new Set<Promise<unknown>>(tasks);
    const error = new MigrationError("ECANCELED", "the operation was abandoned");
    for (let i = this.#queue.length - 1; i >= 0; i--) {
      if (wanted.has(this.#queue[i]!.promise!)) this.#queue.splice(i, 1)[0]!.reject(error);
    }
  }

  /** {@link help} with `tasks`, then {@link settleAll} of them. */
  async settle<T>(tasks: Promise<T>[]): Promise<T[]> {
    await this.help(tasks);
    return settleAll(tasks);
  }

  /** Queues `calls` to run in order on one worker (or the calling thread); resolves with each call's result. */
  run(calls: KernelCall[]): Promise<unknown[]> {
    if (this.#closed) return Promise.reject(new MigrationError("ECANCELED", "the worker pool was closed"));
    const entry: Task = { calls, resolve: () => undefined, reject: () => undefined };
    const task = new Promise<unknown[]>((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    entry.promise = task;
    this.#queue.push(entry);
    this.#dispatch();
    // Callers await every task of an operation, but not always before one fails (a worker dies
    // while the main thread reads the next window): that is not an unhandled rejection.
    task.catch(() => undefined);
    return task;
  }

  /**
   * Ends worker `index` abruptly, as a crash would (for fault tests): its task fails, the pool
   * starts a replacement. A worker that is idle right now dies as soon as it is handed its next
   * task instead, so that a test always sees a task fail, however the threads were scheduled.
   */
  crash(index: number): void {
    const slot = this.#slots[index];
    if (!slot) throw new MigrationError("EINVAL", `no worker ${index}`);
    if (slot.tasks.length === 0) {
      slot.crashOnNextTask = true;
      return;
    }
    slot.thread.terminate();
    this.#died(slot, slot.epoch, "it was ended abruptly");
  }

  /** Stops every worker; tasks not finished fail with ECANCELED. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const error = new MigrationError("ECANCELED", "the worker pool was closed");
    for (const slot of this.#slots) {
      slot.epoch++;
      slot.thread.terminate();
      for (const task of slot.tasks.splice(0)) task.reject(error);
    }
    for (const task of this.#queue.splice(0)) task.reject(error);
  }

  get closed(): boolean {
    return this.#closed;
  }

  #start(slot: Slot): void {
    const epoch = ++slot.epoch;
    slot.ready = false;
    slot.thread = spawn(
      (data) => this.#message(slot, epoch, data as WorkerReply),
      (reason) => this.#died(slot, epoch, reason),
    );
    slot.thread.post({ init: true, module: sharedCoreModule(), memory: this.core.memory, scratch: slot.scratch });
  }

  #message(slot: Slot, epoch: number, data: WorkerReply): void {
    if (epoch !== slot.epoch) return;
    if (data.ready) {
      slot.ready = true;
      slot.thread.hold(false);
      this.#dispatch();
      return;
    }
    // Replies come in the order the tasks were posted; one that does not match is a broken
    // thread, treated as a dead one.
    const task = slot.tasks[0];
    if (!task || task.id !== data.id) {
      this.#died(slot, epoch, `it answered task ${String(data.id)} out of order`);
      return;
    }
    slot.tasks.shift();
    slot.thread.hold(slot.tasks.length > 0);
    if (data.error !== undefined) {
      task.reject(new MigrationError("EFAULT", `a pool worker failed: ${data.error}`));
      if (data.trap) {
        // A trapped instance may hold inconsistent state of its own: start a clean one. The
        // tasks posted to it after this one are lost with it (it may have begun them).
        const error = new MigrationError("EFAULT", "a pool worker failed: abandoned with a worker whose kernel trapped");
        for (const lost of slot.tasks.splice(0)) lost.reject(error);
        this.#replace(slot);
      }
    } else task.resolve(data.results ?? []);
    this.#dispatch();
  }

  #died(slot: Slot, epoch: number, reason: string): void {
    if (epoch !== slot.epoch || this.#closed) return;
    this.restarts++;
    const error = new MigrationError("EIO", `a pool worker stopped (${reason}); the operation was abandoned`);
    for (const task of slot.tasks.splice(0)) task.reject(error);
    this.#replace(slot);
  }

  #replace(slot: Slot): void {
    slot.epoch++;
    slot.thread.terminate();
    this.#start(slot);
  }

  #dispatch(): void {
    // Round by round, so each worker gets one task before any gets a second.
    for (let depth = 1; depth <= DEPTH; depth++) {
      for (const slot of this.#slots) {
        if (this.#queue.length === 0) return;
        if (!slot.ready || slot.tasks.length >= depth) continue;
        const task = this.#queue.shift()!;
        task.id = this.#nextId++;
        slot.tasks.push(task);
        slot.thread.hold(true);
        slot.thread.post({ id: task.id, calls: task.calls });
        if (slot.crashOnNextTask) {
          slot.crashOnNextTask = false;
          slot.thread.terminate();
          this.#died(slot, slot.epoch, "it was ended abruptly");
        }
      }
    }
  }
}

interface WorkerReply {
  ready?: boolean;
  id?: number;
  results?: unknown[];
  error?: string;
  trap?: boolean;
}

/**
 * A pool of `jobs` threads (`jobs - 1` workers and the caller), or, where this runtime cannot run one (see {@link poolUnavailable}),
 * undefined and the reason: the caller then works on one thread and says so.
 */
export function createPool(jobs: number): { pool: WorkerPool | undefined; note: string | undefined } {
  checkJobs(jobs);
  if (jobs === 1) return { pool: undefined, note: undefined };
  const reason = poolUnavailable();
  if (reason) return { pool: undefined, note: `running on one thread: ${reason}` };
  return { pool: new WorkerPool(jobs), note: undefined };
}

/**
 * Resolves after the event loop had a turn (worker messages included): setImmediate where it
 * exists, a message to itself elsewhere (a timer would wait a millisecond or more).
 */
function nextTurn(): Promise<void> {
  const immediate = (globalThis as { setImmediate?: (callback: () => void) => unknown }).setImmediate;
  if (immediate) return new Promise((resolve) => void immediate(resolve));
  return new Promise((resolve) => {
    turns.waiting.push(resolve);
    if (!turns.channel) {
      // One channel for a burst of turns, closed when none waits (an open port can keep a
      // runtime alive).
      const channel = new MessageChannel();
      channel.port1.onmessage = () => {
        turns.waiting.shift()?.();
        if (turns.waiting.length === 0) {
          channel.port1.close();
          channel.port2.close();
          turns.channel = undefined;
        }
      };
      turns.channel = channel;
    }
    turns.channel.port2.postMessage(0);
  });
}

const turns: { channel: MessageChannel | undefined; waiting: Array<() => void> } = { channel: undefined, waiting: [] };

/**
 * Waits for every promise, then throws the first failure (in order): memory a task uses is
 * freed only once no task can still be writing it.
 */
export async function settleAll<T>(tasks: Promise<T>[]): Promise<T[]> {
  const settled = await Promise.allSettled(tasks);
  const failed = settled.find((s) => s.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return settled.map((s) => (s as PromiseFulfilledResult<T>).value);
}
