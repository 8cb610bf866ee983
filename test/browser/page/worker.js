// Module worker: runs the suite off the main thread and posts its result.
import { runSuite } from "./suite.js";

postMessage(runSuite("worker"));
