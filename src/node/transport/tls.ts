// Authenticated, encrypted transport with node:tls (OpenSSL underneath): mutual certificate
// authentication, or pre-shared keys in QEMU's tls-creds-psk file format. Both ends must prove
// who they are before a single stream byte is read.
import { readFileSync } from "node:fs";
import type { ConnectionOptions, TlsOptions } from "node:tls";
import { MigrationError } from "../../core/errors.js";

/** Mutual authentication with certificates: each end presents its own and trusts `ca`. */
export interface TlsCertificates {
  /** This end's certificate chain (PEM). */
  cert: string | Uint8Array;
  /** This end's private key (PEM). */
  key: string | Uint8Array;
  /** The CA(s) the peer's certificate must chain to (PEM). */
  ca: string | Uint8Array;
}

/** One pre-shared key: an identity and its secret. */
export interface PskKey {
  identity: string;
  key: Uint8Array;
}

/** Pre-shared keys: the sender uses the first; the receiver accepts any listed identity. */
export interface TlsPsk {
  psk: readonly PskKey[];
}

export type TransportSecurity = TlsCertificates | TlsPsk;

// TLS 1.2 PSK suites: Node offers PSK only with them (TLS 1.3 PSK would need session tickets).
// They are off by default and must be named; all are AEAD with a key derived per session.
const PSK_CIPHERS = "PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:PSK-CHACHA20-POLY1305";
/** Node must support identities up to 128 bytes and keys up to 64 bytes. */
const MAX_IDENTITY_BYTES = 128;
const MAX_KEY_BYTES = 64;
const MIN_KEY_BYTES = 16;

const isPsk = (security: TransportSecurity): security is TlsPsk => "psk" in security;

/**
 * Parses a QEMU tls-creds-psk key file: one `identity:hexkey` per line (blank lines ignored).
 * Keys shorter than 128 bits are refused: a guessable key is no authentication.
 */
export function parsePskKeys(text: string, source = "PSK file"): PskKey[] {
  const keys: PskKey[] = [];
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === "") return;
    const colon = line.lastIndexOf(":");
    const identity = colon > 0 ? line.slice(0, colon) : "";
    const hex = colon > 0 ? line.slice(colon + 1) : "";
    const where = `${source} line ${i + 1}`;
    if (identity === "" || !/^(?:[0-9a-fA-F]{2})+$/.test(hex)) throw new MigrationError("EINVAL", `${where}: expected identity:hexkey`);
    if (Buffer.byteLength(identity) > MAX_IDENTITY_BYTES) throw new MigrationError("EINVAL", `${where}: identity longer than ${MAX_IDENTITY_BYTES} bytes`);
    const key = Buffer.from(hex, "hex");
    if (key.length < MIN_KEY_BYTES || key.length > MAX_KEY_BYTES) {
      throw new MigrationError("EINVAL", `${where}: key must be ${MIN_KEY_BYTES} to ${MAX_KEY_BYTES} bytes, got ${key.length}`);
    }
    keys.push({ identity, key });
  });
  if (keys.length === 0) throw new MigrationError("EINVAL", `${source} holds no identity:hexkey line`);
  return keys;
}

/** The files a command line names: all three certificate files, or one PSK file. */
export interface SecurityFiles {
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsPsk?: string;
}

/** Reads the security files; undefined when none is given (plain TCP). */
export function loadSecurity(files: SecurityFiles): TransportSecurity | undefined {
  const certs = [files.tlsCert, files.tlsKey, files.tlsCa];
  const given = certs.filter((f) => f !== undefined).length;
  if (files.tlsPsk !== undefined) {
    if (given > 0) throw new MigrationError("EINVAL", "--tls-psk and certificates (--tls-cert/--tls-key/--tls-ca) exclude each other");
    return { psk: parsePskKeys(readSecret(files.tlsPsk), files.tlsPsk) };
  }
  if (given === 0) return undefined;
  if (given < 3) throw new MigrationError("EINVAL", "certificate authentication needs all of --tls-cert, --tls-key and --tls-ca");
  return { cert: readSecret(files.tlsCert!), key: readSecret(files.tlsKey!), ca: readSecret(files.tlsCa!) };
}

function readSecret(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (cause) {
    throw new MigrationError("EIO", `cannot read ${path}: ${(cause as Error).message}`, { cause });
  }
}

function checkSecurity(security: TransportSecurity): void {
  if (isPsk(security)) {
    if (security.psk.length === 0) throw new MigrationError("EINVAL", "tls.psk needs at least one key");
  } else if (!security.cert || !security.key || !security.ca) {
    throw new MigrationError("EINVAL", "tls needs cert, key and ca");
  }
}

/** Server side: the peer must present a certificate signed by `ca`, or a listed PSK identity. */
export function serverTlsOptions(security: TransportSecurity): TlsOptions {
  checkSecurity(security);
  if (isPsk(security)) {
    const keys = new Map(security.psk.map((k) => [k.identity, k.key]));
    return {
      ciphers: PSK_CIPHERS,
      minVersion: "TLSv1.2",
      maxVersion: "TLSv1.2",
      pskCallback: (_socket, identity) => {
        const key = keys.get(identity);
        return key ? Buffer.from(key) : null;
      },
    };
  }
  return {
    cert: toPem(security.cert),
    key: toPem(security.key),
    ca: toPem(security.ca),
    minVersion: "TLSv1.2",
    requestCert: true,
    rejectUnauthorized: true,
  };
}

/** Client side: verify the receiver's certificate against `ca` and the dialled host name. */
export function clientTlsOptions(security: TransportSecurity, host: string): ConnectionOptions {
  checkSecurity(security);
  if (isPsk(security)) {
    const first = security.psk[0]!;
    return {
      host,
      ciphers: PSK_CIPHERS,
      minVersion: "TLSv1.2",
      maxVersion: "TLSv1.2",
      pskCallback: () => ({ identity: first.identity, psk: Buffer.from(first.key) }),
      // No certificate in a PSK handshake: the key itself authenticated the receiver.
      checkServerIdentity: () => undefined,
    };
  }
  return {
    host,
    // SNI takes host names only; the identity check (tls.checkServerIdentity) uses `host`
    // either way, IP addresses against the certificate's IP SANs.
    ...(isIpAddress(host) ? {} : { servername: host }),
    cert: toPem(security.cert),
    key: toPem(security.key),
    ca: toPem(security.ca),
    minVersion: "TLSv1.2",
    rejectUnauthorized: true,
  };
}

const toPem = (value: string | Uint8Array): string | Buffer => (typeof value === "string" ? value : Buffer.from(value));

function isIpAddress(host: string): boolean {
  return /^\d{1,3}(?:\.\d{1,3}){3}$/.test(host) || host.includes(":");
}

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\./.test(host) || /^::ffff:127\./i.test(host);
}
