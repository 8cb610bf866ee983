// The page's module script (external: a strict CSP allows no inline script). Runs the suite on
// the main thread, then in a module worker, and leaves both results where the test reads them.
import { runSuite } from "./suite.js";

const mainThread = runSuite("main");
const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
const inWorker = await new Promise((resolve) => {
  worker.onmessage = (event) => resolve(event.data);
  worker.onerror = (event) => resolve({ where: "worker", error: `worker failed to load: ${event.message ?? "error"}` });
});
worker.terminate();
globalThis.migstreamResults = { userAgent: navigator.userAgent, main: mainThread, worker: inWorker };
document.title = "done";
