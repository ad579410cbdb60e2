//! The native downloader (`download::engine` with `UreqClient` + `DirStore`, and the
//! `qwen-layered fetch` command) against the real mock Hugging Face host
//! (`tests/mock-hf/server.mjs`, started here on a free port with its CDN on a second origin),
//! with every fault the mock injects. Each case ends in a verified file or a specific error,
//! and never leaves an unverified file where a verified one belongs. Needs `node` (20+).

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qwen_layered_web::download::native::{DirStore, UreqClient};
use qwen_layered_web::download::{
    DownloadError, DownloadOptions, DownloadPlan, DownloadReport, Progress, Session, SourceSpec,
    discover, download_plan,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const REPO: &str = "test/qwen-image-layered-tiny";
const TRANSFORMER: &str = "transformer/diffusion_pytorch_model.safetensors";
const VAE: &str = "vae/diffusion_pytorch_model.safetensors";

/// The mock hub as a child process; killed on drop.
struct MockHf {
    child: Child,
    url: String,
}

impl MockHf {
    fn start(faults: &str) -> Self {
        Self::start_with(&[], faults)
    }

    /// With more arguments for the server (`--root DIR --repo owner/name`: serve a folder).
    fn start_with(args: &[&str], faults: &str) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("node")
            .arg(root.join("tests/mock-hf/server.mjs"))
            .args(args)
            .args(["--port", "0", "--cdn-port", "0", "--faults", faults])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs tests/mock-hf/server.mjs (install Node.js 20+)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().to_owned();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "mock hub printed {line:?}"
        );
        Self { child, url }
    }

    fn stats(&self) -> Value {
        let body = ureq::get(format!("{}/__control/stats", self.url))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }

    fn set_faults(&self, faults: &str) {
        ureq::post(format!("{}/__control/faults", self.url))
            .header("Content-Type", "application/json")
            .send(faults)
            .unwrap();
    }

    /// `(start, end)` of every GET that served bytes of `path` (`None` = no Range header).
    fn ranges(&self, path: &str) -> Vec<Option<(u64, u64)>> {
        self.ranges_in(REPO, path)
    }

    /// [`ranges`](Self::ranges) of a file of `repo`.
    fn ranges_in(&self, repo: &str, path: &str) -> Vec<Option<(u64, u64)>> {
        let stats = self.stats();
        let Some(ranges) = stats["files"][format!("{repo}/{path}")]["ranges"]
            .as_array()
            .cloned()
        else {
            return Vec::new();
        };
        ranges
            .iter()
            .map(|r| {
                r.as_object()
                    .map(|o| (o["start"].as_u64().unwrap(), o["end"].as_u64().unwrap()))
            })
            .collect()
    }

    fn file_requests(&self, path: &str) -> u64 {
        self.stats()["files"][format!("{REPO}/{path}")]["requests"]
            .as_u64()
            .unwrap_or(0)
    }

    fn spec(&self) -> SourceSpec {
        let mut spec = SourceSpec::new(REPO);
        spec.base_url = self.url.clone();
        spec
    }
}

