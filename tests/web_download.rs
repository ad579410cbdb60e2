//! The browser downloader (`web::download` + `web::opfs`) in a dedicated worker of headless
//! Chromium, against the real mock Hugging Face host (`tests/mock-hf/server.mjs`), which
//! `scripts/test.sh` starts on 127.0.0.1:18090 with its CDN on a second origin (:18091), like
//! the real hub's cross-origin redirect. Every fault the mock can inject is exercised; each case
//! ends in a verified, committed file read back through `OpfsSource`, or a specific error with
//! no entry left in OPFS. Storage-full cannot come from a server: that case uses the store's
//! test-only byte budget (`OpfsStore::with_simulated_quota`).
//!
//! By hand: `node tests/mock-hf/server.mjs --port 18090 --cdn-port 18091 &` then
//! `wasm-pack test --headless --chrome --test web_download` (set `MOCK_HF_URL` at build time for
//! another address).
#![cfg(target_arch = "wasm32")]

use std::cell::{Cell, RefCell};

use qwen_layered_web::download::{
    Check, DownloadError, DownloadOptions, DownloadPlan, DownloadReport, FileOutcome, Progress,
    Session, SourceSpec, Store, discover, download_plan,
};
use qwen_layered_web::web::download::FetchClient;
use qwen_layered_web::web::opfs::{
    OpfsSource, OpfsStore, StorageStatus, check_quota, delete_cached, delete_folder, list_cached,
    storage_status,
};
use qwen_layered_web::weights::WeightSource;
use serde_json::Value;
use sha2::{Digest, Sha256};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

const MOCK: &str = match option_env!("MOCK_HF_URL") {
    Some(url) => url,
    None => "http://127.0.0.1:18090",
};
const REPO: &str = "test/qwen-image-layered-tiny";
const TRANSFORMER: &str = "transformer/diffusion_pytorch_model.safetensors";
const VAE: &str = "vae/diffusion_pytorch_model.safetensors";

async fn control(method: &str, path: &str, body: Option<&str>) -> Value {
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    if let Some(b) = body {
        init.set_body(&b.into());
    }
    let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let url = format!("{MOCK}/__control/{path}");
    let resp: web_sys::Response = JsFuture::from(scope.fetch_with_str_and_init(&url, &init))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the mock hub is not reachable at {MOCK} ({e:?}): start it as scripts/test.sh does"
            )
        })
        .unchecked_into();
    let text = JsFuture::from(resp.text().unwrap())
        .await
        .unwrap()
        .as_string()
        .unwrap();
    assert!(resp.ok(), "{method} {url}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Clears the stats and sets the fault rules.
async fn faults(rules: &str) {
    control("POST", "faults", Some(rules)).await;
    control("POST", "reset", None).await;
}

/// `start` of every GET of `path` that served bytes (`None` = no Range).
async fn starts(path: &str) -> Vec<Option<u64>> {
    let stats = control("GET", "stats", None).await;
    stats["files"][format!("{REPO}/{path}")]["ranges"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| r["start"].as_u64())
        .collect()
}

fn spec() -> SourceSpec {
    let mut spec = SourceSpec::new(REPO);
    spec.base_url = MOCK.into();
    spec
}

/// A fresh OPFS folder for one case.
async fn fresh(folder: &str) -> OpfsStore {
    delete_folder(folder).await.unwrap();
    OpfsStore::open_at(folder).await.unwrap()
}

struct Run {
    plan: DownloadPlan,
    result: Result<DownloadReport, DownloadError>,
    last: Option<Progress>,
}

async fn run_with(store: &OpfsStore, options: DownloadOptions, cancel_after: Option<u64>) -> Run {
    let plan = discover(&FetchClient, &spec(), &options)
        .await
        .expect("the tree listing");
    let last = RefCell::new(None::<Progress>);
    let done = Cell::new(0u64);
    let on_progress = |p: &Progress| {
        done.set(p.done_bytes);
        *last.borrow_mut() = Some(p.clone());
    };
    let cancelled = || cancel_after.is_some_and(|n| done.get() >= n);
    let session = Session::new(&plan, options, &on_progress, &cancelled);
    let result = download_plan(&FetchClient, store, &plan, &session).await;
    Run {
        plan,
        result,
        last: last.into_inner(),
    }
}

async fn run(store: &OpfsStore) -> Run {
    run_with(store, DownloadOptions::for_tests(), None).await
}

fn outcome<'a>(run: &'a Run, path: &str) -> &'a FileOutcome {
    run.result
        .as_ref()
        .unwrap()
        .files
        .iter()
        .find(|f| f.path == path)
        .unwrap()
}

