// Errors a person can act on: each names its cause in words and, where there is one, the way out.
// TLS mistakes on either end (OpenSSL's text only with --verbose), a missing input (one code in
// every command), a refused connection, a device id mismatch, a full stream given to apply.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { explainTls } from "../../src/cli/tls-failure.js";
import { makePki } from "./pki.js";
import { finished, makeState, run, start, useTestDir, waitForStderr } from "./helpers.js";

const scratch = useTestDir();
const { at } = scratch;
let pki = "";
const pem = (name: string): string => join(pki, name);
const certs = (name: string, ca = "ca"): string[] => ["--tls-cert", pem(`${name}.pem`), "--tls-key", pem(`${name}.key`), "--tls-ca", pem(`${ca}.pem`)];
const OPENSSL_TEXT = /ssl|SSL routines|ossl_|alert|altnames/;

beforeAll(() => {
  writeFileSync(at("vm.state"), makeState(1 << 20, 5));
  pki = at("pki");
  makePki(pki);
});

/** A receiver on a free loopback port, a sender against it; the receiver's first complaint, if any. */
async function attempt(
  receiverArgs: readonly string[],
  senderArgs: readonly string[],
): Promise<{ sent: Awaited<ReturnType<typeof run>>; receiverSaid: string }> {
  const child = start(["receive", "--listen", "127.0.0.1:0", "-o", at("got.state"), "--timeout", "5", ...receiverArgs]);
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  const done = finished(child, 60_000);
  const port = Number((await waitForStderr(child, /listening on [^\s]+:(\d+)/))[1]);
  const sent = await run(["send", at("vm.state"), "--to", `127.0.0.1:${port}`, "--timeout", "5", ...senderArgs]);
  // The receiver says why it dropped the peer (when it can tell) and keeps listening.
  for (let waited = 0; !/dropped/.test(stderr) && waited < 3_000; waited += 100) await new Promise((r) => setTimeout(r, 100));
  const said = /migstream: dropped [^\n]*\n(hint: [^\n]*\n)?/.exec(stderr)?.[0] ?? "";
  child.kill("SIGTERM");
  await done;
  expect(existsSync(at("got.state"))).toBe(false);
  return { sent, receiverSaid: said };
}

