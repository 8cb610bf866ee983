// The verdict's proof and the trailer split: golden bytes for the proof, and a property that any
// chunking of "stream, then trailer" gives back the stream bytes in order and the nonce.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  endsWithEndRecord,
  errLine,
  makeTrailer,
  NONCE_BYTES,
  okLine,
  StreamTail,
  TRAILER_BYTES,
  verdictError,
  verdictProof,
} from "../../src/node/transport/verdict.js";
import { MigrationError } from "../../src/core/errors.js";

/** An END record for a stream of `before` bytes before it, with this digest. */
function endRecord(before: number, digest: bigint): Uint8Array {
  const record = new Uint8Array(56);
  const view = new DataView(record.buffer);
  view.setUint8(0, 0x12);
  view.setUint32(4, 24, true);
  view.setBigUint64(32, BigInt(before), true);
  view.setBigUint64(40, digest, true);
  return record;
}

describe("verdictProof", () => {
  it("is SHA-256 of the label, le64 byte count, the END record's digest field and the nonce (golden, computed independently with Python hashlib)", () => {
    const end = endRecord(1000, 0x0123456789abcdefn);
    const nonce = new Uint8Array(NONCE_BYTES).map((_, i) => i);
    expect(verdictProof(1056, end, nonce)).toBe("ea645c5eaf195ac1fdbb61b64065818df93c9b8e1d47d1be66f5b4c93e7d7e49");
    // Any other nonce, count or digest gives another proof.
    expect(
      verdictProof(
        1056,
        end,
        nonce.map((b) => b ^ 1),
      ),
    ).not.toBe(verdictProof(1056, end, nonce));
    expect(verdictProof(1057, end, nonce)).not.toBe(verdictProof(1056, end, nonce));
    expect(verdictProof(1056, endRecord(1000, 1n), nonce)).not.toBe(verdictProof(1056, end, nonce));
  });

  it("the verdict lines round-trip, and an OK is accepted only with the count and the proof", () => {
    const proof = "ab".repeat(32);
    expect(okLine(10, proof)).toBe(`OK 10 ${proof}\n`);
    expect(verdictError(`OK 10 ${proof}`, 10, proof)).toBeUndefined();
    expect(verdictError(`OK 11 ${proof}`, 10, proof)).toMatchObject({ code: "EIO" });
    expect(verdictError(`OK 10 ${"cd".repeat(32)}`, 10, proof)).toMatchObject({ code: "EIO" });
    expect(verdictError("OK 10", 10, proof)).toMatchObject({ code: "EPROTONOSUPPORT" });
    expect(verdictError("OK", 10, proof)).toMatchObject({ code: "EIO" });
    expect(verdictError(errLine(new MigrationError("ENODEV", "other\ndevice")).trimEnd(), 10, proof)).toMatchObject({ code: "ENODEV" });
  });
});

describe("StreamTail", () => {
  it("endsWithEndRecord recognizes a complete stream's end, not a cut one", () => {
    const end = endRecord(944, 7n);
    expect(endsWithEndRecord(end, 1000)).toBe(true);
    expect(endsWithEndRecord(end, 1001)).toBe(false);
    expect(endsWithEndRecord(end.subarray(1), 999)).toBe(false);
  });

  it("any chunking of a stream and its trailer gives back the stream and the nonce; without a trailer, all bytes", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 0, maxLength: 400 }),
        fc.array(fc.integer({ min: 1, max: 90 }), { maxLength: 40 }),
        fc.boolean(),
        (stream, cuts, withTrailer) => {
          const trailer = makeTrailer();
          const all = withTrailer ? Buffer.concat([stream, trailer]) : Buffer.from(stream);
          const tail = new StreamTail();
          const out: Uint8Array[] = [];
          let at = 0;
          for (const n of [...cuts, all.length]) {
            if (at >= all.length) break;
            out.push(...tail.push(all.subarray(at, at + n)));
            at += n;
          }
          const end = tail.end();
          if ("rest" in end) out.push(end.rest);
          const passed = Buffer.concat(out);
          if (withTrailer) {
            expect("nonce" in end && Buffer.from(end.nonce).equals(trailer.subarray(TRAILER_BYTES - NONCE_BYTES))).toBe(true);
            expect(passed.equals(Buffer.from(stream))).toBe(true);
          } else {
            // Random bytes ending like a trailer are vanishingly unlikely: all of it is stream.
            expect(passed.equals(all)).toBe(true);
          }
          expect(Buffer.from(tail.streamEnd).equals(Buffer.from(stream.subarray(Math.max(0, stream.length - 56))))).toBe(true);
        },
      ),
      { seed: 1717, numRuns: 300 },
    );
  });
});
