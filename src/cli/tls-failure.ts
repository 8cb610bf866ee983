// What a failed TLS connection means to the person at either end, in one line with a way out.
// OpenSSL's own text ("sslv3 alert bad record mac", "ossl_gcm_stream_update") names a symptom
// deep in the record layer; the cause behind it is one of a few configuration mistakes. The raw
// text stays available with --verbose.

/** Which end is reading the failure: the one that dials (send) or the one that listens (receive). */
export type TlsSide = "sender" | "receiver";

export interface TlsExplanation {
  /** The cause, said as a person would ("the pre-shared keys differ"). */
  cause: string;
  hint: string;
}

interface Rule {
  pattern: RegExp;
  explain: (side: TlsSide, match: RegExpExecArray) => TlsExplanation;
}

const SAME_OPTIONS = "give both ends the same kind of TLS: --tls-psk with the same file, or --tls-cert/--tls-key/--tls-ca from the same CA";

const RULES: readonly Rule[] = [
  {
    // TLS-PSK with different keys: the handshake's Finished message fails its MAC. The sender
    // reads the receiver's alert; the receiver fails decrypting the sender's record.
    pattern: /bad record mac|decryption failed|ossl_gcm_stream_update|cipher operation failed|decrypt error/i,
    explain: () => ({
      cause: "the pre-shared keys differ",
      hint: "use the same --tls-psk file on both ends (same identity, same key)",
    }),
  },
  {
    pattern: /does not match certificate's altnames|ERR_TLS_CERT_ALTNAME_INVALID/i,
    explain: (side) => ({
      cause: side === "sender" ? "the receiver's certificate is for another host name" : "the certificate is for another host name",
      hint: "dial the receiver by a name or address its certificate lists (subjectAltName), or issue it one for the name you dial",
    }),
  },
  {
    pattern: /peer did not return a certificate|certificate required/i,
    explain: (side) => ({
      cause: side === "sender" ? "the receiver wants a client certificate and this sender gave none" : "the sender presented no certificate",
      hint: "give send --tls-cert, --tls-key and --tls-ca (a certificate signed by the CA the receiver trusts)",
    }),
  },
  {
    // The far end refused our certificate (its alert), whichever end we are.
    pattern: /alert unknown ca|alert bad certificate|alert certificate unknown|alert decrypt error/i,
    explain: (side) => ({
      cause: `the ${side === "sender" ? "receiver" : "sender"} refused this end's certificate: it is not signed by the CA that end trusts`,
      hint: "issue this end's certificate from the CA given to the other end with --tls-ca (or give the other end this CA)",
    }),
  },
  {
    pattern:
      /self[- ]signed certificate|unable to get local issuer|unable to verify the first certificate|certificate signature failure|certificate verify failed|UNABLE_TO_VERIFY_LEAF_SIGNATURE/i,
    explain: (side) => ({
      cause: `the ${side === "sender" ? "receiver" : "sender"}'s certificate is not signed by the CA given with --tls-ca`,
      hint: "give --tls-ca the CA that issued the other end's certificate",
    }),
  },
  {
    pattern: /certificate has expired|certificate is not yet valid/i,
    explain: (side, match) => ({
      cause: `the ${side === "sender" ? "receiver" : "sender"}'s certificate ${/expired/i.test(match[0]) ? "has expired" : "is not valid yet"}`,
      hint: "issue a new certificate (and check both clocks)",
    }),
  },
  {
    // A plain receiver read a TLS record where the stream's magic should be (src/format/header.ts).
    pattern: /starts like a TLS handshake/,
    explain: () => ({ cause: "the sender uses TLS and this receiver does not", hint: SAME_OPTIONS }),
  },
  {
    // One end speaks TLS and the other plain TCP: the TLS end reads a record that is not TLS.
    pattern: /wrong version number|packet length too long|unknown protocol|http request/i,
    explain: (side) => ({
      cause: side === "sender" ? "the receiver does not use TLS" : "the sender does not use TLS",
      hint: SAME_OPTIONS,
    }),
  },
  {
    pattern: /no shared cipher|no suitable signature|unsupported protocol|alert handshake failure|alert protocol version/i,
    explain: () => ({
      cause: "the two ends use different kinds of TLS (pre-shared keys at one, certificates at the other)",
      hint: SAME_OPTIONS,
    }),
  },
  {
    // The peer hung up inside the handshake: the receiver cannot see why, the sender can.
    pattern: /socket hang up|ECONNRESET/i,
    explain: (side) => ({
      cause: "the connection ended during the TLS handshake",
      hint:
        side === "receiver"
          ? "a certificate one end did not accept, or another kind of TLS at the sender: the sender's message names the cause"
          : "the receiver may have refused this end's certificate or TLS kind: its message names the cause",
    }),
  },
];

/** The cause of a TLS failure from the library's text, if it is one this knows. */
export function explainTls(raw: string, side: TlsSide): TlsExplanation | undefined {
  for (const rule of RULES) {
    const match = rule.pattern.exec(raw);
    if (match) return rule.explain(side, match);
  }
  return undefined;
}