/// Every file is committed and, read back through `OpfsSource` in ranges, hashes to the
/// listing's sha256; the cache manager lists it complete with nothing partial.
async fn assert_complete(folder: &str, run: &Run) {
    let report = run
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("download failed: {e}"));
    assert_eq!(report.files.len(), run.plan.files.len());
    let source = OpfsSource::open(folder, run.plan.clone()).await.unwrap();
    for f in &run.plan.files {
        assert!(
            source.exists(&f.path).await.unwrap(),
            "{} not committed",
            f.path
        );
        assert_eq!(source.size(&f.path).await.unwrap(), f.size);
        if let Check::Sha256(expected) = &f.check {
            let mut h = Sha256::new();
            let mut off = 0;
            while off < f.size {
                let n = (f.size - off).min(1 << 20);
                h.update(source.read(&f.path, off, n).await.unwrap());
                off += n;
            }
            let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(&got, expected, "{}", f.path);
        }
    }
    let cached = list_cached(folder).await.unwrap();
    assert_eq!(cached.len(), 1);
    assert_eq!(cached[0].partial_bytes, 0, "{:?}", cached[0].files);
    assert_eq!(cached[0].complete_bytes, run.plan.total_bytes());
    let p = run.last.as_ref().unwrap();
    assert_eq!((p.done_bytes, p.files_done), (p.total_bytes, p.files_total));
}

/// `path` has no entry at all: not served, no data, no resume state.
async fn assert_absent(folder: &str, store: &OpfsStore, plan: &DownloadPlan, path: &str) {
    let f = plan.files.iter().find(|f| f.path == path).unwrap();
    assert!(!store.is_committed(plan, f).await.unwrap());
    assert_eq!(store.present_bytes(plan, f).await.unwrap(), 0);
    let source = OpfsSource::open(folder, plan.clone()).await.unwrap();
    assert!(!source.exists(path).await.unwrap());
    assert!(
        source.read(path, 0, 1).await.is_err(),
        "an unverified file was served"
    );
    for model in list_cached(folder).await.unwrap() {
        assert!(
            !model.files.iter().any(|c| c.path == path),
            "left in OPFS: {:?}",
            model.files
        );
    }
}

#[wasm_bindgen_test]
async fn a_clean_download_lands_verified_in_opfs_and_is_not_fetched_twice() {
    faults("[]").await;
    let store = fresh("t-clean").await;
    let first = run(&store).await;
    assert_complete("t-clean", &first).await;
    let expected: Vec<Option<u64>> = (0..12).map(|i| Some(i * (256 << 10))).collect();
    assert_eq!(
        starts(TRANSFORMER).await,
        expected,
        "3 MiB in 256 KiB Range requests, in order"
    );
    control("POST", "reset", None).await;
    let again = run(&OpfsStore::open_at("t-clean").await.unwrap()).await;
    assert!(
        again
            .result
            .unwrap()
            .files
            .iter()
            .all(|f| f.already_present)
    );
    assert!(
        starts(TRANSFORMER).await.is_empty(),
        "no file bytes fetched again"
    );
    // After a reload, offline: the commit records alone describe the cached model.
    let cached = OpfsSource::open_cached("t-clean", REPO, &first.plan.revision)
        .await
        .unwrap();
    let key = |f: &qwen_layered_web::download::FilePlan| (f.path.clone(), f.size, f.check.clone());
    let listed: Vec<_> = cached.files().iter().map(key).collect();
    let planned: Vec<_> = first.plan.files.iter().map(key).collect();
    assert_eq!(listed, planned);
    let transformer = first
        .plan
        .files
        .iter()
        .find(|f| f.path == TRANSFORMER)
        .unwrap();
    assert_eq!(cached.size(TRANSFORMER).await.unwrap(), transformer.size);
    // The safetensors header length (u64 LE) is readable by range, like the loader reads it.
    let header = cached.read(TRANSFORMER, 0, 8).await.unwrap();
    let n = u64::from_le_bytes(header.try_into().unwrap());
    assert!(n > 0 && n < transformer.size, "header length {n}");
    // The cache manager deletes it.
    delete_cached("t-clean", REPO, Some(&first.plan.revision))
        .await
        .unwrap();
    assert!(list_cached("t-clean").await.unwrap().is_empty());
}

