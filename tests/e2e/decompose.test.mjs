// End-to-end: the served app (dist/) downloads the tiny fixture model (tests/fixtures/model)
// from the mock Hugging Face host (tests/mock-hf, the CDN on a second origin as on the real hub)
// with HTTP range requests into the browser's verified cache (OPFS), loads it from there into
// the worker's WebGPU device, then decomposes a picture and cancels a run. Headless Chromium
// with WebGPU through SwiftShader. tests/e2e/models.test.mjs covers the cache itself (resume
// after a reload, offline use, delete).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { serveStatic } from "./server.mjs";
import { CHROMIUM, BASE_ARGS, WEBGPU_ARGS } from "./chromium.mjs";
import { encodePng } from "./png.mjs";
import { decodePng, readPsd, readZip } from "./formats.mjs";
import { axeViolations } from "./a11y.mjs";
import { startMockHf, loadRepoFromDir } from "../mock-hf/server.mjs";

const here = fileURLToPath(new URL(".", import.meta.url));
const dist = fileURLToPath(new URL("../../dist/", import.meta.url));
const modelDir = fileURLToPath(new URL("../fixtures/model/", import.meta.url));
const artifacts = `${here}artifacts`;
const ARGS = [...BASE_ARGS, ...WEBGPU_ARGS];
const SLOW = 600_000; // SwiftShader compiles each kernel in about a second; a loaded 2-core machine is slow
const TINY = "test/qwen-image-layered-tiny"; // the repo the committed models.json names
const TINY_ID = "tiny-test";

let server, hf, registry;
before(async () => {
  assert.ok(existsSync(`${dist}index.html`), `no ${dist}index.html: run \`trunk build\` first`);
  await mkdir(artifacts, { recursive: true });
  hf = await startMockHf({ repos: { [TINY]: loadRepoFromDir(modelDir) }, cdnOrigin: true });
  // The committed registry, with the dev entry pointed at this run's mock host.
  registry = JSON.parse(await readFile(`${dist}models.json`, "utf8"));
  const tiny = registry.models.find((m) => m.id === TINY_ID);
  assert.ok(tiny && tiny.dev && tiny.repo === TINY, "models.json lists the tiny test model");
  tiny.host = hf.url;
  server = await serveStatic(dist, { "/models.json": JSON.stringify(registry) });
});
after(async () => {
  await server?.close();
  await hf?.close();
});

async function openApp() {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const logs = [];
  page.on("console", (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`[pageerror] ${e.message}`));
  await page.goto(server.url);
  const wait = (selector, timeout = 120_000) => page.waitForSelector(selector, { timeout }).catch((e) => {
    throw new Error(`${e.message}\nconsole:\n${logs.join("\n")}`);
  });
  await wait("body[data-gpu=ready]");
  await wait("body[data-models=ready]");
  return { browser, page, logs, wait };
}

/** Downloads the tiny model into the browser's cache (a fresh browser profile has none). */
async function downloadTiny(page, wait) {
  await page.selectOption("#model-source", TINY_ID);
  await wait("body[data-cache=none], body[data-cache=partial], body[data-cache=cached]");
  if (await page.getAttribute("body", "data-cache") === "cached") return;
  await page.click("#download-model");
  await wait("body[data-download=done], body[data-download=failed]");
}

async function loadTiny(page, wait) {
  await downloadTiny(page, wait);
  assert.equal(await page.getAttribute("body", "data-download"), "done", await page.textContent("#download-status"));
  await wait("body[data-cache=cached]");
  await page.click("#load-model");
  await wait("body[data-model=loaded], body[data-model=failed]", 300_000);
}

/** A deterministic opaque picture. */
function picture(width, height) {
  const rgba = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      rgba.set([(x * 9) & 255, (y * 5) & 255, ((x + y) * 3) & 255, 255], (y * width + x) * 4);
    }
  }
  return encodePng(width, height, rgba);
}

