// Benchmark (not a test): what the stored copy's checkpoint costs in the browser's OPFS.
//
// A stored quantized copy (`download::derived::store_quantized`) is written through a
// `FileSystemSyncAccessHandle` in a worker, and every CHECKPOINT_BYTES (64 MiB) it records how
// far it got: `flush()` on the copy, then a small `.part.json` written and flushed through its
// own sync handle (`OpfsPart::checkpoint`). This writes TOTAL MiB the same way, in 8 MiB
// writes, with a checkpoint every 8, 64 and 512 MiB and never, and prints the rate of each.
//
//   cd tests/e2e && node opfs-bench.mjs [TOTAL_MIB (1024)] [ROUNDS (3)]
//
// Headless Chromium (the one the end-to-end tests use), a fresh profile on the machine's disk.
import { chromium } from "playwright-core";
import { serveStatic } from "./server.mjs";
import { CHROMIUM, BASE_ARGS } from "./chromium.mjs";

const total = Number(process.argv[2] ?? 1024);
const rounds = Number(process.argv[3] ?? 3);

const worker = `
const MIB = 1 << 20;
async function run(totalMib, everyMib) {
  const root = await navigator.storage.getDirectory();
  const file = await root.getFileHandle("bench.bin", { create: true });
  const access = await file.createSyncAccessHandle();
  access.truncate(0);
  const chunk = new Uint8Array(8 * MIB);
  for (let i = 0; i < chunk.length; i += 4096) chunk[i] = i & 255;
  let checkpoints = 0, checkpointMs = 0;
  const start = performance.now();
  let recorded = 0;
  for (let at = 0; at < totalMib * MIB; at += chunk.length) {
    access.write(chunk, { at });
    const done = at + chunk.length;
    if (everyMib && done - recorded >= everyMib * MIB) {
      const t = performance.now();
      access.flush();
      const rec = await (await root.getFileHandle("bench.bin.part.json", { create: true })).createSyncAccessHandle();
      rec.truncate(0);
      rec.write(new TextEncoder().encode(JSON.stringify({ size: totalMib * MIB, offset: done })), { at: 0 });
      rec.flush();
      rec.close();
      checkpointMs += performance.now() - t;
      checkpoints += 1;
      recorded = done;
    }
  }
  access.flush();
  const ms = performance.now() - start;
  access.close();
  await root.removeEntry("bench.bin");
  await root.removeEntry("bench.bin.part.json").catch(() => {});
  return { ms, checkpoints, checkpointMs };
}
onmessage = async (e) => postMessage(await run(e.data.total, e.data.every));
`;
const page = `<!doctype html><script>
const w = new Worker("/bench-worker.js");
window.bench = (total, every) => new Promise((ok) => { w.onmessage = (e) => ok(e.data); w.postMessage({ total, every }); });
</script>`;

const app = await serveStatic(".", { "/bench.html": page, "/bench-worker.js": worker });
const browser = await chromium.launch({ executablePath: CHROMIUM, args: BASE_ARGS, headless: true });
try {
  const tab = await (await browser.newContext()).newPage();
  await tab.goto(`${app.url}bench.html`);
  console.log(`OPFS, ${total} MiB in 8 MiB writes, ${rounds} rounds each (median), ${await tab.evaluate(() => navigator.userAgent)}`);
  for (const every of [0, 512, 64, 8]) {
    const runs = [];
    for (let r = 0; r < rounds; r++) runs.push(await tab.evaluate(([t, e]) => window.bench(t, e), [total, every]));
    runs.sort((a, b) => a.ms - b.ms);
    const m = runs[Math.floor(runs.length / 2)];
    const per = m.checkpoints ? `, ${m.checkpoints} checkpoints, ${(m.checkpointMs / m.checkpoints).toFixed(1)} ms each` : "";
    console.log(`checkpoint ${every ? `every ${every} MiB` : "never"}: ${(total / (m.ms / 1000)).toFixed(0)} MiB/s (${m.ms.toFixed(0)} ms${per})`);
  }
} finally {
  await browser.close();
  await app.close();
}
