//! The browser's Web Worker program (GPU and model). Built for wasm32 by Trunk.

#[cfg(target_arch = "wasm32")]
fn main() {
    qwen_layered_web::web::worker::start();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!(
        "`worker` runs in the browser: build and serve the app with `bash scripts/serve.sh` (see README)."
    );
    std::process::exit(2);
}
