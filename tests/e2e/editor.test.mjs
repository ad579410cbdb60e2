// End-to-end tests of the layer editor in the built app (dist/): open → edit → undo → export
// (files read back by tests/e2e/formats.mjs), awkward inputs, paste, offline reload through
// the service worker, the Content-Security-Policy and a hostile layer name.
// Screenshots: tests/e2e/artifacts/editor-*.png. Runs without WebGPU (the editor needs none).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { crc32 } from "node:zlib";
import { chromium } from "playwright-core";
import { serveStatic } from "./server.mjs";
import { CHROMIUM, BASE_ARGS, NO_WEBGPU_ARGS } from "./chromium.mjs";
import { encodePng } from "./png.mjs";
import { decodePng, readPsd, readZip } from "./formats.mjs";
import { axeViolations } from "./a11y.mjs";

const here = fileURLToPath(new URL(".", import.meta.url));
const dist = fileURLToPath(new URL("../../dist/", import.meta.url));
const fixtures = fileURLToPath(new URL("../fixtures/bad_input/", import.meta.url));
const artifacts = `${here}artifacts`;
const ARGS = [...BASE_ARGS, ...NO_WEBGPU_ARGS];
const XSS = "<img src=x onerror=alert(1)>";

let server, browser;
before(async () => {
  assert.ok(existsSync(`${dist}index.html`), `no ${dist}index.html: run \`trunk build\` first`);
  await mkdir(artifacts, { recursive: true });
  server = await serveStatic(dist);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
});
after(async () => { await browser?.close(); await server?.close(); });

/** A fresh page that records CSP violations, dialogs and errors. */
async function openPage(context) {
  const ctx = context ?? await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  const page = await ctx.newPage();
  const logs = [], dialogs = [];
  page.on("console", (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`[pageerror] ${e.message}`));
  page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss(); });
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  await page.goto(server.url);
  await page.waitForSelector("body[data-layers]");
  // The worker's GPU verdict also writes the status line: let it land first.
  await page.waitForSelector("body[data-gpu]", { timeout: 60_000 });
  return { ctx, page, logs, dialogs };
}

/** Waits for two animation frames: the canvas draws changes on the next one. */
const frames = (page) => page.evaluate(() => new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok))));

/** An opaque picture with distinct pixels. */
function picture(w, h) {
  const rgba = new Uint8Array(w * h * 4);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) rgba.set([(x * 9) & 255, (y * 13) & 255, (x * y + 40) & 255, 255], (y * w + x) * 4);
  return rgba;
}

async function composite(page) {
  return page.evaluate(() => {
    const c = document.getElementById("composite");
    return { width: c.width, height: c.height, data: Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data) };
  });
}
const names = (page) => page.$$eval("#layer-list .layer-name", (els) => els.map((e) => e.value));
const status = (page) => page.textContent("#status");

async function openFile(page, name, buffer, mimeType = "application/octet-stream") {
  const before = await status(page);
  await page.setInputFiles("#file-input", { name, mimeType, buffer });
  await page.waitForFunction((b) => {
    const s = document.getElementById("status").textContent;
    return s !== b && /^(Opened|Could not)/.test(s);
  }, before);
  return status(page);
}

async function download(page, button) {
  const [dl] = await Promise.all([page.waitForEvent("download"), page.click(button)]);
  const path = `${artifacts}/download-${dl.suggestedFilename()}`;
  await dl.saveAs(path);
  return { name: dl.suggestedFilename(), path, bytes: await readFile(path) };
}

function samePixels(a, b, what) {
  assert.equal(a.length, b.length, `${what}: length`);
  let bad = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) bad++;
  assert.equal(bad, 0, `${what}: ${bad} channel values differ`);
}

