//! The Web Worker: owns the GPU device (and, later, the model), so the page never freezes.
//!
//! Protocol: on start it installs its message handler and posts [`FromWorker::Ready`]; the page
//! must not send anything before that (messages sent while the wasm loads are dropped). Every
//! failure is posted as a message; a panic is logged by the panic hook and surfaces in the page
//! through the worker's `error` event.

use std::cell::RefCell;

use burn::tensor::Device;
use burn::tensor::wgpu::WgpuSetup;
use wasm_bindgen::prelude::*;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use super::adapter::{AdapterFacts, NoAdapter, request_adapter_facts};
use super::js_error_text;
use crate::gpu::{FeatureState, GpuReport, KeyLimits, matmul_self_test};
use crate::protocol::{FromWorker, ToWorker};

thread_local! {
    /// The Burn device once acquired. Burn's runtime can be initialised only once per worker.
    static DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
}

/// Size of the self-test matmul: small, so SwiftShader runs it in about a second.
const SELF_TEST: (usize, usize, usize) = (64, 64, 64);

/// Entry point of the `worker` binary.
pub fn start() {
    console_error_panic_hook::set_once();
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(|event: MessageEvent| {
        match serde_wasm_bindgen::from_value::<ToWorker>(event.data()) {
            Ok(message) => wasm_bindgen_futures::spawn_local(handle(message)),
            Err(err) => post(&FromWorker::Error {
                message: format!("the worker got a message it does not understand: {err}"),
            }),
        }
    });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget(); // lives as long as the worker
    post(&FromWorker::Ready);
}

fn post(message: &FromWorker) {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let value = serde_wasm_bindgen::to_value(message)
        .expect("FromWorker holds only strings, numbers, bools and lists");
    if let Err(err) = scope.post_message(&value) {
        web_sys::console::error_1(&format!("postMessage failed: {}", js_error_text(&err)).into());
    }
}

async fn handle(message: ToWorker) {
    match message {
        ToWorker::ProbeGpu => probe_gpu().await,
    }
}

async fn probe_gpu() {
    let facts = match request_adapter_facts().await {
        Ok(facts) => facts,
        Err(NoAdapter::Unavailable(reason)) => return post(&FromWorker::NoWebGpu { reason }),
        Err(NoAdapter::Failed(message)) => {
            return post(&FromWorker::Error {
                message: format!("WebGPU adapter request: {message}"),
            });
        }
    };
    if DEVICE.with(|d| d.borrow().is_some()) {
        return post(&FromWorker::Error {
            message: "the GPU was already initialised in this worker".into(),
        });
    }
    let (device, setup) = match Device::wgpu_options().init_with_setup_async().await {
        Ok(pair) => pair,
        Err(err) => {
            return post(&FromWorker::Error {
                message: format!("Burn could not create a WebGPU device: {err}"),
            });
        }
    };
    DEVICE.with(|d| *d.borrow_mut() = Some(device.clone()));
    post(&FromWorker::Gpu {
        report: report(&facts, &setup),
    });

    let (m, k, n) = SELF_TEST;
    let start = js_sys::Date::now();
    match matmul_self_test(&device, m, k, n, 7).await {
        Ok(check) => post(&FromWorker::SelfTest {
            check,
            millis: js_sys::Date::now() - start,
        }),
        Err(err) => post(&FromWorker::Error {
            message: format!("GPU self-test: {err}"),
        }),
    }
}

/// The page's view of the device: limits and enabled features from the wgpu device Burn uses,
/// names and offered features from `navigator.gpu`.
fn report(facts: &AdapterFacts, setup: &WgpuSetup) -> GpuReport {
    let offered = |name: &str| facts.features.iter().any(|f| f == name);
    let enabled = setup.device.features();
    GpuReport {
        backend: format!("{:?}", setup.backend),
        vendor: facts.vendor.clone(),
        architecture: facts.architecture.clone(),
        description: if facts.description.is_empty() {
            setup.adapter.get_info().name
        } else {
            facts.description.clone()
        },
        is_fallback: facts.is_fallback,
        limits: KeyLimits::from_wgpu(&setup.device.limits()),
        shader_f16: FeatureState::new(
            offered("shader-f16"),
            enabled.contains(wgpu::Features::SHADER_F16),
        ),
        subgroups: FeatureState::new(
            offered("subgroups"),
            enabled.contains(wgpu::Features::SUBGROUP),
        ),
        features: facts.features.clone(),
    }
}
