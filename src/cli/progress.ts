// A one-line progress display on stderr, only when stderr is a terminal: done/total, percentage,
// throughput, ETA and the current phase, fitted to the terminal's width (never wrapping) and
// cleared at the end. Written here rather than with cli-progress: that library decides by
// itself whether the stream is a terminal and redraws on its own timer, while this display must
// also run under a test hook (MIGSTREAM_FORCE_TTY=1, width from COLUMNS) and stay one `\r` line.
import { formatBytes } from "./format.js";

export interface ProgressFlags {
  json?: boolean;
  quiet?: boolean;
  /** false with --no-progress. */
  progress?: boolean;
}

/** Whether a progress line may be drawn: a terminal on stderr and nothing asking for silence. */
export function progressEnabled(flags: ProgressFlags): boolean {
  if (flags.json || flags.quiet || flags.progress === false) return false;
  if (process.env["NO_PROGRESS"]) return false;
  return process.stderr.isTTY === true || process.env["MIGSTREAM_FORCE_TTY"] === "1";
}

function terminalWidth(): number {
  const fromEnv = Number(process.env["COLUMNS"]);
  const width = process.stderr.columns || (Number.isInteger(fromEnv) && fromEnv > 0 ? fromEnv : 80);
  return Math.max(width, 20);
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

export class Progress {
  readonly #enabled: boolean;
  readonly #label: string;
  #started = performance.now();
  #last = -Infinity;
  #drawn = false;
  #phase: string | undefined;
  #done = 0;
  #total: number | undefined;
  #note: string | undefined;
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(label: string, flags: ProgressFlags) {
    this.#enabled = progressEnabled(flags);
    this.#label = label;
  }

  get enabled(): boolean {
    return this.#enabled;
  }

  /** The current phase ("pre-copy round 2", "stop-copy"); progress within it restarts. */
  phase(name: string, total?: number): void {
    this.#phase = name;
    this.#total = total;
    this.#done = 0;
    this.#started = performance.now();
    this.#draw(true);
  }

  /** A short fact shown after the numbers ("3.0 MiB dirty left"). */
  note(text: string | undefined): void {
    this.#note = text;
    this.#draw(true);
  }

  update(done: number, total?: number): void {
    this.#done = done;
    if (total !== undefined) this.#total = total;
    this.#draw(total !== undefined && done >= total);
  }

  /** Redraws every half second (elapsed time and ETA move even while no bytes are counted). */
  tick(): this {
    if (this.#enabled && !this.#timer) {
      this.#timer = setInterval(() => this.#draw(true), 500);
      this.#timer.unref();
    }
    return this;
  }

  /** Clears the line. */
  done(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#drawn) process.stderr.write("\r\x1b[K");
    this.#drawn = false;
  }

  /** The line for a width (exported through render for tests of the layout). */
  render(width: number, now = performance.now()): string {
    const seconds = Math.max((now - this.#started) / 1000, 1e-3);
    const rate = this.#done / seconds;
    const head = this.#phase ? `${this.#label} · ${this.#phase}` : this.#label;
    const parts: string[] = [];
    const total = this.#total;
    let fraction: number | undefined;
    if (total !== undefined && total > 0) {
      fraction = Math.min(this.#done / total, 1);
      parts.push(`${formatBytes(this.#done)}/${formatBytes(total)}`, `${(fraction * 100).toFixed(0).padStart(3)}%`);
    } else if (this.#done > 0) {
      parts.push(formatBytes(this.#done));
    }
    if (this.#done > 0) parts.push(`${formatBytes(rate)}/s`);
    if (fraction !== undefined && this.#done > 0) parts.push(`ETA ${formatDuration((total! - this.#done) / rate)}`);
    else parts.push(formatDuration(seconds));
    if (this.#note) parts.push(this.#note);
    // Drop the least important facts until the line fits; a bar fills what room is left.
    const room = width - 1;
    let text = [head, ...parts].join("  ");
    while (text.length > room && parts.length > 1) {
      parts.pop();
      text = [head, ...parts].join("  ");
    }
    if (text.length > room) return text.slice(0, room);
    const barWidth = Math.min(30, room - text.length - 3);
    if (fraction !== undefined && barWidth >= 8) {
      const filled = Math.round(fraction * barWidth);
      text += `  ${"█".repeat(filled)}${"░".repeat(barWidth - filled)}`;
    }
    return text;
  }

  #draw(force: boolean): void {
    if (!this.#enabled) return;
    const now = performance.now();
    if (!force && now - this.#last < 100) return;
    this.#last = now;
    this.#drawn = true;
    process.stderr.write(`\r${this.render(terminalWidth(), now)}\x1b[K`);
  }
}