test("the picker lists the tiny model plainly; it downloads over HTTP ranges from the mock hub and loads from the cache", { timeout: SLOW }, async () => {
  const { browser, page, logs, wait } = await openApp();
  try {
    const options = await page.$$eval("#model-source option", (os) => os.map((o) => [o.value, o.textContent]));
    assert.equal(options[0][0], "qwen-image-layered", "the real model is the default");
    const tiny = options.find(([v]) => v === TINY_ID);
    assert.ok(tiny, `the dev model is listed on 127.0.0.1: ${JSON.stringify(options)}`);
    assert.match(tiny[1], /random test weights/);

    hf.resetStats();
    await downloadTiny(page, wait);
    assert.equal(await page.getAttribute("body", "data-download"), "done", await page.textContent("#download-status"));
    await wait("body[data-cache=cached]");
    const afterDownload = JSON.stringify(hf.stats().files);
    await page.click("#load-model");
    await wait("body[data-model=loaded], body[data-model=failed]", 300_000);
    assert.equal(await page.getAttribute("body", "data-model"), "loaded",
      `${await page.textContent("#model-status")}\n${logs.join("\n")}`);
    assert.match(await page.textContent("#model-status"), /^Loaded Tiny test model.* in (\d+\.\d s|\d+ min \d\d s)\.$/);
    // The resolution choices follow the model.
    assert.deepEqual(await page.$$eval("#set-resolution option", (os) => os.map((o) => o.value)), ["64", "32", "128"]);

    // Weights came as 206 answers to ranged requests through the CDN redirect, never whole.
    const stats = hf.stats();
    for (const file of ["transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]) {
      const s = stats.files[`${TINY}/${file}`];
      assert.ok(s, `${file} was read`);
      assert.ok(s.statuses["302"] > 0 && s.statuses["206"] > 0, `${file}: ${JSON.stringify(s.statuses)}`);
      assert.equal(s.statuses["200"] ?? 0, 0, `${file} must never be fetched whole`);
      assert.ok(s.ranges.every((r) => r && r.start !== null), `${file}: every GET is ranged`);
    }
    // Loading read the verified cache, not the network: nothing was requested after the download.
    assert.equal(JSON.stringify(hf.stats().files), afterDownload);
    await page.screenshot({ path: `${artifacts}/10-model-loaded.png` });
    assert.deepEqual(await axeViolations(page), [], "a model downloaded and loaded");
  } finally {
    await browser.close();
  }
});

test("a server that ignores Range still gives verified files; a refused file is a readable error", { timeout: SLOW }, async () => {
  const { browser, page, logs, wait } = await openApp();
  try {
    // The hub refuses the VAE weights: the download stops with the URL and the status, and
    // the model cannot be loaded.
    hf.setFaults([{ path: "vae/diffusion_pytorch_model.safetensors", stage: "resolve", status: 403 }]);
    await downloadTiny(page, wait);
    assert.equal(await page.getAttribute("body", "data-download"), "failed");
    const message = await page.textContent("#download-status");
    assert.match(message, /resolve\/[0-9a-f]{40}\/vae\/diffusion_pytorch_model\.safetensors/);
    assert.match(message, /403/);
    assert.equal(await page.getAttribute("#download-status", "role"), "alert");
    await page.waitForFunction(() => /not downloaded|Partly downloaded/.test(document.getElementById("model-info").textContent));
    assert.notEqual(await page.getAttribute("body", "data-cache"), "cached");
    assert.ok(await page.isDisabled("#load-model"), "an incomplete model cannot be loaded");
    await page.screenshot({ path: `${artifacts}/11-download-failed.png` });
    assert.deepEqual(await axeViolations(page), [], "a failed download");

    // 200 with the whole file for every ranged request: the download must still end verified
    // (each range is cut out of the full body at its offset) and the model load.
    hf.setFaults([{ path: "**/*.safetensors", fault: "ignore-range" }]);
    await page.evaluate(() => document.body.removeAttribute("data-download"));
    await loadTiny(page, wait);
    assert.equal(await page.getAttribute("body", "data-model"), "loaded",
      `${await page.textContent("#model-status")}\n${logs.join("\n")}`);
    const vae = hf.stats().files[`${TINY}/vae/diffusion_pytorch_model.safetensors`];
    assert.ok(vae.statuses["200"] > 0, JSON.stringify(vae.statuses));
  } finally {
    hf.setFaults([]);
    await browser.close();
  }
});

/** Opens a picture and fills the settings for a small run. */
async function prepareRun(page, { layers, steps, resolution }) {
  await page.setInputFiles("#file-input", { name: "pic.png", mimeType: "image/png", buffer: picture(40, 24) });
  await page.waitForFunction(() => !document.getElementById("decompose").disabled);
  await page.fill("#set-layers", String(layers));
  await page.fill("#set-steps", String(steps));
  await page.selectOption("#set-resolution", String(resolution));
  await page.fill("#set-prompt", "a test picture");
}

/** The editor's layer rows, top first: [index, name, size text, thumbnail pixel sum]. */
async function shownLayers(page) {
  return page.$$eval("#layer-list li.layer", (lis) => lis.map((li) => {
    const c = li.querySelector("canvas.thumb");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let sum = 0;
    for (const v of d) sum += v;
    return { index: li.dataset.index, name: li.querySelector(".layer-name").value,
      size: li.querySelector(".layer-size").textContent, sum };
  }));
}

/** A layer's pixels with alpha, placed at (x, y): "x,y" → "r,g,b,a", sorted. */
function placed(rgba, w, h, x, y) {
  const out = [];
  for (let j = 0; j < h; j++) {
    for (let i = 0; i < w; i++) {
      const k = (j * w + i) * 4;
      if (rgba[k + 3]) out.push(`${x + i},${y + j} ${Array.from(rgba.subarray(k, k + 4)).join(",")}`);
    }
  }
  return out.sort();
}

/**
 * Exports the document as ZIP, PSD and ORA and checks each against `stack` ([name, x, y,
 * visible], bottom to top, every layer at full opacity) and each layer's pixels against the
 * ZIP's; the composite PNG against the page's composite; psd-tools reads the PSD too.
 */
async function checkExports(page, stack) {
  const save = async (button) => {
    const [dl] = await Promise.all([page.waitForEvent("download"), page.click(button)]);
    const path = `${artifacts}/decomposed-${dl.suggestedFilename()}`;
    await dl.saveAs(path);
    return { path, bytes: await readFile(path) };
  };
  const zip = readZip((await save("#export-zip")).bytes);
  const manifest = JSON.parse(zip.entries.get("manifest.json").toString());
  assert.deepEqual(manifest.layers.map((l) => [l.name, l.x, l.y, l.visible, l.opacity]), stack.map((s) => [...s, 1]));
  const pixels = manifest.layers.map((l) => {
    const png = decodePng(zip.entries.get(l.file));
    assert.ok(png.rgba.some((v, k) => k % 4 === 3 && v > 0), `${l.name}: some pixels`);
    return placed(png.rgba, png.width, png.height, l.x, l.y);
  });
  const composite = decodePng((await save("#export-composite")).bytes);
  const shown = await page.evaluate(() => {
    const c = document.getElementById("composite");
    return Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data);
  });
  // (The canvas keeps colour premultiplied: where alpha is a, it reads back within 255/a.)
  assert.equal(composite.rgba.length, shown.length);
  for (let k = 0; k < shown.length; k += 4) {
    const a = shown[k + 3];
    assert.equal(composite.rgba[k + 3], a, `composite alpha at ${k / 4}`);
    for (let c = 0; c < 3 && a > 0; c++) {
      assert.ok(Math.abs(composite.rgba[k + c] - shown[k + c]) <= Math.ceil(255 / a), `composite at pixel ${k / 4}: ${composite.rgba.subarray(k, k + 4)} vs ${shown.slice(k, k + 4)}`);
    }
  }

  const psdFile = await save("#export-psd");
  const psd = readPsd(psdFile.bytes);
  assert.deepEqual(psd.layers.map((l) => [l.name, l.hidden, l.opacity, l.blend]), stack.map(([n, , , v]) => [n, !v, 255, "norm"]));
  psd.layers.forEach((l, i) => assert.deepEqual(placed(l.rgba, l.right - l.left, l.bottom - l.top, l.left, l.top), pixels[i], `PSD ${l.name}`));
  if (process.env.QLW_NO_PSD_TOOLS === "1") {
    console.log("psd-tools check of the decomposed PSD SKIPPED (QLW_NO_PSD_TOOLS=1)");
  } else {
    const python = fileURLToPath(new URL("../../.venv-export/bin/python", import.meta.url));
    assert.ok(existsSync(python), `${python} is missing: run \`bash scripts/setup.sh --test\` (or set QLW_NO_PSD_TOOLS=1 to skip this check)`);
    const script = "import sys, json\nfrom psd_tools import PSDImage\np = PSDImage.open(sys.argv[1])\n"
      + "print(json.dumps([[l.name, l.visible, l.opacity] for l in p]))";
    assert.deepEqual(JSON.parse(execFileSync(python, ["-c", script, psdFile.path]).toString()), stack.map(([n, , , v]) => [n, v, 255]));
  }

  const ora = readZip((await save("#export-ora")).bytes);
  const xml = ora.entries.get("stack.xml").toString();
  const oraLayers = [...xml.matchAll(/<layer name="([^"]*)" src="([^"]*)" x="(-?\d+)" y="(-?\d+)"[^>]*visibility="(\w+)"/g)].reverse();
  assert.deepEqual(oraLayers.map((m) => [m[1], Number(m[3]), Number(m[4]), m[5] === "visible"]), stack);
  oraLayers.forEach((m, i) => {
    const png = decodePng(ora.entries.get(m[2]));
    assert.deepEqual(placed(png.rgba, png.width, png.height, Number(m[3]), Number(m[4])), pixels[i], `ORA ${m[1]}`);
  });
}