test("open, edit every way, undo, and export PNG/ZIP/PSD/ORA that read back right", { timeout: 240_000 }, async () => {
  const { ctx, page, logs, dialogs } = await openPage();
  try {
    const [w, h] = [40, 30];
    const rgba = picture(w, h);
    assert.match(await openFile(page, "test picture.png", encodePng(w, h, rgba), "image/png"), /Opened "test picture\.png" \(40×30\)/);
    assert.deepEqual(await names(page), ["test picture.png"]);
    samePixels((await composite(page)).data, rgba, "opened composite");
    await page.screenshot({ path: `${artifacts}/editor-1-opened.png` });

    // Duplicate: the copy goes on top and is selected.
    await page.click("#layer-duplicate");
    assert.deepEqual(await names(page), ["test picture.png copy", "test picture.png"]);
    assert.equal(await page.getAttribute("#layer-list li:first-child", "aria-current"), "true");

    // Rename the top layer to markup: it must stay text.
    const top = page.locator("#layer-list li").nth(0);
    await top.locator(".layer-name").fill(XSS);
    await top.locator(".layer-name").press("Enter");
    await page.waitForFunction((x) => document.querySelector("#layer-list .layer-name").value === x, XSS);
    assert.equal(await page.locator("#layer-list img").count(), 0, "the name was parsed as markup");

    // Move the top layer by dragging it on the canvas (zoom is 1: 40x30 fits), then nudge it.
    const box = await page.locator("#canvas").boundingBox();
    const zoom = await page.textContent("#zoom-level");
    assert.equal(zoom, "100%");
    const cx = box.x + box.width / 2, cy = box.y + box.height / 2;
    await page.mouse.move(cx, cy);
    await page.mouse.down();
    await page.mouse.move(cx + 3, cy + 2, { steps: 4 });
    await page.mouse.move(cx + 5, cy + 3, { steps: 4 });
    await page.mouse.up();
    await page.keyboard.press("ArrowRight");
    await page.keyboard.press("Shift+ArrowDown");
    // Top now at (6, 13): composite(6+x, 13+y) = picture(x, y).
    let c = await composite(page);
    const at = (img, x, y) => Array.from(img.slice((y * w + x) * 4, (y * w + x) * 4 + 4));
    assert.deepEqual(at(c.data, 6, 13), at(rgba, 0, 0));
    assert.deepEqual(at(c.data, 20, 20), at(rgba, 14, 7));
    assert.deepEqual(at(c.data, 2, 2), at(rgba, 2, 2), "bottom layer shows where the top is not");
    await page.screenshot({ path: `${artifacts}/editor-2-moved.png` });

    // Hide the bottom layer; set the top's opacity to 50 %.
    await page.locator("#layer-list li").nth(1).locator(".layer-visible").uncheck();
    c = await composite(page);
    assert.deepEqual(at(c.data, 2, 2), [0, 0, 0, 0]);
    await page.locator("#layer-list li").nth(0).locator(".layer-opacity").fill("50");
    await page.waitForFunction(() => document.getElementById("composite").getContext("2d").getImageData(6, 13, 1, 1).data[3] < 200);
    c = await composite(page);
    assert.equal(at(c.data, 6, 13)[3], 128);

    // Reorder by dragging the top row below the other, then back with the keyboard.
    await page.dragAndDrop("#layer-list li:nth-child(1) .grip", "#layer-list li:nth-child(2)");
    assert.deepEqual(await names(page), ["test picture.png", XSS]);
    await page.click("#layer-list li:nth-child(2) .thumb");
    await page.focus("#canvas");
    await page.keyboard.press("Alt+ArrowUp");
    assert.deepEqual(await names(page), [XSS, "test picture.png"]);
    await page.screenshot({ path: `${artifacts}/editor-3-edited.png` });

    // Undo walks back through the core's history: reorder ×2, opacity, visibility.
    for (let i = 0; i < 4; i++) await page.keyboard.press("Control+z");
    c = await composite(page);
    assert.deepEqual(at(c.data, 2, 2), at(rgba, 2, 2), "bottom visible again");
    assert.deepEqual(at(c.data, 6, 13), at(rgba, 0, 0), "top opaque again");
    await page.keyboard.press("Control+Shift+z"); // redo: bottom hidden again
    await page.keyboard.press("Control+y"); // redo: opacity 50 % again
    await page.keyboard.press("Control+z"); // and undo that: top opaque, bottom hidden
    c = await composite(page);
    assert.deepEqual(at(c.data, 2, 2), [0, 0, 0, 0]);
    assert.deepEqual(await names(page), [XSS, "test picture.png"]);
    const shown = await composite(page);

    // Exports. The document: bottom "test picture.png" hidden at (0,0); top XSS at (6,13).
    const png = await download(page, "#export-composite");
    assert.equal(png.name, "test picture-composite.png");
    const dec = decodePng(png.bytes);
    assert.deepEqual([dec.width, dec.height], [w, h]);
    samePixels(dec.rgba, shown.data, "composite PNG");

    await page.click("#layer-list li:nth-child(1) .thumb");
    const layer = await download(page, "#export-layer");
    assert.equal(layer.name, "test picture-img src=x onerror=alert(1).png");
    samePixels(decodePng(layer.bytes).rgba, rgba, "layer PNG");

    const zip = readZip((await download(page, "#export-zip")).bytes);
    const manifest = JSON.parse(zip.entries.get("manifest.json").toString());
    assert.deepEqual(manifest.layers.map((l) => [l.name, l.x, l.y, l.visible, l.width, l.height]),
      [["test picture.png", 0, 0, false, w, h], [XSS, 6, 13, true, w, h]]);
    for (const l of manifest.layers) samePixels(decodePng(zip.entries.get(l.file)).rgba, rgba, `ZIP ${l.file}`);
    samePixels(decodePng(zip.entries.get("composite.png")).rgba, shown.data, "ZIP composite");

    const psdFile = await download(page, "#export-psd");
    assert.equal(psdFile.name, "test picture.psd");
    const psd = readPsd(psdFile.bytes);
    assert.deepEqual([psd.width, psd.height], [w, h]);
    assert.deepEqual(psd.layers.map((l) => [l.name, l.left, l.top, l.right, l.bottom, l.hidden, l.opacity]),
      [["test picture.png", 0, 0, w, h, true, 255], [XSS, 6, 13, 6 + w, 13 + h, false, 255]]);
    samePixels(psd.layers[0].rgba, rgba, "PSD bottom layer");
    samePixels(psd.layers[1].rgba, rgba, "PSD top layer");
    // And psd-tools, an independent reader, which scripts/setup.sh --test installs
    // (.venv-export): never skipped unless asked to, and then said so.
    const python = fileURLToPath(new URL("../../.venv-export/bin/python", import.meta.url));
    if (process.env.QLW_NO_PSD_TOOLS === "1") {
      console.log("psd-tools check of the browser's PSD SKIPPED (QLW_NO_PSD_TOOLS=1)");
    } else {
      assert.ok(existsSync(python), `${python} is missing: run \`bash scripts/setup.sh --test\` to install psd-tools (or set QLW_NO_PSD_TOOLS=1 to skip this check)`);
      const script = "import sys, json\nfrom psd_tools import PSDImage\np = PSDImage.open(sys.argv[1])\n"
        + "print(json.dumps([p.size, [[l.name, list(l.bbox), l.visible, l.opacity] for l in p]]))";
      const [size, got] = JSON.parse(execFileSync(python, ["-c", script, psdFile.path]).toString());
      assert.deepEqual(size, [w, h]);
      assert.deepEqual(got, [["test picture.png", [0, 0, w, h], false, 255], [XSS, [6, 13, 6 + w, 13 + h], true, 255]]);
    }

    const ora = readZip((await download(page, "#export-ora")).bytes);
    assert.equal(ora.order[0].name, "mimetype");
    assert.equal(ora.entries.get("mimetype").toString(), "image/openraster");
    const stack = ora.entries.get("stack.xml").toString();
    const oraLayers = [...stack.matchAll(/<layer name="([^"]*)" src="([^"]*)" x="(-?\d+)" y="(-?\d+)"[^>]*visibility="(\w+)"/g)];
    assert.deepEqual(oraLayers.map((m) => [m[1], m[3], m[4], m[5]]),
      [["&lt;img src=x onerror=alert(1)&gt;", "6", "13", "visible"], ["test picture.png", "0", "0", "hidden"]]);
    samePixels(decodePng(ora.entries.get(oraLayers[1][2])).rgba, rgba, "ORA bottom layer");
    samePixels(decodePng(ora.entries.get("mergedimage.png")).rgba, shown.data, "ORA merged image");

    // Delete and merge down are undoable too.
    await page.click("#layer-list li:nth-child(2) .layer-visible"); // show the bottom again
    await page.click("#layer-list li:nth-child(1) .thumb");
    await page.click("#layer-merge");
    assert.deepEqual(await names(page), ["test picture.png"]);
    await page.keyboard.press("Delete");
    assert.deepEqual(await names(page), []);
    await page.click("#undo");
    await page.click("#undo");
    assert.deepEqual(await names(page), [XSS, "test picture.png"]);

    // Zoom, pan and compare draw without touching the document.
    await page.click("#zoom-in");
    // The label is written when the next animation frame draws the view.
    await page.waitForFunction(() => document.getElementById("zoom-level").textContent !== "100%");
    assert.equal(await page.textContent("#zoom-level"), "125%");
    await page.selectOption("#compare", "split");
    assert.equal(await page.isVisible("#split"), true);
    await page.screenshot({ path: `${artifacts}/editor-4-compare-split.png` });
    await page.selectOption("#compare", "off");
    await page.click("#zoom-fit");

    // Security: the policy, no violations, no script from the name.
    const csp = await page.getAttribute('meta[http-equiv="Content-Security-Policy"]', "content");
    assert.match(csp, /script-src 'self' 'wasm-unsafe-eval'/);
    assert.doesNotMatch(csp, /'unsafe-eval'|'unsafe-inline'/);
    assert.deepEqual(await page.evaluate(() => window.__csp), []);
    assert.deepEqual(dialogs, []);
    assert.ok(!logs.some((l) => l.includes("panicked")), logs.join("\n"));
  } finally {
    await ctx.close();
  }
});

