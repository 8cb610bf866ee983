// QEMU's migration stream (migration/savevm.c, migration/ram.c), file format version 3, as
// QEMU 7.2 writes it. All integers on the wire are big-endian. docs/QEMU.md describes what
// migstream reads and writes.

/** "QEVM": the first four bytes of every QEMU migration stream. */
export const QEMU_MAGIC = 0x5145564d;
/** The only file format version QEMU has written since 2.x (version 2 was never shipped). */
export const QEMU_VERSION = 3;

/** Section types: the byte that starts each part of the stream. */
export const Section = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;

/** RAM record flags (the low bits of each record's u64). */
export const RamFlag = {
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
} as const;

/** The iterable section migstream decodes, and the version QEMU 7.2 writes. */
export const RAM_SECTION = "ram";
export const RAM_SECTION_VERSION = 4;
/** x86's target page size: the only one this reader takes (the flags live below it). */
export const QEMU_PAGE_SIZE = 4096;

/** QEMU_VM_COMMAND numbers (migration/savevm.c), to name what a refused command is for. */
export const COMMAND_FEATURES: Readonly<Record<number, string>> = {
  1: "the return path (OPEN_RETURN_PATH)",
  2: "the return path (PING)",
  3: "postcopy (POSTCOPY_ADVISE)",
  4: "postcopy (POSTCOPY_LISTEN)",
  5: "postcopy (POSTCOPY_RUN)",
  6: "postcopy (POSTCOPY_RAM_DISCARD)",
  7: "postcopy (PACKAGED)",
  8: "postcopy recovery (RECV_BITMAP)",
  9: "postcopy recovery (POSTCOPY_RESUME)",
  10: "COLO (ENABLE_COLO)",
  11: "switchover-ack (SWITCHOVER_START)",
};

/** Iterable sections other than RAM, by the feature that writes them. */
export const ITERABLE_FEATURES: Readonly<Record<string, string>> = {
  block: "block migration (the block section)",
  "dirty-bitmap": "dirty-bitmaps migration",
  "s390-storage_attributes": "s390 storage attributes",
  "spapr/htab": "spapr hash page table",
};