// One page for all (a model load and the kernel compilation cost about a minute on SwiftShader):
// a long run is cancelled midway, then a short one goes through on the same loaded model, then
// a GPU error and a lost device each end a run.
test("Cancel stops a run between steps; Decompose then shows N layers; a GPU error or a lost device ends a run with a message and the document intact", { timeout: SLOW }, async () => {
  const { browser, page, logs, wait } = await openApp();
  try {
    await loadTiny(page, wait);
    assert.equal(await page.getAttribute("body", "data-model"), "loaded", logs.join("\n"));
    assert.match(await page.textContent("#decompose-note"), /Leave the prompt empty/);
    assert.ok(await page.isDisabled("#decompose"), "no picture yet");
    assert.ok(await page.isHidden("#cancel-run"), "Cancel only while running");

    // A long run, cancelled once denoising steps have run.
    await prepareRun(page, { layers: 1, steps: 40, resolution: 32 });
    await page.click("#decompose");
    await page.waitForSelector("#cancel-run:not([hidden])");
    await page.waitForFunction(() => /Denoising: step [1-9]\d* of 40/.test(document.getElementById("run-status").textContent),
      null, { timeout: 240_000 });
    assert.match(await page.textContent("#run-status"), /elapsed, about .* left\)$/, "ETA once steps have run");
    await page.click("#cancel-run");
    await wait("body[data-run=cancelled], body[data-run=done], body[data-run=failed]", 240_000);
    let status = await page.textContent("#run-status");
    assert.equal(await page.getAttribute("body", "data-run"), "cancelled", status);
    const m = status.match(/^Cancelled after denoising step (\d+) of 40\.$/);
    assert.ok(m && Number(m[1]) < 40, status);
    assert.ok(await page.isHidden("#cancel-run"));
    await page.screenshot({ path: `${artifacts}/12-cancelled.png` });

    // The model stays loaded: a short run with 2 layers goes through.
    await page.fill("#set-layers", "2");
    await page.fill("#set-steps", "2");
    const seen = [];
    const watcher = setInterval(async () => {
      const t = await page.textContent("#run-status").catch(() => "");
      if (t && seen.at(-1) !== t) seen.push(t);
    }, 50);
    // The page's main thread stays free while the worker runs the model: its long tasks
    // (over 50 ms) are recorded; a model run on it would be one of many seconds.
    await page.evaluate(() => {
      window.__longTasks = [];
      new PerformanceObserver((list) => window.__longTasks.push(...list.getEntries().map((e) => e.duration)))
        .observe({ type: "longtask" });
    });
    await page.click("#decompose");
    await wait("body[data-run=done], body[data-run=failed]", 240_000);
    clearInterval(watcher);
    status = await page.textContent("#run-status");
    assert.equal(await page.getAttribute("body", "data-run"), "done", `${status}\n${logs.join("\n")}`);
    assert.match(status, /^Decomposed into 2 layers in (\d+\.\d s|\d+ min \d\d s)\.$/);
    const longTasks = await page.evaluate(() => window.__longTasks);
    console.log(`main-thread long tasks during the run: ${longTasks.length}, longest ${Math.max(0, ...longTasks).toFixed(0)} ms`);
    // (Generous: a loaded CI machine stretches tasks; a frozen page is a whole run's length.)
    assert.ok(Math.max(0, ...longTasks) < 2000, `a main-thread task of ${Math.max(...longTasks)} ms during the run`);
    console.log(`statuses seen: ${seen.join(" | ")}; model: ${await page.textContent("#model-status")}`);
    assert.ok(seen.some((t) => /^Denoising: step [012] of 2 \(\d+ s elapsed/.test(t)), seen.join(" | "));
    const layers = await shownLayers(page);
    assert.deepEqual(layers.map((l) => l.index), ["1", "0"], "top layer first");
    assert.deepEqual(layers.map((l) => l.name), ["Layer 2", "Layer 1"]);
    // At the picture's size (40×24), not the working size of the 32 bucket.
    for (const l of layers) assert.ok(l.size === "40×24" && l.sum > 0, JSON.stringify(l));
    // The run was started down in the side panel: the page's status line says where the
    // layers went, and the layers panel is scrolled into view.
    assert.match(await page.textContent("#status"), /^Decomposed into 2 layers in (\d+\.\d s|\d+ min \d\d s)\. They are in the Layers panel\.$/);
    const panelTop = await page.evaluate(() => document.getElementById("layers-panel").getBoundingClientRect().top);
    assert.ok(panelTop >= 0 && panelTop < 200, `the layers panel's top is at ${panelTop} px`);
    await page.screenshot({ path: `${artifacts}/13-decomposed.png` });

    // The decomposed layers are edited like any: hide the bottom one, raise it, nudge the
    // other; every export then holds that stack, and they agree on every layer's pixels.
    await page.locator("#layer-list li").nth(1).locator(".layer-visible").uncheck();
    await page.click("#layer-list li:nth-child(2) .thumb");
    await page.focus("#canvas");
    await page.keyboard.press("Alt+ArrowUp");
    await page.click("#layer-list li:nth-child(2) .thumb");
    await page.focus("#canvas");
    await page.keyboard.press("ArrowRight");
    await page.keyboard.press("ArrowRight");
    assert.deepEqual((await shownLayers(page)).map((l) => l.name), ["Layer 1", "Layer 2"]);
    await checkExports(page, [["Layer 2", 2, 0, true], ["Layer 1", 0, 0, false]]);
    for (let i = 0; i < 4; i++) await page.keyboard.press("Control+z");
    assert.deepEqual(await shownLayers(page), layers, "four undos: the decomposition as it came");

    // The layers are the editor's document now: one undo brings the opened picture back.
    await page.evaluate(() => document.activeElement?.blur());
    await page.keyboard.press("Control+z");
    assert.equal((await shownLayers(page)).length, 1, "undo restores the one-layer document");
    assert.ok(await page.isHidden("#cancel-run"), "Cancel only while running");
    assert.ok(!(await page.isDisabled("#decompose")), "ready for another run");
    assert.ok(!logs.some((l) => l.includes("panicked")), logs.join("\n"));

    // Issue 6: a GPU error, then a lost device, in the middle of a run, caused for real by the
    // worker after the first denoising step (`?gpu-fault=`, read at each Decompose). Each run
    // ends with a message that says what happened and what to do, the model is unloaded, and
    // the editor's document is as it was.
    const doc = await shownLayers(page);
    const faultyRun = async (fault) => {
      await page.evaluate((f) => history.replaceState(null, "", `?gpu-fault=${f}`), fault);
      await page.fill("#set-steps", "3");
      await page.click("#decompose");
      await wait("body[data-run=done], body[data-run=failed]", 240_000);
      const text = await page.textContent("#run-status");
      assert.equal(await page.getAttribute("body", "data-run"), "failed", `${fault}: ${text}\n${logs.join("\n")}`);
      await wait("body[data-model=none]");
      assert.deepEqual(await shownLayers(page), doc, `${fault}: the document is untouched`);
      return text;
    };
    status = await faultyRun("error");
    console.log(`after a GPU error: ${status}`);
    assert.match(status, /the GPU reported an error \(.*max buffer size.*\)\. The model was unloaded; the editor and its layers are untouched\. Lower the GPU memory budget/s, status);
    // The device survives an error: the model loads again on it.
    await page.click("#load-model");
    await wait("body[data-model=loaded], body[data-model=failed]", 300_000);
    assert.equal(await page.getAttribute("body", "data-model"), "loaded", await page.textContent("#model-status"));
    status = await faultyRun("lose-device");
    assert.match(status, /^Decomposing failed: the GPU device was lost \(Destroyed: [^()]+\)\. The editor and its layers are untouched: save them \(Export\), then reload the page/, status);
    console.log(`after a lost device: ${status}`);
    // The page knows the device is gone: nothing can load or run until a reload.
    await wait("body[data-gpu=lost]");
    assert.match(await page.textContent("#gpu-info"), /^The GPU device was lost \(Destroyed: [^()]+\)\. Save your work \(Export\), then reload the page/);
    assert.ok(await page.isDisabled("#load-model"), "no load on a lost device");
    assert.ok(await page.isDisabled("#decompose"), "no run on a lost device");
    await page.locator("#run-status").scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${artifacts}/14-device-lost.png` });
    // Saving works without the GPU: the PSD export is written on the CPU.
    const [psd] = await Promise.all([page.waitForEvent("download"), page.click("#export-psd")]);
    const saved = await readFile(await psd.path());
    assert.equal(saved.subarray(0, 4).toString("latin1"), "8BPS", "a PSD file");
    assert.ok(!logs.some((l) => l.includes("panicked")), logs.join("\n"));
  } finally {
    await browser.close();
  }
});

/** Waits of one run phase under load (SwiftShader on a busy 2-core machine). */
const LONG = 420_000;

/** Collects every distinct text of the given elements while a run goes on. */
/**
 * Records every text the elements show, in the page: a MutationObserver runs after each task,
 * and each worker message is its own task, so a state that lasts a few milliseconds (the last
 * caption token, right before the next phase) is seen too, which polling from here can miss.
 */
async function watchTexts(page, selectors) {
  await page.evaluate((sels) => {
    const seen = Object.fromEntries(sels.map((s) => [s, []]));
    const record = () => {
      for (const s of sels) {
        const t = document.querySelector(s)?.textContent ?? null;
        if (t !== null && seen[s].at(-1) !== t) seen[s].push(t);
      }
    };
    record();
    const observer = new MutationObserver(record);
    observer.observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
    window.__watchTexts = { seen, observer };
  }, selectors);
  return {
    stop: () => page.evaluate(() => {
      window.__watchTexts.observer.disconnect();
      return window.__watchTexts.seen;
    }),
  };
}

// Issue 7 items 2 and 4: an empty prompt is captioned in the worker (tokens streamed to the
// page, cancellable), the caption is the prompt; then the selected layer is decomposed again
// and replaced in place by its sub-layers, and one undo brings it back.
// Slow on SwiftShader: the caption's prefill compiles its kernels (about 1–2 min), and each
// decode step has a new key/value length (seconds a token), hence a short caption here.
test("an empty prompt is captioned, then a layer decomposes in place and undo restores it", { timeout: 4 * SLOW }, async () => {
  const { browser, page, logs, wait } = await openApp();
  const t0 = Date.now();
  const lap = (what) => console.log(`${what}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  try {
    await loadTiny(page, wait);
    assert.equal(await page.getAttribute("body", "data-model"), "loaded", logs.join("\n"));
    lap("model loaded");
    assert.match(await page.textContent("#decompose-note"), /Leave the prompt empty to have the model describe the picture/);
    assert.ok(await page.isDisabled("#decompose-layer"), "no layer selected yet");
    await prepareRun(page, { layers: 2, steps: 2, resolution: 32 });
    await page.fill("#set-prompt", "");

    // Captioning stops at Cancel between two tokens.
    await page.fill("#set-caption-tokens", "512");
    await page.click("#decompose");
    await page.waitForFunction(() => /^Captioning: token ([2-9]|\d\d+) of at most 512/.test(document.getElementById("run-status").textContent),
      null, { timeout: LONG });
    lap("captioning streams tokens");
    assert.ok(!(await page.isHidden("#caption-box")), "the caption grows in view");
    await page.click("#cancel-run");
    await wait("body[data-run=cancelled], body[data-run=done], body[data-run=failed]", LONG);
    let status = await page.textContent("#run-status");
    assert.equal(await page.getAttribute("body", "data-run"), "cancelled", `${status}\n${logs.join("\n")}`);
    const m = status.match(/^Cancelled after caption token (\d+) of at most 512\.$/);
    assert.ok(m && Number(m[1]) < 512, status);
    assert.equal(await page.getAttribute("body", "data-layers"), "1", "a cancelled run leaves the document");
    lap("caption cancelled");

    // A whole run with a short caption: the caption streams, then becomes the prompt.
    const MAX = 6;
    await page.fill("#set-caption-tokens", String(MAX));
    const watch = await watchTexts(page, ["#run-status", "#run-caption"]);
    await page.click("#decompose");
    await wait("body[data-run=done], body[data-run=failed]", LONG);
    const seen = await watch.stop();
    status = await page.textContent("#run-status");
    assert.equal(await page.getAttribute("body", "data-run"), "done", `${status}\n${logs.join("\n")}`);
    assert.match(status, /^Decomposed into 2 layers in (\d+\.\d s|\d+ min \d\d s)\.$/);
    lap("captioned and decomposed");
    const statuses = seen["#run-status"];
    console.log(`statuses: ${statuses.join(" | ")}`);
    const tokens = statuses.map((t) => t.match(new RegExp(`^Captioning: token (\\d+) of at most ${MAX} `))).filter(Boolean).map((x) => Number(x[1]));
    assert.ok(tokens.length >= 3, `the caption streams token by token: ${statuses.join(" | ")}`);
    assert.ok(tokens.every((n, i) => i === 0 || n > tokens[i - 1]) && tokens.at(-1) === MAX, tokens.join(","));
    const order = ["Captioning", "Encoding the prompt", "Encoding the image", "Denoising", "Decoding"];
    const firsts = order.map((p) => statuses.findIndex((t) => t.startsWith(p)));
    assert.ok(firsts.every((i, k) => i >= 0 && (k === 0 || i > firsts[k - 1])), `phases in order: ${firsts}`);
    const caption = await page.textContent("#run-caption");
    const growing = seen["#run-caption"].filter((t) => t);
    console.log(`caption (${growing.length} texts seen): ${JSON.stringify(caption)}`);
    // It grows token by token (a character cut between two tokens shows as U+FFFD until its
    // last byte arrives; the end of the caption is stripped as Python's str.strip does).
    const norm = (t) => t.replace(/[\uFFFD\s]+$/u, "").trimStart();
    assert.ok(growing.length >= 2, `the caption grows: ${JSON.stringify(growing)}`);
    assert.ok(growing.every((t, i) => i === 0 || norm(t).length >= norm(growing[i - 1]).length), JSON.stringify(growing));
    assert.equal(growing.at(-1), caption);
    assert.ok(caption.length > 0);
    // The prompt field stays empty (the next run captions what it is given); the caption can
    // be taken into it.
    assert.equal(await page.inputValue("#set-prompt"), "");
    await page.click("#use-caption");
    assert.equal(await page.inputValue("#set-prompt"), caption);
    let layers = await shownLayers(page);
    assert.deepEqual(layers.map((l) => l.name), ["Layer 2", "Layer 1"]);
    for (const l of layers) assert.equal(l.size, "40×24", "layers at the picture's size");
    await page.screenshot({ path: `${artifacts}/14-captioned.png` });
    assert.deepEqual(await axeViolations(page), [], "decomposed, with the caption shown");

    // Decompose the bottom layer into 3 sub-layers, in place: under the other, not on top.
    const before = layers;
    await page.click("#layer-list li:nth-child(2) .thumb");
    assert.ok(!(await page.isDisabled("#decompose-layer")), "a layer is selected");
    await page.fill("#set-layers", "3");
    await page.fill("#set-prompt", "a layer");
    await page.click("#decompose-layer");
    await wait("body[data-run=done], body[data-run=failed]", LONG);
    status = await page.textContent("#run-status");
    assert.equal(await page.getAttribute("body", "data-run"), "done", `${status}\n${logs.join("\n")}`);
    assert.match(status, /^Decomposed “Layer 1” into 3 layers in (\d+\.\d s|\d+ min \d\d s)\.$/);
    lap("layer decomposed");
    layers = await shownLayers(page);
    assert.deepEqual(layers.map((l) => l.name), ["Layer 2", "Layer 1 · 3", "Layer 1 · 2", "Layer 1 · 1"],
      "the sub-layers take the layer's place, bottom one lowest");
    // (Its index in the stack, bottom 0, is 3 now.)
    assert.deepEqual({ ...layers[0], index: "3" }, { ...before[0], index: "3" }, "the layer above is untouched");
    assert.equal(layers[0].index, "3");
    for (const l of layers) assert.ok(l.size === "40×24" && l.sum > 0, JSON.stringify(l));
    assert.equal(await page.getAttribute("body", "data-layers"), "4");
    await page.screenshot({ path: `${artifacts}/15-layer-decomposed.png` });

    // One undo restores the layer exactly; redo brings the sub-layers back.
    await page.evaluate(() => document.activeElement?.blur());
    await page.keyboard.press("Control+z");
    assert.deepEqual(await shownLayers(page), before, "undo restores the decomposed layer");
    await page.screenshot({ path: `${artifacts}/16-layer-undo.png` });
    await page.keyboard.press("Control+Shift+z");
    assert.deepEqual((await shownLayers(page)).map((l) => l.name), layers.map((l) => l.name));
    assert.ok(!logs.some((l) => l.includes("panicked")), logs.join("\n"));
  } finally {
    await browser.close();
  }
});
