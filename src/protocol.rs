//! The whole contract between the page (main thread) and the worker (GPU and model).
//!
//! Messages cross `postMessage` as plain JS objects made by `serde-wasm-bindgen`, tagged by
//! `type`, so the browser's devtools show them readably.

use serde::{Deserialize, Serialize};

use crate::gpu::{GpuReport, MatmulCheck};

/// Page → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ToWorker {
    /// Acquire the WebGPU adapter and device, report them, then run the GPU self-test.
    ProbeGpu,
}

/// Worker → page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum FromWorker {
    /// The worker's wasm is loaded and its message handler installed: messages sent before
    /// this one would be lost.
    Ready,
    /// The device Burn computes on.
    Gpu {
        /// Adapter, limits and features.
        report: GpuReport,
    },
    /// This browser has no usable WebGPU; the page stays usable for viewing.
    NoWebGpu {
        /// Why, in words, with what the user can do about it.
        reason: String,
    },
    /// The GPU self-test: a small matmul on the device compared with the CPU backend.
    SelfTest {
        /// What was compared.
        check: MatmulCheck,
        /// Wall time of the test, including shader compilation, in milliseconds.
        millis: f64,
    },
    /// Something failed in the worker; the message is for the user.
    Error {
        /// What failed, with context.
        message: String,
    },
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_by_type() {
        let json = serde_json::to_string(&FromWorker::NoWebGpu { reason: "x".into() }).unwrap();
        assert_eq!(json, r#"{"type":"noWebGpu","reason":"x"}"#);
        let back: ToWorker = serde_json::from_str(r#"{"type":"probeGpu"}"#).unwrap();
        assert_eq!(back, ToWorker::ProbeGpu);
    }
}
