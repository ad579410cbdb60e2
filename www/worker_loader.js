// Starts the worker's wasm (Trunk builds `worker.js` + `worker_bg.wasm` with stable names,
// wasm-bindgen "no-modules" style). Paths are relative to this script, so any base URL works.
importScripts("./worker.js");
wasm_bindgen("./worker_bg.wasm");