test("the canvas: the wheel zooms about the pointer, a corner handle scales, a click selects the topmost opaque layer, middle and space drags pan, and Compare shows the original", { timeout: 240_000 }, async () => {
  const { ctx, page, logs } = await openPage();
  try {
    const [w, h] = [40, 30];
    const rgba = picture(w, h);
    await openFile(page, "canvas.png", encodePng(w, h, rgba), "image/png");
    await page.click("#layer-duplicate"); // the copy, on top, selected
    const canvas = page.locator("#canvas");
    const box = await canvas.boundingBox();
    /** The view as drawn ("zoom pan_x pan_y" on the canvas). */
    const view = async () => (await canvas.getAttribute("data-view")).split(" ").map(Number);
    const drawn = (before) => page.waitForFunction((b) => document.getElementById("canvas").dataset.view !== b, before);
    /** A document point on the screen, in the current view. */
    const at = async (x, y) => { const [z, px, py] = await view(); return [box.x + px + x * z, box.y + py + y * z]; };
    const selected = () => page.$$eval("#layer-list li", (li) => li.findIndex((l) => l.getAttribute("aria-current") === "true"));
    const docAlpha = (x, y) => page.evaluate(([x, y]) => document.getElementById("composite").getContext("2d").getImageData(x, y, 1, 1).data[3], [x, y]);
    /** What the canvas shows at document point (x, y) (its centre), RGBA. */
    const shown = async (x, y) => {
      const [z, px, py] = await view();
      return page.evaluate(([cx, cy]) => {
        const c = document.getElementById("canvas");
        const dpr = c.width / c.clientWidth;
        return Array.from(c.getContext("2d").getImageData(Math.floor(cx * dpr), Math.floor(cy * dpr), 1, 1).data);
      }, [px + (x + 0.5) * z, py + (y + 0.5) * z]);
    };
    const pixel = (x, y) => Array.from(rgba.slice((y * w + x) * 4, (y * w + x) * 4 + 4));

    // The wheel zooms in about the pointer: the document point under it stays there.
    const [z0] = await view();
    const [sx, sy] = await at(10, 10);
    await page.mouse.move(sx, sy);
    let before = await canvas.getAttribute("data-view");
    await page.mouse.wheel(0, -600);
    await drawn(before);
    const [z1, px1, py1] = await view();
    assert.ok(z1 > 2 * z0, `zoom ${z0} → ${z1}`);
    assert.ok(Math.abs((sx - box.x - px1) / z1 - 10) < 0.05 && Math.abs((sy - box.y - py1) / z1 - 10) < 0.05, `${[z1, px1, py1]}`);
    assert.equal(await page.textContent("#zoom-level"), `${Math.round(z1 * 100)}%`);

    // The bottom-right handle of the selected (top) layer, dragged to the middle, halves it.
    await page.locator("#layer-list li").nth(1).locator(".layer-visible").uncheck(); // the top alone
    await page.click("#layer-list li:nth-child(1) .thumb");
    assert.equal(await selected(), 0);
    await frames(page);
    const [hx, hy] = await at(w, h);
    const [tx, ty] = await at(w / 2, h / 2);
    await page.mouse.move(hx, hy);
    await page.mouse.down();
    await page.mouse.move((hx + tx) / 2, (hy + ty) / 2, { steps: 4 });
    await page.mouse.move(tx, ty, { steps: 4 });
    await page.mouse.up();
    await page.waitForFunction(() => document.getElementById("composite").getContext("2d").getImageData(30, 22, 1, 1).data[3] === 0);
    assert.equal(await docAlpha(30, 22), 0, "outside the halved layer");
    assert.equal(await docAlpha(10, 7), 255, "inside it");
    assert.equal(await docAlpha(18, 13), 255, "near its corner");
    assert.equal(await docAlpha(22, 17), 0, "past it");

    // A click selects the topmost layer with an opaque pixel there.
    await page.locator("#layer-list li").nth(1).locator(".layer-visible").check();
    await page.mouse.click(...await at(30.5, 22.5));
    assert.equal(await selected(), 1, "only the bottom layer is opaque there");
    await page.mouse.click(...await at(10.5, 7.5));
    assert.equal(await selected(), 0, "the top layer is");
    assert.equal(await docAlpha(22, 17), 255, "the bottom layer shows again");
    assert.equal(await docAlpha(10, 7), 255);

    // Pan with the middle button, then with Space held: the view moves, the document not.
    const still = (await page.evaluate(() => Array.from(document.getElementById("composite").getContext("2d").getImageData(0, 0, 40, 30).data))).join();
    for (const how of ["middle", "space"]) {
      const [, bx, by] = await view();
      // On the top layer, where a left drag would move it; whole pixels, so the moves are exact.
      const [mx, my] = (await at(10.5, 7.5)).map(Math.round);
      await page.mouse.move(mx, my);
      if (how === "space") { await page.focus("#canvas"); await page.keyboard.down("Space"); }
      await page.mouse.down({ button: how === "middle" ? "middle" : "left" });
      await page.mouse.move(mx + 15, my + 10, { steps: 3 });
      await page.mouse.move(mx + 30, my + 20, { steps: 3 });
      await page.mouse.up({ button: how === "middle" ? "middle" : "left" });
      if (how === "space") await page.keyboard.up("Space");
      const [, ax, ay] = await view();
      assert.deepEqual([ax - bx, ay - by], [30, 20], `${how} pan`);
    }
    const after = (await page.evaluate(() => Array.from(document.getElementById("composite").getContext("2d").getImageData(0, 0, 40, 30).data))).join();
    assert.equal(after, still, "panning left the document as it was");

    // Compare: with the bottom hidden, (30, 22) is empty; the original shows its pixel there.
    await page.locator("#layer-list li").nth(1).locator(".layer-visible").uncheck();
    await frames(page);
    assert.equal((await shown(30, 22))[3], 0);
    await page.selectOption("#compare", "original");
    await frames(page);
    assert.deepEqual(await shown(30, 22), pixel(30, 22), "the original under Compare");
    await page.selectOption("#compare", "off");
    await frames(page);
    assert.equal((await shown(30, 22))[3], 0, "the composite again");
    assert.ok(!logs.some((l) => l.includes("panicked")), logs.join("\n"));
  } finally {
    await ctx.close();
  }
});

