// Starts the page's wasm. An external file (not Trunk's injected inline script) so the
// Content-Security-Policy needs no 'unsafe-inline' and no hashes: see README "Security".
import init from "./app.js";
await init({ module_or_path: "./app_bg.wasm" });
