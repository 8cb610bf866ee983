// After tsc: make the CLI entry executable, since npm links bin entries as they are. The Wasm
// core ships once, embedded in dist/core/wasm.generated.js (see docs/ARCHITECTURE.md).
import { chmodSync, existsSync } from "node:fs";

const cli = new URL("../dist/cli/main.js", import.meta.url);
if (existsSync(cli)) chmodSync(cli, 0o755);
