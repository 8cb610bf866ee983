// Before tsc: start dist/ empty, so a file deleted or excluded from the build (a renamed module,
// the reference twins) can never linger in dist/ and be packed.
import { rmSync } from "node:fs";

rmSync(new URL("../dist", import.meta.url), { recursive: true, force: true });
