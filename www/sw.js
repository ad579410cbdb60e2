// Service worker: keeps the app shell (HTML, CSS, JS, wasm, icons) so the page opens offline
// after one online visit. It caches ONLY the files listed below, which the build writes
// (scripts/trunk-post-build.sh fills PRECACHE and VERSION from dist/); model weights, range
// downloads and anything in OPFS never pass through this cache.
const VERSION = "__BUILD_VERSION__";
const PRECACHE = ["./", /*__PRECACHE__*/];
const CACHE = `app-shell-${VERSION}`;

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    // `reload` bypasses the HTTP cache, so a new version never stores an old file.
    await cache.addAll(PRECACHE.map((url) => new Request(url, { cache: "reload" })));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) {
      if (key.startsWith("app-shell-") && key !== CACHE) await caches.delete(key);
    }
    await self.clients.claim();
  })());
});

const shell = new Set(PRECACHE.map((url) => new URL(url, self.registration.scope).href));

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  url.search = "";
  url.hash = "";
  const isPage = request.mode === "navigate" && url.origin === self.location.origin;
  if (!isPage && !shell.has(url.href)) return; // not ours: the network, untouched
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    const hit = await cache.match(isPage ? new URL("./", self.registration.scope).href : url.href);
    if (hit) return hit;
    return fetch(request);
  })());
});
