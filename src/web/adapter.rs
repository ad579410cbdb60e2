//! `navigator.gpu` facts that wgpu 30's WebGPU backend does not expose: `GPUAdapterInfo`'s
//! vendor and architecture, the fallback flag and the adapter's feature names.
//!
//! The adapter is requested with the same power preference Burn's runtime uses
//! (high-performance), so it is the same physical adapter Burn gets.

use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use super::js_error_text;

/// What `requestAdapter()` told us.
#[derive(Debug, Clone, Default)]
pub struct AdapterFacts {
    /// `GPUAdapterInfo.vendor`.
    pub vendor: String,
    /// `GPUAdapterInfo.architecture`.
    pub architecture: String,
    /// `GPUAdapterInfo.description`.
    pub description: String,
    /// `GPUAdapterInfo.isFallbackAdapter` (or the older `GPUAdapter.isFallbackAdapter`).
    pub is_fallback: bool,
    /// `GPUAdapter.features`, sorted.
    pub features: Vec<String>,
}

/// Why there is no adapter, in words for the page.
pub enum NoAdapter {
    /// `navigator.gpu` is missing or `requestAdapter()` returned null.
    Unavailable(String),
    /// A JS call threw.
    Failed(String),
}

fn get(target: &JsValue, key: &str) -> JsValue {
    Reflect::get(target, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

fn get_string(target: &JsValue, key: &str) -> String {
    get(target, key).as_string().unwrap_or_default()
}

/// Requests an adapter from `navigator.gpu` (in a window or a worker) and reads its facts.
pub async fn request_adapter_facts() -> Result<AdapterFacts, NoAdapter> {
    let navigator = get(&js_sys::global(), "navigator");
    let gpu = get(&navigator, "gpu");
    if gpu.is_undefined() || gpu.is_null() {
        return Err(NoAdapter::Unavailable(
            "this browser does not offer WebGPU here (navigator.gpu is missing). Use a current \
             Chrome or Edge, Safari 26+ or Firefox 141+, on a page served over https or from \
             localhost."
                .into(),
        ));
    }
    let request: Function = get(&gpu, "requestAdapter")
        .dyn_into()
        .map_err(|_| NoAdapter::Failed("navigator.gpu.requestAdapter is not a function".into()))?;
    let options = Object::new();
    Reflect::set(
        &options,
        &"powerPreference".into(),
        &"high-performance".into(),
    )
    .map_err(|e| NoAdapter::Failed(js_error_text(&e)))?;
    let promise: Promise = request
        .call1(&gpu, &options)
        .map_err(|e| NoAdapter::Failed(js_error_text(&e)))?
        .dyn_into()
        .map_err(|_| NoAdapter::Failed("requestAdapter() did not return a promise".into()))?;
    let adapter = JsFuture::from(promise).await.map_err(|e| {
        NoAdapter::Failed(format!("requestAdapter() failed: {}", js_error_text(&e)))
    })?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err(NoAdapter::Unavailable(
            "WebGPU is present but no GPU adapter is available (it may be disabled or \
             blocklisted for this GPU; see chrome://gpu)."
                .into(),
        ));
    }
    let info = get(&adapter, "info");
    let fallback = get(&info, "isFallbackAdapter")
        .as_bool()
        .or_else(|| get(&adapter, "isFallbackAdapter").as_bool())
        .unwrap_or(false);
    let mut features = Vec::new();
    if let Ok(Some(iter)) = js_sys::try_iter(&get(&adapter, "features")) {
        features.extend(iter.flatten().filter_map(|v| v.as_string()));
    }
    features.sort();
    Ok(AdapterFacts {
        vendor: get_string(&info, "vendor"),
        architecture: get_string(&info, "architecture"),
        description: get_string(&info, "description"),
        is_fallback: fallback,
        features,
    })
}
