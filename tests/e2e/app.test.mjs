// End-to-end tests of the built app (dist/, made by `trunk build --release`) in headless
// Chromium with WebGPU through SwiftShader. Screenshots go to tests/e2e/artifacts/.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { serveStatic } from "./server.mjs";
import { CHROMIUM, BASE_ARGS, WEBGPU_ARGS, NO_WEBGPU_ARGS } from "./chromium.mjs";
import { encodePng } from "./png.mjs";
import { axeViolations } from "./a11y.mjs";

const here = fileURLToPath(new URL(".", import.meta.url));
const dist = fileURLToPath(new URL("../../dist/", import.meta.url));
const artifacts = `${here}artifacts`;
const SLOW = 180_000; // SwiftShader compiles each kernel in about a second

let server;
before(async () => {
  assert.ok(existsSync(`${dist}index.html`), `no ${dist}index.html: run \`trunk build --release\` first`);
  await mkdir(artifacts, { recursive: true });
  server = await serveStatic(dist);
});
after(async () => server?.close());

async function openPage(args) {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args, headless: true });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const logs = [];
  page.on("console", (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`[pageerror] ${e.message}`));
  await page.goto(server.url);
  return { browser, page, logs };
}

/** A deterministic opaque test picture with a fully transparent band. */
function testImage(width, height) {
  const rgba = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 4;
      rgba.set([(x * 7) & 255, (y * 11) & 255, (x * y) & 255, y < 3 ? 0 : 255], i);
    }
  }
  return rgba;
}

/** The document as drawn: the editor core's composite, which the view canvas shows zoomed. */
async function canvasPixels(page) {
  return page.evaluate(() => {
    const c = document.getElementById("composite");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height);
    return { width: c.width, height: c.height, data: Array.from(d.data) };
  });
}

test("the page reports the real WebGPU adapter, runs the GPU self-test, and opens images", { timeout: SLOW }, async () => {
  const { browser, page, logs } = await openPage([...BASE_ARGS, ...WEBGPU_ARGS]);
  try {
    await page.waitForSelector("body[data-gpu=ready]", { timeout: 120_000 }).catch((e) => {
      throw new Error(`${e.message}\nconsole:\n${logs.join("\n")}`);
    });
    // The report must be the real adapter's: compare with what the page itself sees.
    const real = await page.evaluate(async () => {
      const a = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
      return { vendor: a.info.vendor, architecture: a.info.architecture,
        maxBufferSize: a.limits.maxBufferSize, maxBinding: a.limits.maxStorageBufferBindingSize,
        wgStorage: a.limits.maxComputeWorkgroupStorageSize, features: [...a.features] };
    });
    const report = await page.textContent("#gpu-info");
    assert.match(report, new RegExp(`Adapter: ${real.vendor} ${real.architecture}`));
    assert.match(report, /Backend: BrowserWebGpu/);
    assert.match(report, new RegExp(`maxBufferSize: ${Math.floor(real.maxBufferSize / 2 ** 20)} MiB`));
    assert.match(report, new RegExp(`maxStorageBufferBindingSize: ${Math.floor(real.maxBinding / 2 ** 20)} MiB`));
    assert.match(report, new RegExp(`maxComputeWorkgroupStorageSize: ${real.wgStorage / 1024} KiB`));
    assert.match(report, new RegExp(`shader-f16: ${real.features.includes("shader-f16") ? "yes" : "no"}`));
    assert.match(report, new RegExp(`subgroups: ${real.features.includes("subgroups") ? "(yes|offered)" : "no"}`));

    // Burn's matmul ran on the worker's WebGPU device and matched the CPU backend.
    await page.waitForSelector("body[data-self-test]", { timeout: 120_000 });
    assert.equal(await page.getAttribute("body", "data-self-test"), "pass", await page.textContent("#gpu-info"));
    assert.match(await page.textContent("#gpu-info"), /Self-test: 64×64×64 matmul on the GPU matches the CPU/);

    // Open a PNG with the file picker: its pixels must be on the canvas.
    const [w, h] = [37, 23];
    const rgba = testImage(w, h);
    await page.setInputFiles("#file-input", { name: "test picture.png", mimeType: "image/png", buffer: encodePng(w, h, rgba) });
    await page.waitForFunction(() => document.getElementById("composite").width === 37);
    assert.match(await page.textContent("#status"), /Opened "test picture.png" \(37×23\)/);
    const shown = await canvasPixels(page);
    assert.deepEqual([shown.width, shown.height], [w, h]);
    let mismatches = 0;
    for (let i = 0; i < rgba.length; i += 4) {
      const want = rgba[3 + i] === 0 ? [0, 0, 0, 0] : Array.from(rgba.subarray(i, i + 4));
      const got = shown.data.slice(i, i + 4);
      if (want.some((v, j) => v !== got[j])) mismatches++;
    }
    assert.equal(mismatches, 0, "canvas pixels differ from the PNG");
    assert.equal(await page.inputValue("#layer-list .layer-name"), "test picture.png");
    assert.equal(await page.textContent("#layer-list .layer-size"), "37×23");
    await page.screenshot({ path: `${artifacts}/01-image-opened.png` });

    // A file that is not an image: a clear message, and the picture stays.
    await page.setInputFiles("#file-input", { name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("hello") });
    await page.waitForFunction(() => document.getElementById("status").textContent.includes("notes.txt"));
    const status = await page.textContent("#status");
    assert.match(status, /Could not open "notes\.txt": this is not an image file/);
    assert.equal(await page.getAttribute("#status", "role"), "alert");
    assert.deepEqual((await canvasPixels(page)).data, shown.data, "the open picture must be kept");
    await page.screenshot({ path: `${artifacts}/02-not-an-image.png` });

    // Dropping a file works like choosing it.
    const dropped = encodePng(2, 2, new Uint8Array([255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255, 9, 9, 9, 255]));
    await page.evaluate(async (bytes) => {
      const dt = new DataTransfer();
      dt.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
      document.getElementById("canvas-area").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, [...dropped]);
    await page.waitForFunction(() => document.getElementById("composite").width === 2);
    assert.deepEqual((await canvasPixels(page)).data, [255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255, 9, 9, 9, 255]);
    assert.ok(!logs.some((l) => l.includes("panicked")), logs.join("\n"));
  } finally {
    await browser.close();
  }
});

test("without WebGPU the page says so plainly and still opens images", { timeout: SLOW }, async () => {
  const { browser, page } = await openPage([...BASE_ARGS, ...NO_WEBGPU_ARGS]);
  try {
    await page.waitForSelector("body[data-gpu=none]", { timeout: 60_000 });
    assert.match(await page.textContent("#status"), /WebGPU is not available/);
    assert.match(await page.textContent("#gpu-info"), /WebGPU is not available/);
    await page.screenshot({ path: `${artifacts}/03-no-webgpu.png` });
    assert.deepEqual(await axeViolations(page), [], "no WebGPU");
    await page.setInputFiles("#file-input", { name: "a.png", mimeType: "image/png", buffer: encodePng(3, 1, new Uint8Array(12).fill(200)) });
    await page.waitForFunction(() => document.getElementById("composite").width === 3);
    assert.deepEqual((await canvasPixels(page)).data, new Array(12).fill(200));
  } finally {
    await browser.close();
  }
});