test("the presets set the resolution and steps and state their cost; the settings start at the reference's defaults", { timeout: 120_000 }, async () => {
  const { ctx, page, logs } = await openPage();
  try {
    // The visitors' default source, the real model: 640 and 1024.
    const settings = () => page.evaluate(() => ["layers", "resolution", "steps", "cfg", "seed", "prompt"]
      .map((k) => document.getElementById(`set-${k}`)?.value));
    const cost = () => page.textContent("#preset-cost");
    const [layers, resolution, steps] = await settings();
    assert.deepEqual([layers, resolution, steps], ["4", "640", "50"], "the reference's defaults");
    await page.click("#preset-fast");
    assert.deepEqual((await settings()).slice(0, 3), ["4", "640", "20"]);
    assert.equal(await cost(), "20 steps × 2 passes over 9600 image tokens at 640²: about 2.5× less work than the default.");
    await page.click("#preset-quality");
    assert.deepEqual((await settings()).slice(0, 3), ["4", "1024", "50"]);
    assert.match(await cost(), /^50 steps × 2 passes over 24576 image tokens at 1024²: at least 2\.6× the default's work/);
    assert.ok(!logs.some((l) => l.includes("panicked")), logs.join("\n"));
  } finally {
    await ctx.close();
  }
});

test("awkward files: a clear message or a sensible result, and the tab and document survive", { timeout: 240_000 }, async () => {
  const { ctx, page, logs } = await openPage();
  try {
    const base = picture(8, 8);
    await openFile(page, "base.png", encodePng(8, 8, base), "image/png");
    const kept = (await composite(page)).data;
    const fx = async (name) => readFile(`${fixtures}${name}`);
    const bomb = (side) => {
      const png = Buffer.from(encodePng(1, 1, new Uint8Array(4)));
      png.writeUInt32BE(side, 16); png.writeUInt32BE(side, 20);
      png.writeUInt32BE(crc32(png.subarray(12, 29)) >>> 0, 29);
      return png;
    };
    const refused = [
      ["empty.png", Buffer.alloc(0), /Could not open "empty\.png": the file is empty/],
      ["notes.txt", Buffer.from("plain text"), /not an image file this app can read/],
      ["bomb.png", bomb(30000), /30000×30000 pixels; the largest accepted is 16384×16384/],
      ["wide-bomb.png", bomb(12000), /12000×12000 pixels/],
      ["cut.png", encodePng(16, 16, picture(16, 16)).subarray(0, 60), /damaged or truncated/],
    ];
    for (const [name, bytes, want] of refused) {
      assert.match(await openFile(page, name, bytes), want, name);
      assert.equal(await page.getAttribute("#status", "role"), "alert");
      assert.deepEqual((await composite(page)).data, kept, `${name}: the document must be kept`);
      assert.deepEqual(await names(page), ["base.png"]);
    }
    await page.screenshot({ path: `${artifacts}/editor-5-refused-bomb.png` });

    const accepted = [
      ["one.png", /Opened "one\.png" \(1×1\)\.$/, 1, 1, [10, 20, 30, 255]],
      ["cmyk.jpg", /Opened "cmyk\.jpg" \(8×6\)\.$/, 8, 6, null],
      ["grey16.png", /Opened "grey16\.png" \(4×2\)\.$/, 4, 2, [0, 0, 0, 255]],
      ["rgba16.png", /Opened "rgba16\.png" \(3×1\)\.$/, 3, 1, [255, 0, 0, 255]],
      ["animated.gif", /animated GIF: only its first frame was opened/, 6, 4, [255, 0, 0, 255]],
      ["animated.webp", /animated WebP: only its first frame was opened/, 6, 4, [255, 0, 0, 255]],
      ["transparent.png", /fully transparent/, 5, 5, [0, 0, 0, 0]],
    ];
    for (const [name, want, w, h, first] of accepted) {
      assert.match(await openFile(page, name, await fx(name)), want, name);
      const c = await composite(page);
      assert.deepEqual([c.width, c.height], [w, h], name);
      if (first) assert.deepEqual(c.data.slice(0, 4), first, name);
    }
    const cmyk = await openFile(page, "cmyk.jpg", await fx("cmyk.jpg"));
    const c = await composite(page);
    assert.ok(c.data[0] < 30 && c.data[1] > 225 && c.data[2] > 225, `cyan ink opens as cyan: ${c.data.slice(0, 4)} (${cmyk})`);

    // Larger than the editor works at: scaled down with a notice.
    const big = encodePng(5000, 1200, new Uint8Array(5000 * 1200 * 4).fill(200));
    assert.match(await openFile(page, "wide.png", big, "image/png"),
      /5000×1200 pixels; it was scaled down to 4096×983 for editing/);
    assert.deepEqual(await names(page), ["wide.png"]);
    await page.screenshot({ path: `${artifacts}/editor-6-downscaled.png` });
    // The tab still works: undo goes back through every opened document.
    await page.keyboard.press("Control+z");
    assert.deepEqual(await names(page), ["cmyk.jpg"]);
    assert.ok(!logs.some((l) => l.includes("panicked")), logs.join("\n"));
  } finally {
    await ctx.close();
  }
});

test("paste and drop open images; every control has an accessible name and is reached by the keyboard; axe finds no WCAG AA violation", { timeout: 120_000 }, async () => {
  const { ctx, page } = await openPage();
  try {
    assert.deepEqual(await axeViolations(page), [], "the empty editor");
    const bytes = [...encodePng(2, 1, new Uint8Array([1, 2, 3, 255, 4, 5, 6, 255]))];
    await page.evaluate((b) => {
      const dt = new DataTransfer();
      dt.items.add(new File([new Uint8Array(b)], "pasted.png", { type: "image/png" }));
      document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
    }, bytes);
    await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("Opened"));
    assert.deepEqual(await names(page), ["pasted.png"]);
    assert.deepEqual((await composite(page)).data, [1, 2, 3, 255, 4, 5, 6, 255]);
    const unnamed = await page.evaluate(() => [...document.querySelectorAll("button, input, select, canvas[tabindex]")]
      .filter((e) => !e.hidden && !e.classList.contains("visually-hidden"))
      .filter((e) => !(e.getAttribute("aria-label") || e.labels?.length || e.textContent.trim()))
      .map((e) => e.outerHTML.slice(0, 80)));
    assert.deepEqual(unnamed, []);

    // A document of two layers, one hidden and half opaque, the top one selected; then the
    // same at a phone's width (the panel below the canvas); then an error in the status line.
    await page.click("#layer-duplicate");
    await page.locator("#layer-list input[type=checkbox]").first().uncheck();
    await page.locator("#layer-list .layer-opacity").first().fill("50");
    assert.equal(await page.getAttribute("body", "data-layers"), "2");
    assert.deepEqual(await axeViolations(page), [], "two layers");
    // The keyboard alone reaches every control enabled now, each layer row's included. Focus
    // in a row selects that layer, which enables the layer buttons that fit it: going forward
    // the bottom layer ends selected, so Down and Merge down are reached going back.
    const controls = () => page.evaluate(() => [...document.querySelectorAll("button, input, select, textarea, canvas[tabindex]")]
      .filter((e) => !e.disabled && e.getClientRects().length > 0)
      .map((e) => e.outerHTML.slice(0, 60)));
    const focusable = await controls();
    await page.evaluate(() => document.activeElement?.blur());
    const reached = new Set();
    for (const key of ["Tab", "Shift+Tab"]) {
      for (let i = 0; i < focusable.length + 5; i++) {
        await page.keyboard.press(key);
        reached.add(await page.evaluate(() => document.activeElement?.outerHTML.slice(0, 60)));
      }
    }
    assert.deepEqual(focusable.filter((c) => !reached.has(c)), [], "controls the keyboard never reaches");
    await page.setViewportSize({ width: 400, height: 800 });
    assert.deepEqual(await axeViolations(page), [], "two layers, 400 px wide");
    // Nothing is wider than the window (no sideways scrolling on a phone).
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= innerWidth),
      `page ${await page.evaluate(() => document.documentElement.scrollWidth)} px wide in a 400 px window`);
    await page.screenshot({ path: `${artifacts}/editor-8-narrow.png`, fullPage: true });
    assert.match(await openFile(page, "broken.png", Buffer.from("not a picture")), /^Could not/);
    assert.deepEqual(await axeViolations(page), [], "an error in the status line");
  } finally {
    await ctx.close();
  }
});