impl Drop for MockHf {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fetch")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

struct Run {
    plan: DownloadPlan,
    store: DirStore,
    result: Result<DownloadReport, DownloadError>,
    last: Option<Progress>,
}

fn run_with(hf: &MockHf, dir: &Path, options: DownloadOptions, cancel_after: Option<u64>) -> Run {
    let client = UreqClient::new();
    let plan = pollster::block_on(discover(&client, &hf.spec(), &options)).expect("plan");
    let store = DirStore::new(dir);
    let last = std::cell::RefCell::new(None::<Progress>);
    let done = Cell::new(0u64);
    let on_progress = |p: &Progress| {
        done.set(p.done_bytes);
        *last.borrow_mut() = Some(p.clone());
    };
    let cancelled = || cancel_after.is_some_and(|n| done.get() >= n);
    let session = Session::new(&plan, options, &on_progress, &cancelled);
    let result = pollster::block_on(download_plan(&client, &store, &plan, &session));
    Run {
        plan,
        store,
        result,
        last: last.into_inner(),
    }
}

fn run(hf: &MockHf, dir: &Path) -> Run {
    run_with(hf, dir, DownloadOptions::for_tests(), None)
}

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every file of the plan is committed and hashes to the tree listing's LFS oid; nothing
/// partial is left behind.
fn assert_complete(hf: &MockHf, run: &Run) {
    let report = run
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("download failed: {e}"));
    assert_eq!(report.files.len(), run.plan.files.len());
    let tree: Value = serde_json::from_str(
        &ureq::get(format!(
            "{}/api/models/{REPO}/tree/main?recursive=true",
            hf.url
        ))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap(),
    )
    .unwrap();
    let dir = run.store.model_dir(&run.plan);
    for entry in tree
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "file")
    {
        let path = dir.join(entry["path"].as_str().unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            entry["size"].as_u64().unwrap(),
            "{}",
            path.display()
        );
        if let Some(oid) = entry["lfs"]["oid"].as_str() {
            assert_eq!(sha256_file(&path), oid, "{}", path.display());
        }
    }
    assert_no_leftovers(&dir);
    let p = run.last.as_ref().unwrap();
    assert_eq!((p.done_bytes, p.files_done), (p.total_bytes, p.files_total));
}

fn assert_no_leftovers(dir: &Path) {
    for name in files_under(dir) {
        assert!(
            !name.ends_with(".part") && !name.ends_with(".part.json"),
            "left behind: {name}"
        );
    }
}

fn outcome<'a>(run: &'a Run, path: &str) -> &'a qwen_layered_web::download::FileOutcome {
    run.result
        .as_ref()
        .unwrap()
        .files
        .iter()
        .find(|f| f.path == path)
        .unwrap()
}

#[test]
fn a_clean_fetch_is_verified_and_a_second_fetch_downloads_nothing() {
    let hf = MockHf::start("[]");
    let dir = scratch("clean");
    let first = run(&hf, &dir);
    assert_complete(&hf, &first);
    // 3 MiB in 256 KiB chunks: 12 Range requests, contiguous, from 0.
    let ranges = hf.ranges(TRANSFORMER);
    assert_eq!(ranges.len(), 12);
    for (i, r) in ranges.iter().enumerate() {
        assert_eq!(r.unwrap().0, i as u64 * (256 << 10));
    }
    let requests = hf.stats()["requests"].as_u64().unwrap();
    let again = run(&hf, &dir);
    assert!(
        again
            .result
            .as_ref()
            .unwrap()
            .files
            .iter()
            .all(|f| f.already_present)
    );
    // Only the revision and tree API calls: no file bytes.
    assert_eq!(hf.stats()["requests"].as_u64().unwrap(), requests + 2);
}

#[test]
fn a_connection_reset_mid_body_resumes_from_the_bytes_received() {
    let hf = MockHf::start(&format!(
        r#"[{{"path":"{TRANSFORMER}","fault":"reset","afterBytes":100000,"times":1}}]"#
    ));
    let dir = scratch("reset");
    let r = run(&hf, &dir);
    assert_complete(&hf, &r);
    let ranges = hf.ranges(TRANSFORMER);
    let resumed = ranges[1].unwrap().0;
    assert!(
        resumed > 0 && resumed <= 100_000,
        "resumed at {resumed}: not from 0, not past what was sent"
    );
    assert_eq!(outcome(&r, TRANSFORMER).retries, 1);
}

#[test]
fn a_truncated_body_resumes_and_a_short_content_length_is_caught() {
    let hf = MockHf::start(&format!(
        r#"[{{"path":"{TRANSFORMER}","fault":"truncate","afterBytes":50000,"times":2}},
           {{"path":"{VAE}","fault":"wrong-length","delta":-1000,"times":1}}]"#
    ));
    let dir = scratch("truncate");
    let r = run(&hf, &dir);
    assert_complete(&hf, &r);
    let t = hf.ranges(TRANSFORMER);
    assert_eq!(t[1].unwrap().0, 50_000);
    assert_eq!(t[2].unwrap().0, 100_000);
    // The short body ended 1000 bytes early without any error: the next range starts there.
    let v = hf.ranges(VAE);
    assert_eq!(v[1].unwrap().0, (256 << 10) - 1000);
}