describe("TLS failures name their cause on both ends", () => {
  it("the pre-shared keys differ", { timeout: 120_000 }, async () => {
    const { sent, receiverSaid } = await attempt(["--tls-psk", pem("keys.psk")], ["--tls-psk", pem("wrong.psk")]);
    expect(sent.code).toBe(4);
    expect(sent.stderr).toMatch(/^migstream: EIO: TLS handshake with 127\.0\.0\.1:\d+ failed: the pre-shared keys differ\nhint: use the same --tls-psk file/);
    expect(sent.stderr).not.toMatch(OPENSSL_TEXT);
    expect(receiverSaid).toMatch(/dropped .* before it owned the migration: the pre-shared keys differ\nhint: use the same --tls-psk file/);
    expect(receiverSaid).not.toMatch(OPENSSL_TEXT);
  });

  it("--verbose adds the TLS library's own text, on both ends", { timeout: 120_000 }, async () => {
    const { sent, receiverSaid } = await attempt(["--tls-psk", pem("keys.psk"), "--verbose"], ["--tls-psk", pem("wrong.psk"), "--verbose"]);
    expect(sent.stderr).toMatch(/the pre-shared keys differ \(.*bad record mac.*\)/);
    expect(receiverSaid).toMatch(/the pre-shared keys differ \(.+\)/);
  });

  it("the receiver's certificate is not signed by the CA the sender was given", { timeout: 120_000 }, async () => {
    const { sent } = await attempt(certs("receiver"), certs("sender", "other-ca"));
    expect(sent.code).toBe(4);
    expect(sent.stderr).toMatch(/failed: the receiver's certificate is not signed by the CA given with --tls-ca\nhint: /);
    expect(sent.stderr).not.toMatch(OPENSSL_TEXT);
  });

  it("the receiver's certificate is for another host name", { timeout: 120_000 }, async () => {
    const { sent } = await attempt(certs("elsewhere"), certs("sender"));
    expect(sent.code).toBe(4);
    expect(sent.stderr).toMatch(
      /failed: the receiver's certificate is for another host name\nhint: dial the receiver by a name or address its certificate lists/,
    );
  });

  it("a sender without a certificate (no TLS) at a receiver that wants one", { timeout: 120_000 }, async () => {
    const { sent, receiverSaid } = await attempt(certs("receiver"), []);
    expect(sent.code).toBe(4);
    expect(sent.stderr).toMatch(/hint: if the receiver uses TLS, give send the same TLS options/);
    expect(receiverSaid).toMatch(/before it owned the migration: the sender does not use TLS\nhint: give both ends the same kind of TLS/);
  });

  it("a TLS sender at a receiver without TLS", { timeout: 120_000 }, async () => {
    const { sent, receiverSaid } = await attempt([], ["--tls-psk", pem("keys.psk")]);
    expect(sent.code).toBe(4);
    expect(sent.stderr).toMatch(/failed: the receiver does not use TLS\nhint: give both ends the same kind of TLS/);
    expect(receiverSaid).toMatch(/before it owned the migration: the sender uses TLS and this receiver does not\nhint: give both ends/);
  });

  it("a sender certificate from another CA: the sender is told the receiver may have refused it", { timeout: 120_000 }, async () => {
    const { sent } = await attempt(certs("receiver"), certs("intruder", "ca"));
    expect(sent.code).toBe(4);
    expect(sent.stderr).toMatch(/hint: the receiver may have refused this sender's certificate/);
  });

  it("the library's texts map to causes (the ones the CLI cannot provoke included)", () => {
    const cases: [string, "sender" | "receiver", RegExp][] = [
      ["error:0A0003FC:SSL routines:ssl3_read_bytes:sslv3 alert bad record mac", "sender", /pre-shared keys differ/],
      ["error:1C800066:Provider routines:ossl_gcm_stream_update:cipher operation failed", "receiver", /pre-shared keys differ/],
      ["self-signed certificate in certificate chain", "sender", /receiver's certificate is not signed by the CA/],
      ["unable to verify the first certificate", "sender", /not signed by the CA/],
      ["Hostname/IP does not match certificate's altnames: IP: 127.0.0.1 is not in the cert's list", "sender", /another host name/],
      ["error:0A0000C7:SSL routines:tls_process_client_certificate:peer did not return a certificate", "receiver", /sender presented no certificate/],
      ["error:0A000418:SSL routines:ssl3_read_bytes:tlsv1 alert unknown ca", "sender", /receiver refused this end's certificate/],
      ["error:0A00010B:SSL routines:ssl3_get_record:wrong version number", "receiver", /sender does not use TLS/],
      ["error:0A0000C1:SSL routines:tls_post_process_client_hello:no shared cipher", "receiver", /different kinds of TLS/],
      ["certificate has expired", "sender", /receiver's certificate has expired/],
    ];
    for (const [raw, side, cause] of cases) expect(explainTls(raw, side)?.cause, raw).toMatch(cause);
    expect(explainTls("something else entirely", "sender")).toBeUndefined();
  });
});

describe("a missing input is ENOENT (exit 4) in every command", () => {
  it.each([
    ["encode", ["encode", "missing.state", "-o", "x.mig"], "missing.state"],
    ["diff", ["diff", "missing.state", "vm.state", "-o", "x.mig"], "missing.state"],
    ["decode", ["decode", "missing.mig", "-o", "x.state"], "missing.mig"],
    ["apply (base)", ["apply", "missing.state", "vm.state", "-o", "x.state"], "missing.state"],
    ["apply (stream)", ["apply", "vm.state", "missing.mig", "-o", "x.state"], "missing.mig"],
    ["verify", ["verify", "missing.mig"], "missing.mig"],
    ["inspect", ["inspect", "missing.mig"], "missing.mig"],
    ["send", ["send", "missing.state", "--to", "127.0.0.1:1"], "missing.state"],
  ] as const)("%s", async (_name, args, missing) => {
    const result = await run(args, { cwd: scratch.dir });
    expect(result.code, result.stderr).toBe(4);
    expect(result.stderr).toBe(`migstream: ENOENT: cannot open ${missing}: no such file or directory\n`);
    const json = await run([...args, "--json"], { cwd: scratch.dir });
    expect(JSON.parse(json.stdout.toString())).toMatchObject({ error: { code: "ENOENT", exitCode: 4 } });
  });
});

describe("send says what to do", () => {
  it("nothing listening: a hint to start the receiver", async () => {
    const result = await run(["send", at("vm.state"), "--to", "127.0.0.1:1"]);
    expect(result.code).toBe(4);
    expect(result.stderr).toMatch(/ECONNREFUSED.*\nhint: nothing is listening at 127\.0\.0\.1:1: start migstream receive --listen 1 there first/);
  });

  it("ENODEV: a hint naming the device id the receiver expects", { timeout: 120_000 }, async () => {
    const child = start(["receive", "--listen", "127.0.0.1:0", "-o", at("nic.state"), "--device-id", "nic-b", "--timeout", "5"]);
    const done = finished(child, 60_000);
    const port = Number((await waitForStderr(child, /listening on [^\s]+:(\d+)/))[1]);
    const result = await run(["send", at("vm.state"), "--to", `127.0.0.1:${port}`, "--device-id", "nic-a"]);
    child.kill("SIGTERM");
    await done;
    expect(result.code).toBe(3);
    expect(result.stderr).toMatch(
      /ENODEV: .*\nhint: the receiver expects device id "nic-b": send with --device-id "nic-b", or start receive without --device-id/,
    );
  });
});

describe("apply and truncated streams", () => {
  it("apply refuses a full stream before writing anything, from a file or stdin", async () => {
    await run(["encode", at("vm.state"), "-o", at("full.mig")]);
    const fromFile = await run(["apply", at("vm.state"), at("full.mig"), "-o", at("applied.state")]);
    expect(fromFile.code).toBe(1);
    expect(fromFile.stderr).toMatch(
      /EINVAL: .*full\.mig is a full stream, not an incremental one: apply would ignore the base\nhint: a full stream needs no base: migstream decode/,
    );
    expect(existsSync(at("applied.state"))).toBe(false);
    const fromStdin = await run(["apply", at("vm.state"), "-", "-o", at("applied.state")], { input: readFileSync(at("full.mig")) });
    expect(fromStdin.code).toBe(1);
    expect(fromStdin.stderr).toMatch(/stdin is a full stream/);
    expect(existsSync(at("applied.state"))).toBe(false);
  });

  it("a stream cut inside a record: where it ended and where the record began", async () => {
    await run(["encode", at("vm.state"), "-o", at("cut.mig"), "-f"]);
    const whole = readFileSync(at("cut.mig"));
    const result = await run(["verify", "-"], { input: whole.subarray(0, 300_000) });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/ENODATA: incomplete stream: it ends at byte 300000, inside record \d+ \(which began at byte \d+\)/);
  });
});
