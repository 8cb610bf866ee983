import type { Core } from "./instance.js";

/**
 * Pointer to `data` inside core memory: in place when it already lives there, otherwise copied
 * into scratch at `offset` bytes into the scratch block (so a caller can stage several inputs).
 */
export function stageInput(c: Core, data: Uint8Array, scratchPtr: number): number {
  if (c.owns(data)) return data.byteOffset;
  c.u8.set(data, scratchPtr);
  return scratchPtr;
}
