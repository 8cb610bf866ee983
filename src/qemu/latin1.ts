// Names in QEMU's stream (idstr, block names, machine) are raw bytes; they are read as Latin-1,
// one character per byte, so that writing them back gives the same bytes whatever they are.

export function latin1(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return s;
}

export function latin1Bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (ch) => ch.charCodeAt(0) & 0xff);
}
