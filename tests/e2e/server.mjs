// A static file server for the built app (dist/), bound to 127.0.0.1 only.
import { createServer } from "node:http";
import { readFile, stat } from "node:fs/promises";
import { extname, join, normalize, resolve } from "node:path";

const TYPES = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8", ".wasm": "application/wasm", ".json": "application/json",
  ".png": "image/png", ".svg": "image/svg+xml", ".webmanifest": "application/manifest+json",
};

/** Serves `root` on 127.0.0.1 at a free port; resolves to { url, close }. `overrides` maps
 *  URL paths ("/models.json") to bodies served instead of the file (e.g. a registry pointing
 *  at a test's mock host; the service worker caches it like any shell file).
 *
 *  The release build's Content-Security-Policy lets the page and its model worker reach only
 *  the Hugging Face hosts; the page is served with `http://127.0.0.1:*` added to its
 *  `connect-src` (what a debug build has), so the app can reach the tests' mock hosts, unless
 *  `{ releaseCsp: true }`. */
export async function serveStatic(root, overrides = {}, { releaseCsp = false } = {}) {
  const base = resolve(root);
  const server = createServer(async (req, res) => {
    try {
      const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
      if (Object.hasOwn(overrides, path)) {
        res.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream",
          "cache-control": "no-store" });
        res.end(overrides[path]);
        return;
      }
      let file = normalize(join(base, path));
      if (!file.startsWith(base)) { res.writeHead(403).end(); return; }
      if ((await stat(file).catch(() => null))?.isDirectory()) file = join(file, "index.html");
      let body = await readFile(file);
      if (!releaseCsp && file === join(base, "index.html")) {
        const html = body.toString("utf8");
        const local = html.replace("connect-src 'self'", "connect-src 'self' http://127.0.0.1:*");
        if (local === html) throw new Error("index.html: no connect-src 'self' to extend");
        body = Buffer.from(local);
      }
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream",
        "cache-control": "no-store" });
      res.end(body);
    } catch {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found");
    }
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const { port } = server.address();
  return { url: `http://127.0.0.1:${port}/`, close: () => new Promise((ok) => server.close(ok)) };
}