#[test]
fn corrupt_bytes_are_discarded_and_refetched_then_a_persistent_corruption_is_an_integrity_error() {
    let hf = MockHf::start(&format!(
        r#"[{{"path":"{VAE}","fault":"corrupt","at":[1234],"times":1}}]"#
    ));
    let dir = scratch("corrupt");
    let r = run(&hf, &dir);
    assert_complete(&hf, &r);
    assert_eq!(outcome(&r, VAE).integrity_failures, 1);
    // Two full passes from byte 0.
    let starts: Vec<u64> = hf.ranges(VAE).iter().map(|r| r.unwrap().0).collect();
    assert_eq!(starts, [0, 0]);

    let dir = scratch("corrupt-always");
    hf.set_faults(&format!(
        r#"[{{"path":"{VAE}","fault":"corrupt","attempts":"1-"}}]"#
    ));
    let r = run(&hf, &dir);
    match r.result {
        Err(DownloadError::Integrity {
            file,
            attempts,
            algorithm,
            ..
        }) => {
            assert_eq!((file.as_str(), attempts, algorithm), (VAE, 2, "sha256"));
        }
        other => panic!("expected an integrity error, got {other:?}"),
    }
    let vae = r.store.model_dir(&r.plan).join(VAE);
    assert!(!vae.exists(), "an unverified file was committed");
    assert!(
        !PathBuf::from(format!("{}.part", vae.display())).exists(),
        "a corrupt partial file was kept"
    );
}

#[test]
fn an_ignored_range_is_handled_without_corruption() {
    // The first request is cut after 100 kB; every later one ignores Range and sends the
    // whole file (200): the engine skips the bytes it has and takes the rest from that body.
    let hf = MockHf::start(&format!(
        r#"[{{"path":"{TRANSFORMER}","fault":"reset","afterBytes":100000,"attempts":1}},
           {{"path":"{TRANSFORMER}","fault":"ignore-range","attempts":"2-"}}]"#
    ));
    let dir = scratch("ignore-range");
    let r = run(&hf, &dir);
    assert_complete(&hf, &r);
    let t = outcome(&r, TRANSFORMER);
    assert_eq!(t.requests, 2, "the 200 body supplies the rest of the file");
    let stats = hf.stats();
    assert_eq!(
        stats["files"][format!("{REPO}/{TRANSFORMER}")]["statuses"]["200"],
        1
    );
}

