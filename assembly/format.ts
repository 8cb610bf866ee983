// Wire-format constants shared by the encoder and decoder kernels. docs/FORMAT.md is the spec;
// src/format/constants.ts mirrors these values for the TS side.

export const RECORD_HEADER: usize = 24;
export const RECORD_TRAILER: usize = 8;

export const TAG_PAGES: u8 = 0x01;
export const TAG_ZERO: u8 = 0x02;
export const TAG_DELTA: u8 = 0x03;
export const TAG_LZ4: u8 = 0x04; // 1.1: u32 uncompressed length, then one LZ4 block
export const TAG_CONFIG: u8 = 0x10;
export const TAG_ROUND: u8 = 0x11;
export const TAG_END: u8 = 0x12;

export const FLAG_OPTIONAL: u8 = 0x01;

export const ALG_XXH3: u8 = 1;
export const ALG_CRC32C: u8 = 2;

export const ROUND_PAYLOAD: usize = 32;
export const END_PAYLOAD: usize = 24;
