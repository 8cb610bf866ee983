// After tsc: ship the raw module beside the JS (for users who prefer WebAssembly.compileStreaming)
// and make the CLI entry executable, since npm links bin entries as they are.
import { chmodSync, copyFileSync, existsSync } from "node:fs";

copyFileSync(new URL("../build/core.wasm", import.meta.url), new URL("../dist/core.wasm", import.meta.url));
const cli = new URL("../dist/cli/main.js", import.meta.url);
if (existsSync(cli)) chmodSync(cli, 0o755);
