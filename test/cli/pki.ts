// A throwaway PKI for the TLS tests, made with openssl in `dir`: two CAs ("ca", "other-ca");
// certificates "receiver" and "sender" (by ca, for 127.0.0.1 and localhost), "elsewhere" (by ca,
// for another host name only) and "intruder" (by other-ca); each as <name>.pem and <name>.key.
// Pre-shared keys: keys.psk (two identities) and wrong.psk (the first identity, another key).
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const ISSUED: Record<string, readonly [ca: string, names: string]> = {
  receiver: ["ca", "IP:127.0.0.1,DNS:localhost"],
  // Signed by the right CA, but for another name: a sender dialling 127.0.0.1 refuses it.
  elsewhere: ["ca", "DNS:elsewhere.example"],
  sender: ["ca", "IP:127.0.0.1,DNS:localhost"],
  intruder: ["other-ca", "IP:127.0.0.1,DNS:localhost"],
};

export function makePki(dir: string): void {
  mkdirSync(dir, { recursive: true });
  const openssl = (...args: string[]): void => void execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const newKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  for (const ca of ["ca", "other-ca"]) openssl("req", "-x509", ...newKey, "-keyout", `${ca}.key`, "-out", `${ca}.pem`, "-days", "2", "-subj", `/CN=${ca}`);
  for (const [name, [ca, names]] of Object.entries(ISSUED)) {
    writeFileSync(join(dir, `${name}.cnf`), `subjectAltName=${names}\n`);
    openssl("req", ...newKey, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
    openssl(
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      `${ca}.pem`,
      "-CAkey",
      `${ca}.key`,
      "-CAcreateserial",
      "-out",
      `${name}.pem`,
      "-days",
      "2",
      "-extfile",
      `${name}.cnf`,
    );
  }
  writeFileSync(join(dir, "keys.psk"), `migstream:${"a5".repeat(32)}\nbackup:${"3c".repeat(16)}\n`);
  writeFileSync(join(dir, "wrong.psk"), `migstream:${"5a".repeat(32)}\n`);
}
