// Baseline for the live-migration benchmark: a plain TCP file copy between two processes, the
// least any transfer of a snapshot must do: read 1 MiB windows with positional reads, send them,
// write them at their offsets on the other side, fsync, answer. No checksums, no framing.
//   node bench/plain-copy.mjs receive <output>          (prints "listening <port>" on stderr)
//   node bench/plain-copy.mjs send <input> <port>
import { closeSync, fstatSync, fsyncSync, openSync, readSync, writeSync } from "node:fs";
import { connect, createServer } from "node:net";

const [mode, path, port] = process.argv.slice(2);
if (mode === "receive") {
  const fd = openSync(path, "w");
  let at = 0;
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    server.close();
    socket.on("data", (chunk) => {
      for (let done = 0; done < chunk.length; ) done += writeSync(fd, chunk, done, chunk.length - done, at + done);
      at += chunk.length;
    });
    socket.on("end", () => {
      fsyncSync(fd);
      closeSync(fd);
      socket.end("OK\n");
    });
  });
  server.listen(0, "127.0.0.1", () => process.stderr.write(`listening ${server.address().port}\n`));
} else {
  const fd = openSync(path, "r");
  const size = fstatSync(fd).size;
  const socket = connect({ host: "127.0.0.1", port: Number(port), allowHalfOpen: true }, async () => {
    for (let at = 0; at < size; at += 1 << 20) {
      const chunk = Buffer.allocUnsafe(Math.min(1 << 20, size - at));
      readSync(fd, chunk, 0, chunk.length, at);
      if (!socket.write(chunk)) await new Promise((resolve) => socket.once("drain", resolve));
    }
    socket.end();
  });
  socket.on("data", (reply) => {
    if (reply.toString() !== "OK\n") process.exit(1);
  });
}