test("after one online visit the app opens and works offline (service worker)", { timeout: 180_000 }, async () => {
  const ctx = await browser.newContext({ viewport: { width: 900, height: 700 } });
  try {
    const { page } = await openPage(ctx);
    await page.evaluate(async () => {
      await navigator.serviceWorker.ready;
      if (!navigator.serviceWorker.controller) {
        await new Promise((ok) => navigator.serviceWorker.addEventListener("controllerchange", ok, { once: true }));
      }
    });
    const cached = await page.evaluate(async () => {
      const keys = await caches.keys();
      const cache = await caches.open(keys.find((k) => k.startsWith("app-shell-")));
      return (await cache.keys()).map((r) => new URL(r.url).pathname);
    });
    for (const f of ["/", "/app_bg.wasm", "/worker_bg.wasm", "/style.css", "/manifest.webmanifest"]) assert.ok(cached.includes(f), `${f} not cached: ${cached}`);
    await ctx.setOffline(true);
    await page.reload();
    await page.waitForSelector("body[data-layers]", { timeout: 60_000 });
    await page.setInputFiles("#file-input", { name: "offline.png", mimeType: "image/png", buffer: encodePng(3, 2, picture(3, 2)) });
    await page.waitForFunction(() => document.getElementById("status").textContent.includes("Opened \"offline.png\""));
    await page.screenshot({ path: `${artifacts}/editor-7-offline.png` });
    // The manifest makes it installable: name, start URL, icons that exist.
    const manifest = JSON.parse(await page.evaluate(async () => (await fetch("manifest.webmanifest")).text()));
    assert.equal(manifest.display, "standalone");
    assert.ok(manifest.icons.some((i) => i.sizes === "512x512"));
  } finally {
    await ctx.close();
  }
});
