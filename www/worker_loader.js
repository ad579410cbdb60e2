// Starts the worker's wasm (Trunk builds `worker.js` + `worker_bg.wasm` with stable names,
// wasm-bindgen "no-modules" style). The page starts the worker from a `blob:` URL (so that its
// Content-Security-Policy binds the worker too) that sets `self.QLW_BASE`, the app's folder,
// and imports this script: relative paths would resolve against the blob URL, so they are
// made absolute from that base (or from this script's own URL when started directly).
const base = self.QLW_BASE || self.location.href;
importScripts(new URL("./worker.js", base).href);
wasm_bindgen(new URL("./worker_bg.wasm", base).href);
