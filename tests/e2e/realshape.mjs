// The served app (dist/) on the real-shape model of tests/realshape/ (the real model's sizes and
// vocabulary, random weights, fewer layers): downloaded from the mock Hugging Face host into the
// browser's verified cache, quantized and stored as the real model's registry entry says, loaded
// onto WebGPU (SwiftShader in headless Chromium) and run on the reference input. Not part of
// `node --test` (its name does not end in .test.mjs): it moves 5 GB and takes many minutes.
//
//   node tests/e2e/realshape.mjs ROOT OUT [--seed K]
//
// ROOT is `make_model.py make`'s folder; the run uses ROOT/reference/input.png, its prompt and
// settings (ROOT/reference/case.json) with the page's seeded noise (`--seed`, default 0), and
// writes the layers the page exports (ZIP) to OUT/layer_*.png, its status lines and timings to
// OUT/page.json. Compare them with `qwen-layered decompose --seed K` at the same precisions.
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { serveStatic } from "./server.mjs";
import { CHROMIUM, BASE_ARGS, WEBGPU_ARGS } from "./chromium.mjs";
import { readZip } from "./formats.mjs";
import { startMockHf, loadRepoFromDir } from "../mock-hf/server.mjs";

const REPO = "test/qwen-image-layered-realshape";
const ID = "realshape-test";
const HOUR = 3_600_000;
const dist = fileURLToPath(new URL("../../dist/", import.meta.url));

const args = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = args.indexOf(name);
  if (i < 0) return fallback;
  const [value] = args.splice(i, 2).slice(1);
  return value;
};
const seed = flag("--seed", "0");
const [root, out] = args;
if (!root || !out) {
  console.error("usage: node tests/e2e/realshape.mjs ROOT OUT [--seed K]");
  process.exit(2);
}
if (!existsSync(`${dist}index.html`)) throw new Error(`no ${dist}index.html: run \`trunk build --release\` first`);
const reference = `${root}/reference`;
const kase = JSON.parse(await readFile(`${reference}/case.json`, "utf8"));
await mkdir(out, { recursive: true });

const hf = await startMockHf({ repos: { [REPO]: loadRepoFromDir(`${root}/${REPO}`) }, cdnOrigin: true });
// The committed registry plus one dev entry: the real model's entry (its components and
// precisions) pointed at this repository on the mock host, with the reference's working size.
const registry = JSON.parse(await readFile(`${dist}models.json`, "utf8"));
const real = registry.models.find((m) => m.id === "qwen-image-layered");
registry.models.push({
  ...real, id: ID, dev: true, host: hf.url, repo: REPO, revision: "main", resolutions: [kase.bucket],
  label: `Real-shape test model: the real sizes, random weights, ${kase.blocks} blocks`,
});
const server = await serveStatic(dist, { "/models.json": JSON.stringify(registry) });
// A profile on disk: a default (incognito-like) context keeps its storage in memory and runs
// out after about 2 GB, whatever `navigator.storage.estimate()` says.
const profile = `${out}/profile`;
await rm(profile, { recursive: true, force: true });
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM, args: [...BASE_ARGS, ...WEBGPU_ARGS], headless: true, viewport: { width: 1280, height: 900 },
});
const report = { seed: Number(seed), precisions: Object.fromEntries(real.components.map((c) => [c.name, c.precision ?? "as stored"])) };
const logs = [];
try {
  const page = browser.pages()[0] ?? await browser.newPage();
  page.on("console", (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`[pageerror] ${e.message}`));
  const wait = (selector, timeout) => page.waitForSelector(selector, { timeout }).catch((e) => {
    throw new Error(`${e.message}\nconsole:\n${logs.join("\n")}`);
  });
  // One phase: click `button`, wait until `body[data-FLAG]` is `ok` or `failed` (at most an
  // hour), record its status line as it changes (`status`) and how long it took; a failure
  // throws with the status line and the console.
  const phase = async (name, button, flag, ok, status) => {
    const seen = [];
    const poll = setInterval(() => {
      page.textContent(status).then((t) => { if (t && seen.at(-1) !== t) seen.push(t); }, () => {});
    }, 1000);
    const t0 = Date.now();
    await page.click(button);
    await wait(`body[data-${flag}=${ok}], body[data-${flag}=failed]`, HOUR).finally(() => clearInterval(poll));
    report[`${name}_s`] = (Date.now() - t0) / 1000;
    report[name] = seen;
    console.log(`${name}: ${report[`${name}_s`].toFixed(1)} s`);
    await writeFile(`${out}/page.json`, JSON.stringify(report, null, 1)); // so far, if stopped
    if (await page.getAttribute("body", `data-${flag}`) !== ok) {
      throw new Error(`${name} failed: ${await page.textContent(status)}\nconsole:\n${logs.join("\n")}`);
    }
  };
  await page.goto(server.url);
  await wait("body[data-gpu=ready]", 120_000);
  await wait("body[data-models=ready]", 120_000);
  await page.selectOption("#model-source", ID);
  await wait("body[data-cache=none], body[data-cache=partial], body[data-cache=cached]", 120_000);
  report.model_info = await page.textContent("#model-info");
  report.estimate = await page.evaluate(() => navigator.storage.estimate().then(({ quota, usage }) => ({ quota, usage })));

  await phase("download", "#download-model", "download", "done", "#download-status");
  await wait("body[data-cache=cached]", 60_000);
  report.cache = await page.textContent("#model-info");

  await phase("load", "#load-model", "model", "loaded", "#model-status");

  await page.setInputFiles("#file-input", {
    name: "input.png", mimeType: "image/png", buffer: await readFile(`${reference}/input.png`),
  });
  await page.waitForFunction(() => !document.getElementById("decompose").disabled);
  await page.fill("#set-layers", String(kase.layers));
  await page.fill("#set-steps", String(kase.steps));
  await page.selectOption("#set-resolution", String(kase.bucket));
  await page.fill("#set-cfg", String(kase.true_cfg_scale));
  await page.setChecked("#set-cfg-normalize", kase.cfg_normalize);
  await page.fill("#set-seed", seed);
  await page.fill("#set-prompt", kase.prompt);
  await phase("run", "#decompose", "run", "done", "#run-status");
  await page.screenshot({ path: `${out}/page.png` });

  const [dl] = await Promise.all([page.waitForEvent("download"), page.click("#export-zip")]);
  const zipPath = `${out}/layers.zip`;
  await dl.saveAs(zipPath);
  const zip = readZip(await readFile(zipPath));
  const manifest = JSON.parse(zip.entries.get("manifest.json").toString());
  // The ZIP lists layers bottom to top, as `decompose` numbers them.
  await Promise.all(manifest.layers.map((l, i) => writeFile(`${out}/layer_${i}.png`, zip.entries.get(l.file))));
  report.layers = manifest.layers.map((l) => [l.name, l.x, l.y]);
  console.log(`${manifest.layers.length} layers written to ${out}`);
} finally {
  report.console = logs.slice(-50);
  await writeFile(`${out}/page.json`, JSON.stringify(report, null, 1));
  await browser.close();
  await rm(profile, { recursive: true, force: true });
  await server.close();
  await hf.close();
}