#[test]
fn not_found_and_forbidden_are_specific_and_not_retried() {
    let hf = MockHf::start(&format!(
        r#"[{{"path":"{VAE}","stage":"resolve","status":404}}]"#
    ));
    let r = run(&hf, &scratch("404"));
    match &r.result {
        Err(DownloadError::NotFound {
            url, status: 404, ..
        }) => assert!(url.ends_with(VAE), "{url}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(hf.file_requests(VAE), 1);
    let vae = r.store.model_dir(&r.plan).join(VAE);
    assert!(!vae.exists());
    assert!(
        !PathBuf::from(format!("{}.part", vae.display())).exists(),
        "an empty partial file was left"
    );

    hf.set_faults(&format!(
        r#"[{{"path":"{VAE}","stage":"cdn","status":403}}]"#
    ));
    let r = run(&hf, &scratch("403"));
    assert!(
        matches!(&r.result, Err(DownloadError::Forbidden { status: 403, .. })),
        "{:?}",
        r.result
    );
    assert!(
        r.result
            .unwrap_err()
            .to_string()
            .contains("gated or private")
    );

    // A repository that does not exist fails at the listing, with the hub's reason.
    let client = UreqClient::new();
    let mut spec = hf.spec();
    spec.repo = "nobody/nothing".into();
    let err =
        pollster::block_on(discover(&client, &spec, &DownloadOptions::for_tests())).unwrap_err();
    assert!(
        matches!(err, DownloadError::NotFound { status: 404, .. }),
        "{err}"
    );
}

#[test]
fn rate_limits_and_server_errors_are_retried_with_backoff_honouring_retry_after() {
    let hf = MockHf::start(&format!(
        r#"[{{"path":"{VAE}","status":429,"retryAfter":1,"times":2}},
           {{"path":"{TRANSFORMER}","status":500,"times":2}},
           {{"path":"text_encoder/model.safetensors","stage":"cdn","status":503,"times":1}}]"#
    ));
    let t0 = Instant::now();
    let r = run(&hf, &scratch("retry"));
    assert_complete(&hf, &r);
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "two Retry-After: 1 waits, took {:?}",
        t0.elapsed()
    );
    assert_eq!(outcome(&r, VAE).retries, 2);
    assert_eq!(outcome(&r, TRANSFORMER).retries, 2);

    // A server that never recovers: a bounded number of attempts, then a clear error.
    hf.set_faults(&format!(r#"[{{"path":"{VAE}","status":503}}]"#));
    let r = run(&hf, &scratch("retry-forever"));
    match r.result {
        Err(DownloadError::Unavailable {
            status: 503,
            attempts,
            ..
        }) => assert_eq!(attempts, 5),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn a_redirect_loop_is_a_clear_error() {
    let hf = MockHf::start(&format!(
        r#"[{{"path":"{VAE}","stage":"resolve","fault":"redirect-loop"}}]"#
    ));
    let r = run(&hf, &scratch("loop"));
    match r.result {
        Err(DownloadError::RedirectLoop { hops, .. }) => assert_eq!(hops, 11),
        other => panic!("expected RedirectLoop, got {other:?}"),
    }
}

#[test]
fn a_slow_or_delayed_server_still_completes_with_a_measured_rate() {
    let hf = MockHf::start(&format!(
        r#"[{{"path":"{TRANSFORMER}","method":"GET","fault":"slow","bytesPerSec":400000,"maxMs":300,"times":2}},
           {{"path":"{VAE}","fault":"delay","delayMs":300,"times":1}}]"#
    ));
    let r = run(&hf, &scratch("slow"));
    assert_complete(&hf, &r);
    assert!(r.last.unwrap().rate_bytes_per_s > 0.0);
}

#[test]
fn an_interrupted_download_resumes_from_its_durable_offset() {
    let hf = MockHf::start("[]");
    let dir = scratch("interrupted");
    let options = DownloadOptions {
        parallel_files: 1,
        ..DownloadOptions::for_tests()
    };
    // Stop (like a killed process or a closed tab) once 1.5 MB are in.
    let r = run_with(&hf, &dir, options.clone(), Some(1_500_000));
    assert!(
        matches!(r.result, Err(DownloadError::Cancelled)),
        "{:?}",
        r.result
    );
    let partial: Vec<_> = std::fs::read_dir(r.store.model_dir(&r.plan).join("transformer"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        partial.iter().any(|n| n.ends_with(".part.json")),
        "{partial:?}"
    );
    let before = hf.ranges(TRANSFORMER).len();
    let again = run_with(&hf, &dir, options, None);
    assert_complete(&hf, &again);
    let t = outcome(&again, TRANSFORMER);
    assert!(t.resumed_from > 0);
    assert_eq!(
        hf.ranges(TRANSFORMER)[before].unwrap().0,
        t.resumed_from,
        "the first new request starts at the saved offset"
    );
    assert_eq!(t.bytes_fetched, t.size - t.resumed_from);
}

#[test]
fn the_fetch_command_downloads_a_verified_model_folder() {
    let hf = MockHf::start(&format!(
        r#"[{{"path":"{TRANSFORMER}","fault":"reset","afterBytes":300000,"times":1}}]"#
    ));
    let dir = scratch("cli");
    let out = Command::new(env!("CARGO_BIN_EXE_qwen-layered"))
        .args(["fetch", REPO, "--base-url", &hf.url, "--dir"])
        .arg(&dir)
        .args(["--components", "transformer,vae", "--chunk-mib", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let model = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(model.starts_with(&dir));
    assert!(
        model.join(TRANSFORMER).is_file()
            && model.join(VAE).is_file()
            && model.join("model_index.json").is_file()
    );
    assert!(
        !model.join("text_encoder").exists(),
        "--components leaves other folders out"
    );
    assert!(stderr.contains("all verified"), "{stderr}");
    let t = hf.ranges(TRANSFORMER);
    assert_eq!(t[1].unwrap().0, 300_000, "resumed after the reset");

    let out = Command::new(env!("CARGO_BIN_EXE_qwen-layered"))
        .args(["fetch", "nobody/nothing", "--base-url", &hf.url, "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found (HTTP 404)"));
}

/// Copies the folder `from` into `to` (created), leaving out the files `skip` names (relative
/// paths).
fn copy_tree(from: &Path, to: &Path, skip: &[&str]) {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        std::fs::create_dir_all(to.join(&rel)).unwrap();
        for e in std::fs::read_dir(from.join(&rel)).unwrap().flatten() {
            let rel = rel.join(e.file_name());
            if e.path().is_dir() {
                stack.push(rel);
            } else if !skip.iter().any(|s| Path::new(s) == rel) {
                std::fs::copy(e.path(), to.join(&rel)).unwrap();
            }
        }
    }
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// `fetch --precision q4 --text-precision q4` keeps the transformer and the text encoder as
/// their stored 4-bit copies, made shard by shard as the checkpoints arrive (planned from the
/// headers read from the hub by range requests), so the disk never holds a whole checkpoint
/// beside its copy, and each shard goes once the copy holds it. A run that fails on the second
/// transformer shard keeps the partial copy; the next run goes on from it without fetching the
/// first shard again. The copies are byte for byte the ones written in one go from the whole
/// checkpoint, and `decompose` runs from the fetched folder alone (checkpoints gone) with the
/// layers of quantizing the fixture model at load.
#[test]
fn the_fetch_command_keeps_4_bit_copies_made_as_the_shards_arrive_and_decompose_reads_them() {
    use qwen_layered_web::model::stored_copy_layout;
    use qwen_layered_web::weights::{
        DirSource, Precision, SafetensorsFolder, stored_copy_path, write_quantized,
    };

    const REAL: &str = "test/tiny-real";
    let root = scratch("copies");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model");
    let served = root.join("hub");
    copy_tree(
        &model,
        &served,
        &["transformer/diffusion_pytorch_model.safetensors"],
    );
    let [first, second] = crate::common::write_sharded_transformer(&served);
    // The second shard comes corrupt (a flipped byte past its header) until the faults are
    // cleared: its download fails verification every time.
    let faults = format!(r#"[{{"path":"{second}","fault":"corrupt","at":150000}}]"#);
    let hf = MockHf::start_with(
        &["--root", &served.display().to_string(), "--repo", REAL],
        &faults,
    );
    let dir = root.join("cache");
    // `copies`: with `--precision q4 --text-precision q4`; `free`: the disk space counted on.
    let fetch_with = |copies: bool, free: Option<u64>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qwen-layered"));
        cmd.args(["fetch", REAL, "--base-url", &hf.url, "--dir"])
            .arg(&dir)
            .args(["--chunk-mib", "1"]);
        if copies {
            cmd.args(["--precision", "q4", "--text-precision", "q4"]);
        }
        if let Some(free) = free {
            cmd.env("QWEN_LAYERED_DISK_FREE", free.to_string());
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{stderr}");
        (out, stderr)
    };
    let fetch = || fetch_with(true, None);
    // Refused up front when the disk cannot hold the peak, with the numbers: the copies need
    // less room than the whole checkpoints.
    let needed = |copies: bool, free: u64| {
        let (out, log) = fetch_with(copies, Some(free));
        assert_eq!(out.status.code(), Some(1), "{log}");
        let what = match copies {
            true => "at the peak: the stored copies and one checkpoint shard at a time",
            false => "for the files still missing",
        };
        assert!(
            log.contains(what) && log.contains("give --dir on another disk"),
            "{log}"
        );
        let (before, _) = log
            .split_once(" bytes) more are needed")
            .expect("the numbers");
        before.rsplit('(').next().unwrap().parse::<u64>().unwrap()
    };
    let peak = needed(true, 1000);
    let whole = needed(false, 1000);
    // A dry run says the same numbers and fetches nothing (the headers only, to plan).
    let dry = Command::new(env!("CARGO_BIN_EXE_qwen-layered"))
        .args(["fetch", REAL, "--base-url", &hf.url, "--dir"])
        .arg(&dir)
        .args(["--precision", "q4", "--text-precision", "q4", "--dry-run"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&dry.stderr);
    assert!(dry.status.success(), "{log}");
    assert!(
        log.contains(&format!("({whole} bytes) to fetch; "))
            && log.contains(&format!("({peak} bytes) more on the disk at the peak"))
            && log.contains("nothing fetched"),
        "{log}"
    );
    let room = peak + peak / 20 + 1;
    assert!(
        room < whole,
        "copies {peak} bytes at the peak, whole {whole}"
    );
    assert_eq!(needed(false, room), whole);
    assert!(files_under(&dir).is_empty(), "{:?}", files_under(&dir));
    let transformer_copy = stored_copy_path("transformer", Precision::Q4).unwrap();
    let text_copy = stored_copy_path("text_encoder", Precision::Q4).unwrap();

    let (out, first_log) = fetch_with(true, Some(room));
    assert_eq!(out.status.code(), Some(1), "{first_log}");
    let stderr = first_log.clone();
    assert!(
        stderr.contains(&second) && stderr.contains("sha256"),
        "{stderr}"
    );
    let commit_dirs: Vec<_> = std::fs::read_dir(dir.join(REAL))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(commit_dirs.len(), 1);
    let local = commit_dirs[0].path();
    let commit = commit_dirs[0].file_name().to_string_lossy().into_owned();
    let held = files_under(&local);
    // The text encoder's copy is whole and its checkpoint gone; the transformer's copy holds
    // the first shard (gone too) and waits, uncommitted, for the second.
    assert!(held.contains(&text_copy), "{held:?}");
    assert!(
        !held.contains(&"text_encoder/model.safetensors".to_owned()),
        "{held:?}"
    );
    assert!(
        held.contains(&format!("{transformer_copy}.part")),
        "{held:?}"
    );
    assert!(!held.contains(&transformer_copy), "{held:?}");
    assert!(
        !held.contains(&first) && !held.iter().any(|f| f.starts_with(&second)),
        "{held:?}"
    );
    // The other files come after the copies (the order the peak is counted in).
    assert!(!held.contains(&VAE.to_owned()), "{held:?}");
    let first_requests = hf.ranges_in(REAL, &first).len();

    hf.set_faults("[]");
    let (out, stderr) = fetch();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("going on from byte"), "{stderr}");
    assert_eq!(
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        local
    );
    // The first shard: its header read again to plan the copy, its tensors not fetched again.
    let size = |p: &str| std::fs::metadata(served.join(p)).unwrap().len();
    let again: Vec<_> = hf.ranges_in(REAL, &first)[first_requests..].to_vec();
    assert!(
        again
            .iter()
            .all(|r| r.is_some_and(|(a, b)| b - a + 1 < size(&first) / 4)),
        "{again:?}"
    );
    let held = files_under(&local);
    assert!(
        held.contains(&transformer_copy) && held.contains(&text_copy),
        "{held:?}"
    );
    assert!(
        !held
            .iter()
            .any(|f| f.ends_with(".safetensors") && !f.starts_with("vae/")),
        "no checkpoint shard is left: {held:?}"
    );
    assert_no_leftovers(&local);
    // Each copy is the one written in one go from the whole checkpoint.
    let hub = DirSource::new(&served);
    for (component, copy) in [
        ("transformer", &transformer_copy),
        ("text_encoder", &text_copy),
    ] {
        let folder = pollster::block_on(SafetensorsFolder::open(&hub, component)).unwrap();
        let origin = format!("{REAL}@{commit}");
        let layout = stored_copy_layout(component, &folder, Precision::Q4, &origin).unwrap();
        let hash = pollster::block_on(write_quantized(
            &hub,
            &layout,
            None,
            async |_: &[u8]| Ok(()),
            |_, _| {},
        ))
        .unwrap();
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sha256_file(&local.join(copy)), hex, "{copy}");
        let log = if component == "transformer" {
            &stderr
        } else {
            &first_log
        };
        assert!(log.contains(&format!("{copy} written")), "{log}");
    }

    // `decompose` from the fetched folder reads both copies, and gives the layers of the
    // fixture model quantized at load.
    let image = model
        .parent()
        .unwrap()
        .join("a_lin_cfgnorm_l3_s3_64/input.png");
    let decompose = |model: &Path, out: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_qwen-layered"))
            .args(["decompose", "--model"])
            .arg(model)
            .arg("--image")
            .arg(&image)
            .args(["--prompt", "a red square", "--seed", "3", "--layers", "2"])
            .args(["--steps", "2", "--resolution", "64"])
            .args(["--precision", "q4", "--text-precision", "q4", "--out"])
            .arg(out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let from_copies = root.join("out-copies");
    let at_load = root.join("out-at-load");
    let log = decompose(&local, &from_copies);
    assert!(
        log.contains("transformer: read from the stored copy")
            && log.contains("text encoder: read from the stored copy"),
        "{log}"
    );
    decompose(&model, &at_load);
    let layers = files_under(&from_copies);
    assert!(!layers.is_empty());
    assert_eq!(layers, files_under(&at_load));
    for f in &layers {
        assert!(
            std::fs::read(from_copies.join(f)).unwrap() == std::fs::read(at_load.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

/// `HubSource` (what `fetch --precision` plans its copies with) reads exact byte ranges from
/// the hub through the CDN redirect: a server that ignores the Range header (200 with the whole
/// file) still gives the asked bytes, a body cut short is asked again, and a range past the
/// end or a file the plan does not list is an error naming it.
#[test]
fn the_hub_source_reads_exact_ranges_through_faults() {
    use qwen_layered_web::download::HubSource;
    use qwen_layered_web::weights::WeightSource;

    let hf = MockHf::start(&format!(
        r#"[{{"path":"{VAE}","fault":"ignore-range","times":1}},
            {{"path":"{TRANSFORMER}","fault":"reset","afterBytes":10,"times":1}}]"#
    ));
    let client = UreqClient::new();
    let options = DownloadOptions::for_tests();
    let plan = pollster::block_on(discover(&client, &hf.spec(), &options)).expect("plan");
    let hub = HubSource::new(&client, &plan, options);
    let read = |file: &str, offset: u64, len: u64| pollster::block_on(hub.read(file, offset, len));

    let ignored = read(VAE, 1000, 64).expect("through an ignored range");
    let exact = read(VAE, 1000, 64).expect("ranged");
    assert_eq!(ignored, exact);
    assert_eq!(hf.ranges(VAE), [None, Some((1000, 1063))]);

    let retried = read(TRANSFORMER, 5000, 100).expect("asked again after the reset");
    assert_eq!(retried.len(), 100);
    assert_eq!(retried, read(TRANSFORMER, 5000, 100).unwrap());
    assert!(hf.ranges(TRANSFORMER).len() >= 3);

    let size = pollster::block_on(hub.size(VAE)).unwrap();
    let err = read(VAE, size - 10, 20)
        .expect_err("past the end")
        .to_string();
    assert!(
        err.contains(VAE) && err.contains("runs past its end"),
        "{err}"
    );
    let err = read("nothing/here.bin", 0, 1)
        .expect_err("unlisted")
        .to_string();
    assert!(err.contains("not in the file list"), "{err}");
    assert!(!pollster::block_on(hub.exists("nothing/here.bin")).unwrap());
}

/// `fetch --files` keeps only the files its patterns match (as a registry entry picks them:
/// one GGUF file of a repository holding every quantization, say); a pattern that matches
/// nothing is an error naming it, before anything is fetched.
#[test]
fn the_fetch_command_fetches_only_the_files_asked_for() {
    let hf = MockHf::start("[]");
    let dir = scratch("files");
    let fetch = |files: &str| {
        Command::new(env!("CARGO_BIN_EXE_qwen-layered"))
            .args(["fetch", REPO, "--base-url", &hf.url, "--dir"])
            .arg(&dir)
            .args(["--files", files])
            .output()
            .unwrap()
    };
    let out = fetch("vae/*.safetensors,model_index.json");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let model = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(files_under(&model), ["model_index.json", VAE]);
    assert!(
        hf.ranges(TRANSFORMER).is_empty(),
        "nothing else was fetched"
    );

    let out = fetch("vae/*,*.gguf");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("--files: no file of {REPO}@"))
            && stderr.contains("matches \"*.gguf\""),
        "{stderr}"
    );
}
