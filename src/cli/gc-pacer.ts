// The demo runs both ends of a migration in one process, and every socket read on the receiving
// end gets a fresh buffer from Node (about 64 KiB, no way to read into one of ours on an accepted
// socket). The decoder is done with it at once, but V8 frees such buffers only at its next
// collection, which for buffers holding little JS is driven by external-memory growth: up to
// tens of MiB of read garbage at a time (about 25 MiB over 2 x the device in a 256 MiB demo).
// A young-generation collection every few MiB received frees them while they are still young;
// it costs well under a millisecond on a heap this small.
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

type Collect = (options: { type: "minor" | "major" }) => void;

let collect: Collect | null | undefined;

/** V8's gc(), if this runtime lets it be exposed after start (Node does; elsewhere: null, nothing happens). */
function collector(): Collect | null {
  if (collect !== undefined) return collect;
  try {
    setFlagsFromString("--expose-gc");
    const gc: unknown = runInNewContext("typeof gc === 'function' ? gc : null");
    collect = typeof gc === "function" ? (gc as Collect) : null;
  } catch {
    collect = null;
  }
  return collect;
}

/** An `onProgress(bytesReceived)` that collects young garbage every `every` bytes. */
export function gcPacer(every = 4 << 20): (bytes: number) => void {
  const gc = collector();
  let next = every;
  return (bytes) => {
    if (gc === null || bytes < next) return;
    next = bytes + every;
    gc({ type: "minor" });
  };
}