#[wasm_bindgen_test]
async fn resets_truncations_and_short_bodies_resume_from_the_bytes_received() {
    faults(&format!(
        r#"[{{"path":"{TRANSFORMER}","fault":"reset","afterBytes":100000,"times":1}},
           {{"path":"text_encoder/model.safetensors","fault":"truncate","afterBytes":50000,"times":1}},
           {{"path":"{VAE}","fault":"wrong-length","delta":-1000,"times":1}}]"#
    ))
    .await;
    let store = fresh("t-resume").await;
    let r = run(&store).await;
    assert_complete("t-resume", &r).await;
    // Chromium may drop bytes it had queued when the body stream errors, so after a reset or a
    // truncation the resume point is at most what the server sent (it never skips bytes).
    let t = starts(TRANSFORMER).await;
    assert!(
        t.len() >= 2 && t[1].unwrap() <= 100_000,
        "after a reset: {t:?}"
    );
    let te = starts("text_encoder/model.safetensors").await;
    assert!(
        te.len() >= 2 && te[1].unwrap() <= 50_000,
        "after a truncation: {te:?}"
    );
    // A short Content-Length ends the body cleanly: the next request starts exactly there.
    assert_eq!(
        starts(VAE).await[1],
        Some((256 << 10) - 1000),
        "after a short Content-Length"
    );
    assert_eq!(outcome(&r, VAE).retries, 1);
}

#[wasm_bindgen_test]
async fn corrupt_bytes_are_refetched_and_persistent_corruption_leaves_no_entry() {
    faults(&format!(
        r#"[{{"path":"{VAE}","fault":"corrupt","at":[4321],"times":1}}]"#
    ))
    .await;
    let store = fresh("t-corrupt").await;
    let r = run(&store).await;
    assert_complete("t-corrupt", &r).await;
    assert_eq!(outcome(&r, VAE).integrity_failures, 1);
    assert_eq!(starts(VAE).await, [Some(0), Some(0)]);

    faults(&format!(
        r#"[{{"path":"{VAE}","fault":"corrupt","attempts":"1-"}}]"#
    ))
    .await;
    let store = fresh("t-corrupt2").await;
    let r = run_with(
        &store,
        DownloadOptions {
            parallel_files: 1,
            ..DownloadOptions::for_tests()
        },
        None,
    )
    .await;
    match &r.result {
        Err(DownloadError::Integrity {
            file, attempts: 2, ..
        }) => assert_eq!(file, VAE),
        other => panic!("expected an integrity error, got {other:?}"),
    }
    assert_absent("t-corrupt2", &store, &r.plan, VAE).await;
}

#[wasm_bindgen_test]
async fn an_ignored_range_is_handled_without_corruption() {
    faults(&format!(
        r#"[{{"path":"{TRANSFORMER}","fault":"reset","afterBytes":100000,"attempts":1}},
           {{"path":"{TRANSFORMER}","fault":"ignore-range","attempts":"2-"}}]"#
    ))
    .await;
    let store = fresh("t-ignore").await;
    let r = run(&store).await;
    assert_complete("t-ignore", &r).await;
    assert_eq!(
        outcome(&r, TRANSFORMER).requests,
        2,
        "the 200 body supplies the rest of the file"
    );
    assert_eq!(
        starts(TRANSFORMER).await[1],
        None,
        "the second answer ignored the Range"
    );
}

#[wasm_bindgen_test]
async fn not_found_and_forbidden_are_specific_errors_without_retries() {
    faults(&format!(
        r#"[{{"path":"{VAE}","stage":"resolve","status":404}}]"#
    ))
    .await;
    let store = fresh("t-404").await;
    let r = run(&store).await;
    assert!(
        matches!(&r.result, Err(DownloadError::NotFound { status: 404, .. })),
        "{:?}",
        r.result
    );
    let stats = control("GET", "stats", None).await;
    assert_eq!(
        stats["files"][format!("{REPO}/{VAE}")]["requests"],
        1,
        "no retry"
    );
    assert_absent("t-404", &store, &r.plan, VAE).await;

    faults(&format!(
        r#"[{{"path":"{VAE}","stage":"cdn","status":403}}]"#
    ))
    .await;
    let store = fresh("t-403").await;
    let r = run(&store).await;
    assert!(
        matches!(&r.result, Err(DownloadError::Forbidden { status: 403, .. })),
        "{:?}",
        r.result
    );
    assert_absent("t-403", &store, &r.plan, VAE).await;
}

#[wasm_bindgen_test]
async fn rate_limits_and_server_errors_are_retried_honouring_retry_after() {
    faults(&format!(
        r#"[{{"path":"{VAE}","status":429,"retryAfter":1,"times":2}},
           {{"path":"{TRANSFORMER}","status":500,"times":2}},
           {{"path":"text_encoder/model.safetensors","stage":"cdn","status":503,"times":1}}]"#
    ))
    .await;
    let store = fresh("t-retry").await;
    let t0 = js_sys::Date::now();
    let r = run(&store).await;
    assert_complete("t-retry", &r).await;
    assert!(
        js_sys::Date::now() - t0 >= 2000.0,
        "two Retry-After: 1 waits"
    );
    assert_eq!(outcome(&r, VAE).retries, 2);
    assert_eq!(outcome(&r, TRANSFORMER).retries, 2);

    faults(&format!(r#"[{{"path":"{VAE}","status":503}}]"#)).await;
    let store = fresh("t-retry2").await;
    let r = run(&store).await;
    assert!(
        matches!(
            &r.result,
            Err(DownloadError::Unavailable {
                status: 503,
                attempts: 5,
                ..
            })
        ),
        "{:?}",
        r.result
    );
    assert_absent("t-retry2", &store, &r.plan, VAE).await;
}

#[wasm_bindgen_test]
async fn a_slow_or_delayed_link_completes_with_a_measured_rate() {
    faults(&format!(
        r#"[{{"path":"{TRANSFORMER}","method":"GET","fault":"slow","bytesPerSec":400000,"maxMs":300,"times":2}},
           {{"path":"{VAE}","fault":"delay","delayMs":300,"times":1}}]"#
    ))
    .await;
    let store = fresh("t-slow").await;
    let r = run(&store).await;
    assert_complete("t-slow", &r).await;
    assert!(r.last.as_ref().unwrap().rate_bytes_per_s > 0.0);
}

#[wasm_bindgen_test]
async fn a_redirect_loop_is_a_clear_error() {
    faults(&format!(
        r#"[{{"path":"{VAE}","stage":"resolve","fault":"redirect-loop"}}]"#
    ))
    .await;
    let store = fresh("t-loop").await;
    let r = run(&store).await;
    match &r.result {
        Err(e @ DownloadError::RedirectLoop { .. }) => {
            assert!(e.to_string().contains("redirect"), "{e}")
        }
        other => panic!("expected RedirectLoop, got {other:?}"),
    }
    assert_absent("t-loop", &store, &r.plan, VAE).await;
}

#[wasm_bindgen_test]
async fn a_closed_tab_resumes_from_the_offset_saved_in_opfs() {
    faults("[]").await;
    let store = fresh("t-closed").await;
    let options = DownloadOptions {
        parallel_files: 1,
        ..DownloadOptions::for_tests()
    };
    let r = run_with(&store, options.clone(), Some(1_500_000)).await;
    assert!(
        matches!(r.result, Err(DownloadError::Cancelled)),
        "{:?}",
        r.result
    );
    // Nothing unverified is listed as complete.
    let listed = list_cached("t-closed").await.unwrap();
    assert!(listed[0].partial_bytes > 0);
    let t = r.plan.files.iter().find(|f| f.path == TRANSFORMER).unwrap();
    let saved = store.present_bytes(&r.plan, t).await.unwrap();
    drop(store);
    // A new page: a new store object, only what OPFS kept.
    let before = starts(TRANSFORMER).await.len();
    let again = run_with(
        &OpfsStore::open_at("t-closed").await.unwrap(),
        options,
        None,
    )
    .await;
    assert_complete("t-closed", &again).await;
    let o = outcome(&again, TRANSFORMER);
    assert!(
        saved > 0 && o.resumed_from == saved,
        "saved {saved}, resumed {}",
        o.resumed_from
    );
    assert_eq!(
        starts(TRANSFORMER).await[before],
        Some(saved),
        "the first new request starts at the saved offset"
    );
    assert_eq!(o.bytes_fetched, o.size - saved);
}

#[wasm_bindgen_test]
async fn storage_full_is_refused_up_front_or_fails_cleanly_mid_write() {
    // Up front: the real estimate is readable; a quota that cannot hold the model is refused
    // with the numbers.
    let status = storage_status().await.unwrap();
    assert!(status.quota > 0);
    let small = StorageStatus {
        persisted: false,
        usage: 1_000_000_000,
        quota: 3_000_000_000,
    };
    let err = check_quota(57_700_000_000, &small).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("57700000000") && text.contains("2000000000") && text.contains("persistent"),
        "{text}"
    );
    assert!(check_quota(1_000_000, &small).is_ok());

    // Mid-write (test-only byte budget, the server cannot fill the disk): a clear error, and
    // the half-written file is gone.
    faults("[]").await;
    let store = fresh("t-quota").await.with_simulated_quota(2_000_000);
    let r = run_with(
        &store,
        DownloadOptions {
            parallel_files: 1,
            ..DownloadOptions::for_tests()
        },
        None,
    )
    .await;
    match &r.result {
        Err(e @ DownloadError::QuotaExceeded { file, .. }) => {
            assert_eq!(file, TRANSFORMER);
            assert!(e.to_string().contains("partial file was removed"), "{e}");
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert_absent("t-quota", &store, &r.plan, TRANSFORMER).await;
}
