// Tests for the mock Hugging Face host. Run: node --test tests/mock-hf/
import { test, describe, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startMockHf, parseRange, loadRepoFromDir, loadReposFromRoot } from './server.mjs';
import { makeTestModelRepo, makeSafetensors, pseudoRandomBytes, sha256Hex } from './testmodel.mjs';
import { globToRegExp, compileFaults } from './faults.mjs';
import { gitBlobOid, lfsPointer } from './repo.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = 'test/tiny';
const BIG = 'transformer/diffusion_pytorch_model.safetensors';   // LFS, 3 MiB
const VAE = 'vae/diffusion_pytorch_model.safetensors';            // LFS, 256 KiB
const CFG = 'transformer/config.json';                             // regular git file
const spec = makeTestModelRepo({ seed: 7 });
const bytes = (p) => spec.files[p];
const sha = (buf) => createHash('sha256').update(buf).digest('hex');
const T = (ms = 5000) => AbortSignal.timeout(ms);   // every request is bounded in time

let srv;
let U;
const resolveUrl = (p, rev = 'main', repo = REPO) => `${U}/${repo}/resolve/${rev}/${p}`;

/** GET and collect the body; a network error mid-body comes back as { error, received }. */
async function getBody(url, init = {}) {
  const res = await fetch(url, { signal: T(), ...init });
  const parts = [];
  try {
    for await (const c of res.body) parts.push(c);
  } catch (error) {
    return { res, body: Buffer.concat(parts), error };
  }
  return { res, body: Buffer.concat(parts), error: null };
}

before(async () => {
  srv = await startMockHf({ repos: { [REPO]: spec } });
  U = srv.url;
});
after(() => srv.close());
beforeEach(() => { srv.setFaults([]); srv.resetStats(); });

describe('hub: resolve', () => {
  test('LFS file: 302 to the CDN with HF headers (redirect: manual)', async () => {
    const info = srv.fileInfo(REPO, BIG);
    const res = await fetch(resolveUrl(BIG), { redirect: 'manual', signal: T() });
    assert.equal(res.status, 302);
    const loc = new URL(res.headers.get('location'));
    assert.equal(loc.origin, U);
    assert.equal(loc.pathname, `/cdn/${info.sha256}`);
    assert.equal(res.headers.get('x-linked-etag'), `"${sha(bytes(BIG))}"`);
    assert.equal(res.headers.get('x-linked-size'), String(bytes(BIG).length));
    assert.equal(res.headers.get('x-repo-commit'), info.revision);
    assert.match(info.revision, /^[0-9a-f]{40}$/);
    assert.equal(res.headers.get('etag'), `"${info.sha256}"`);
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
    assert.match(await res.text(), /^Found\. Redirecting to http/);
  });

  test('HEAD on resolve: same 302 headers, no body', async () => {
    const res = await fetch(resolveUrl(BIG), { method: 'HEAD', redirect: 'manual', signal: T() });
    assert.equal(res.status, 302);
    assert.equal(res.headers.get('x-linked-size'), String(bytes(BIG).length));
    assert.equal((await res.arrayBuffer()).byteLength, 0);
  });

  test('following the redirect yields the exact bytes; pinned revision works too', async () => {
    const rev = srv.fileInfo(REPO, BIG).revision;
    for (const r of ['main', rev]) {
      const { res, body } = await getBody(resolveUrl(BIG, r));
      assert.equal(res.status, 200);
      assert.equal(res.redirected, true);
      assert.equal(res.headers.get('etag'), `"${sha(bytes(BIG))}"`);
      assert.equal(res.headers.get('content-length'), String(bytes(BIG).length));
      assert.equal(res.headers.get('accept-ranges'), 'bytes');
      assert.equal(sha(body), sha(bytes(BIG)));
    }
    const st = srv.stats().files[`${REPO}/${BIG}`];
    assert.deepEqual([st.resolve, st.cdn, st.bytesSent], [2, 2, 2 * bytes(BIG).length]);
    assert.deepEqual(st.ranges, [null, null]);
  });

  test('regular (non-LFS) file: 200 straight from resolve, ETag = git blob oid, Range works', async () => {
    const { res, body } = await getBody(resolveUrl(CFG), { redirect: 'manual' });
    assert.equal(res.status, 200);
    assert.deepEqual(body, bytes(CFG));
    assert.equal(res.headers.get('etag'), `"${gitBlobOid(bytes(CFG))}"`);
    assert.equal(res.headers.get('x-linked-etag'), null);
    assert.equal(res.headers.get('x-repo-commit'), srv.fileInfo(REPO, CFG).revision);
    const r2 = await getBody(resolveUrl(CFG), { headers: { Range: 'bytes=2-5' } });
    assert.equal(r2.res.status, 206);
    assert.deepEqual(r2.body, bytes(CFG).subarray(2, 6));
  });

  test('404s carry HF error codes: repo, revision, entry', async () => {
    const cases = [
      [`${U}/nobody/nothing/resolve/main/x.json`, 'RepoNotFound'],
      [resolveUrl(CFG, 'f'.repeat(40)), 'RevisionNotFound'],
      [resolveUrl('no/such/file.bin'), 'EntryNotFound'],
      [`${U}/some/other/path`, 'NotFound'],
    ];
    for (const [url, code] of cases) {
      const res = await fetch(url, { signal: T() });
      assert.equal(res.status, 404, url);
      assert.equal(res.headers.get('x-error-code'), code);
      assert.equal(res.headers.get('access-control-allow-origin'), '*');
      assert.equal(typeof (await res.json()).error, 'string');
    }
  });

  test('raw/ returns the LFS pointer for LFS files and the content for regular files', async () => {
    const info = srv.fileInfo(REPO, BIG);
    let res = await fetch(`${U}/${REPO}/raw/main/${BIG}`, { signal: T() });
    assert.equal(await res.text(), lfsPointer(info.sha256, info.size));
    res = await fetch(`${U}/${REPO}/raw/main/${CFG}`, { signal: T() });
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), bytes(CFG));
  });

  test('POST to a file is 405', async () => {
    const res = await fetch(resolveUrl(CFG), { method: 'POST', body: 'x', signal: T() });
    assert.equal(res.status, 405);
  });
});

describe('cdn: ranges', () => {
  let cdn;
  const size = () => bytes(BIG).length;
  before(async () => {
    const res = await fetch(resolveUrl(BIG), { redirect: 'manual', signal: T() });
    cdn = res.headers.get('location');
    await res.arrayBuffer();
  });

  const ranged = (range, extra = {}) => getBody(cdn, { headers: { Range: range, ...extra } });

  test('bytes=a-b → 206 with Content-Range, Content-Length, ETag', async () => {
    const { res, body } = await ranged('bytes=1000-1999');
    assert.equal(res.status, 206);
    assert.equal(res.headers.get('content-range'), `bytes 1000-1999/${size()}`);
    assert.equal(res.headers.get('content-length'), '1000');
    assert.equal(res.headers.get('accept-ranges'), 'bytes');
    assert.equal(res.headers.get('etag'), `"${sha(bytes(BIG))}"`);
    assert.deepEqual(body, bytes(BIG).subarray(1000, 2000));
  });

  test('open-ended, suffix and over-long ranges', async () => {
    let r = await ranged(`bytes=${size() - 10}-`);
    assert.equal(r.res.status, 206);
    assert.deepEqual(r.body, bytes(BIG).subarray(size() - 10));
    r = await ranged('bytes=-16');
    assert.equal(r.res.headers.get('content-range'), `bytes ${size() - 16}-${size() - 1}/${size()}`);
    assert.deepEqual(r.body, bytes(BIG).subarray(size() - 16));
    r = await ranged(`bytes=${size() - 4}-${size() + 100}`);
    assert.equal(r.res.status, 206);
    assert.equal(r.body.length, 4);
  });

  test('unsatisfiable range → 416 with Content-Range: bytes */size', async () => {
    const { res } = await ranged(`bytes=${size()}-`);
    assert.equal(res.status, 416);
    assert.equal(res.headers.get('content-range'), `bytes */${size()}`);
    assert.equal(srv.stats().files[`${REPO}/${BIG}`].ranges[0].unsatisfiable, true);
  });

  test('multi-range and malformed Range are answered 200 with the full body', async () => {
    for (const r of ['bytes=0-1,5-6', 'items=0-1', 'bytes=9-3']) {
      const { res, body } = await ranged(r);
      assert.equal(res.status, 200, r);
      assert.equal(body.length, size());
    }
  });

  test('If-Range: matching ETag → 206, stale ETag → 200 full', async () => {
    let r = await ranged('bytes=0-9', { 'If-Range': `"${sha(bytes(BIG))}"` });
    assert.equal(r.res.status, 206);
    r = await ranged('bytes=0-9', { 'If-Range': '"stale"' });
    assert.equal(r.res.status, 200);
    assert.equal(r.body.length, size());
  });

  test('HEAD on the CDN, with and without Range', async () => {
    let res = await fetch(cdn, { method: 'HEAD', signal: T() });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-length'), String(size()));
    res = await fetch(cdn, { method: 'HEAD', headers: { Range: 'bytes=10-19' }, signal: T() });
    assert.equal(res.status, 206);
    assert.equal(res.headers.get('content-length'), '10');
    assert.equal((await res.arrayBuffer()).byteLength, 0);
  });

  test('unknown CDN object → 404 (S3-style XML)', async () => {
    const res = await fetch(`${U}/cdn/${'0'.repeat(64)}`, { signal: T() });
    assert.equal(res.status, 404);
    assert.match(await res.text(), /<Code>NoSuchKey<\/Code>/);
  });
});

describe('CORS', () => {
  test('preflight OPTIONS allows Range from any origin and caches', async () => {
    const res = await fetch(resolveUrl(BIG), {
      method: 'OPTIONS', signal: T(),
      headers: { Origin: 'http://127.0.0.1:9999', 'Access-Control-Request-Method': 'GET', 'Access-Control-Request-Headers': 'range,if-range' },
    });
    assert.equal(res.status, 204);
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
    assert.match(res.headers.get('access-control-allow-methods'), /GET/);
    assert.match(res.headers.get('access-control-allow-headers'), /range/i);
    assert.equal(res.headers.get('access-control-max-age'), '86400');
  });

  test('responses expose the headers a downloader needs', async () => {
    const { res } = await getBody(resolveUrl(BIG), { headers: { Range: 'bytes=0-0', Origin: 'http://127.0.0.1:9999' } });
    const exposed = res.headers.get('access-control-expose-headers').toLowerCase().split(/,\s*/);
    for (const h of ['content-range', 'content-length', 'etag', 'x-linked-etag', 'x-linked-size', 'x-repo-commit', 'retry-after']) {
      assert.ok(exposed.includes(h), h);
    }
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
  });

  test('preflight on the control endpoint', async () => {
    const res = await fetch(`${U}/__control/faults`, { method: 'OPTIONS', headers: { 'Access-Control-Request-Headers': 'content-type' }, signal: T() });
    assert.equal(res.status, 204);
    assert.match(res.headers.get('access-control-allow-methods'), /POST/);
  });
});

describe('hub API', () => {
  test('tree listing, recursive: directories and files, lfs { oid: sha256, size, pointerSize }', async () => {
    const res = await fetch(`${U}/api/models/${REPO}/tree/main?recursive=true`, { signal: T() });
    assert.equal(res.status, 200);
    const entries = await res.json();
    const files = entries.filter((e) => e.type === 'file');
    assert.deepEqual(files.map((e) => e.path).sort(), Object.keys(spec.files).sort());
    assert.ok(entries.some((e) => e.type === 'directory' && e.path === 'transformer' && e.size === 0));
    const big = entries.find((e) => e.path === BIG);
    const ptr = lfsPointer(sha(bytes(BIG)), bytes(BIG).length);
    assert.deepEqual(big, {
      type: 'file', oid: gitBlobOid(Buffer.from(ptr)), size: bytes(BIG).length, path: BIG,
      lfs: { oid: sha(bytes(BIG)), size: bytes(BIG).length, pointerSize: ptr.length },
    });
    const cfg = entries.find((e) => e.path === CFG);
    assert.deepEqual(cfg, { type: 'file', oid: gitBlobOid(bytes(CFG)), size: bytes(CFG).length, path: CFG });
  });

  test('tree listing: non-recursive, subfolder, pinned revision, unknown folder', async () => {
    const get = async (p) => { const r = await fetch(`${U}/api/models/${REPO}/tree/${p}`, { signal: T() }); return [r.status, await r.json()]; };
    let [st, e] = await get('main');
    assert.equal(st, 200);
    assert.ok(e.every((x) => !x.path.includes('/')));
    assert.ok(e.some((x) => x.path === 'model_index.json') && e.some((x) => x.path === 'vae' && x.type === 'directory'));
    [st, e] = await get(`${srv.fileInfo(REPO, BIG).revision}/vae`);
    assert.deepEqual(e.map((x) => x.path), ['vae/config.json', VAE]);
    [st] = await get('main/nope');
    assert.equal(st, 404);
    [st, e] = await get('0123456789012345678901234567890123456789');
    assert.equal(st, 404);
  });

  test('model info and revision endpoints: sha and siblings', async () => {
    const rev = srv.fileInfo(REPO, BIG).revision;
    for (const p of [`${REPO}`, `${REPO}/revision/main`, `${REPO}/revision/${rev}`]) {
      const res = await fetch(`${U}/api/models/${p}`, { signal: T() });
      assert.equal(res.status, 200, p);
      const j = await res.json();
      assert.equal(j.id, REPO);
      assert.equal(j.sha, rev);
      assert.deepEqual(j.siblings.map((s) => s.rfilename), Object.keys(spec.files).sort());
    }
    const res = await fetch(`${U}/api/models/nobody/nothing/revision/main`, { signal: T() });
    assert.equal(res.status, 404);
    assert.deepEqual(await res.json(), { error: 'Repository not found' });
  });
});

describe('faults', () => {
  test('status 404 / 403 / 500 at the resolve stage', async () => {
    for (const status of [404, 403, 500]) {
      srv.setFaults([{ path: BIG, stage: 'resolve', status }]);
      const res = await fetch(resolveUrl(BIG), { signal: T() });
      assert.equal(res.status, status);
      assert.equal(res.headers.get('access-control-allow-origin'), '*');
      await res.arrayBuffer();
    }
    assert.equal(srv.stats().files[`${REPO}/${BIG}`].cdn, 0);
  });

  test('429 with Retry-After twice, then success (bounded retry loop)', async () => {
    srv.setFaults([{ path: '**/*.safetensors', status: 429, retryAfter: 3, times: 2 }]);
    const seen = [];
    let body;
    for (let i = 0; i < 5; i++) {
      const res = await fetch(resolveUrl(VAE), { signal: T() });
      seen.push([res.status, res.headers.get('retry-after')]);
      if (res.ok) { body = Buffer.from(await res.arrayBuffer()); break; }
      await res.arrayBuffer();
    }
    assert.deepEqual(seen, [[429, '3'], [429, '3'], [200, null]]);
    assert.equal(sha(body), sha(bytes(VAE)));
    const st = srv.stats().files[`${REPO}/${VAE}`];
    assert.deepEqual(st.statuses, { 302: 3, 429: 2, 200: 1 });
    assert.deepEqual(srv.getFaults()[0].counters, { [`${REPO}/${VAE}`]: 3 });
  });

  test('503 with and without Retry-After; attempts as a list', async () => {
    srv.setFaults([{ path: VAE, status: 503, retryAfter: 1, attempts: [1] }, { path: VAE, status: 503, attempts: [2] }]);
    const a = await fetch(resolveUrl(VAE), { signal: T() });
    const b = await fetch(resolveUrl(VAE), { signal: T() });
    const c = await fetch(resolveUrl(VAE), { signal: T() });
    assert.deepEqual([a.status, b.status, c.status], [503, 503, 200]);
    assert.equal(a.headers.get('retry-after'), '1');
    assert.equal(b.headers.get('retry-after'), null);
    assert.match(await a.text(), /<Error>/);   // the CDN answers with an S3-style body
    await Promise.all([b.arrayBuffer(), c.arrayBuffer()]);
  });

  test('connection reset after K bytes; stats count K', async () => {
    srv.setFaults([{ path: VAE, fault: 'reset', afterBytes: 10_000 }]);
    const { res, body, error } = await getBody(resolveUrl(VAE));
    assert.equal(res.status, 200);
    assert.ok(error, 'the body must fail');
    assert.ok(body.length <= 10_000);
    assert.deepEqual(body, bytes(VAE).subarray(0, body.length));
    assert.equal(srv.stats().files[`${REPO}/${VAE}`].bytesSent, 10_000);
  });

  test('reset before any header: fetch rejects', async () => {
    srv.setFaults([{ path: VAE, stage: 'resolve', fault: 'reset', headers: false }]);
    await assert.rejects(fetch(resolveUrl(VAE), { signal: T() }));
  });

  test('truncated body: full Content-Length, K bytes, clean close', async () => {
    srv.setFaults([{ path: VAE, fault: 'truncate', afterBytes: 5000 }]);
    const { res, body, error } = await getBody(resolveUrl(VAE));
    assert.equal(res.headers.get('content-length'), String(bytes(VAE).length));
    assert.ok(error);
    assert.equal(body.length, 5000);
    assert.deepEqual(body, bytes(VAE).subarray(0, 5000));
  });

  test('wrong Content-Length: shorter is silently short, longer fails', async () => {
    srv.setFaults([{ path: VAE, fault: 'wrong-length', delta: -1, attempts: 1 }, { path: VAE, fault: 'wrong-length', delta: 100, attempts: 2 }]);
    let r = await getBody(resolveUrl(VAE));
    assert.equal(r.error, null);
    assert.equal(r.res.headers.get('content-length'), String(bytes(VAE).length - 1));
    assert.equal(r.body.length, bytes(VAE).length - 1);
    r = await getBody(resolveUrl(VAE));
    assert.equal(r.res.headers.get('content-length'), String(bytes(VAE).length + 100));
    assert.ok(r.error);
    r = await getBody(resolveUrl(VAE));   // third attempt: healthy (and the connection pool recovered)
    assert.equal(sha(r.body), sha(bytes(VAE)));
  });

  test('wrong sha256: corrupted bytes under the right ETag and length', async () => {
    srv.setFaults([{ path: VAE, fault: 'corrupt', attempts: 1 }, { path: VAE, fault: 'corrupt', at: [100_000, 200_000], attempts: 2 }]);
    let { res, body } = await getBody(resolveUrl(VAE));
    assert.equal(res.headers.get('etag'), `"${sha(bytes(VAE))}"`);
    assert.equal(body.length, bytes(VAE).length);
    assert.notEqual(sha(body), sha(bytes(VAE)));
    assert.equal(body[0], bytes(VAE)[0] ^ 0xff);
    ({ body } = await getBody(resolveUrl(VAE), { headers: { Range: 'bytes=100000-' } }));
    const want = Buffer.from(bytes(VAE).subarray(100_000));
    want[0] ^= 0xff; want[100_000] ^= 0xff;
    assert.deepEqual(body, want);
  });

  test('Range ignored: 200 with the full body', async () => {
    srv.setFaults([{ path: VAE, fault: 'ignore-range' }]);
    const { res, body } = await getBody(resolveUrl(VAE), { headers: { Range: 'bytes=100-' } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-range'), null);
    assert.deepEqual(body, bytes(VAE));
  });

  test('slow link: throttled to B bytes/s', async () => {
    srv.setFaults([{ path: VAE, fault: 'slow', bytesPerSec: 1000 }]);
    const t0 = Date.now();
    const { body } = await getBody(resolveUrl(VAE), { headers: { Range: 'bytes=0-199' } });
    const ms = Date.now() - t0;
    assert.equal(body.length, 200);
    assert.ok(ms >= 120 && ms < 2000, `${ms} ms for 200 B at 1000 B/s`);
  });

  test('slow link is bounded by maxMs, then the rest arrives at full speed', async () => {
    srv.setFaults([{ path: VAE, fault: 'slow', bytesPerSec: 1000, maxMs: 150 }]);
    const t0 = Date.now();
    const { body } = await getBody(resolveUrl(VAE));
    const ms = Date.now() - t0;
    assert.equal(sha(body), sha(bytes(VAE)));
    assert.ok(ms >= 120 && ms < 2000, `${ms} ms`);
  });

  test('delay before the response', async () => {
    srv.setFaults([{ path: CFG, delayMs: 150 }]);
    const t0 = Date.now();
    const { res } = await getBody(resolveUrl(CFG));
    assert.equal(res.status, 200);
    assert.ok(Date.now() - t0 >= 140);
  });

  test('redirect loop: 302 to itself; fetch gives up', async () => {
    srv.setFaults([{ path: BIG, fault: 'redirect-loop' }]);
    const res = await fetch(resolveUrl(BIG), { redirect: 'manual', signal: T() });
    assert.equal(res.status, 302);
    assert.equal(res.headers.get('location'), resolveUrl(BIG));
    await res.arrayBuffer();
    await assert.rejects(fetch(resolveUrl(BIG), { signal: T() }));
    assert.ok(srv.stats().files[`${REPO}/${BIG}`].resolve > 10);
  });

  test('no redirect: the LFS file is served straight from resolve', async () => {
    srv.setFaults([{ path: VAE, fault: 'no-redirect' }]);
    const { res, body } = await getBody(resolveUrl(VAE), { redirect: 'manual', headers: { Range: 'bytes=10-19' } });
    assert.equal(res.status, 206);
    assert.equal(res.headers.get('x-linked-size'), String(bytes(VAE).length));
    assert.deepEqual(body, bytes(VAE).subarray(10, 20));
  });

  test('cors: false strips the CORS headers (what a browser sees as a network error)', async () => {
    srv.setFaults([{ path: CFG, status: 502, cors: false }]);
    const res = await fetch(resolveUrl(CFG), { signal: T() });
    assert.equal(res.status, 502);
    assert.equal(res.headers.get('access-control-allow-origin'), null);
    await res.arrayBuffer();
  });

  test('filters: method, stage api, repo glob; HEAD does not consume a GET rule', async () => {
    srv.setFaults([
      { path: '/api/models/**', stage: 'api', status: 503, times: 1 },
      { path: CFG, method: 'GET', status: 500, times: 1 },
      { repo: 'other/*', status: 404 },
    ]);
    let res = await fetch(`${U}/api/models/${REPO}/tree/main`, { signal: T() });
    assert.equal(res.status, 503); await res.arrayBuffer();
    res = await fetch(`${U}/api/models/${REPO}/tree/main`, { signal: T() });
    assert.equal(res.status, 200); await res.arrayBuffer();
    res = await fetch(resolveUrl(CFG), { method: 'HEAD', signal: T() });
    assert.equal(res.status, 200);
    res = await fetch(resolveUrl(CFG), { signal: T() });
    assert.equal(res.status, 500); await res.arrayBuffer();
    res = await fetch(resolveUrl(CFG), { signal: T() });
    assert.equal(res.status, 200); await res.arrayBuffer();
  });

  test('setFaults validates and resets the attempt counters', () => {
    assert.throws(() => srv.setFaults([{ fault: 'explode' }]), /unknown fault/);
    assert.throws(() => srv.setFaults([{ status: 429, retryAfter: -1 }]), /retryAfter/);
    assert.throws(() => srv.setFaults([{ fault: 'slow' }]), /bytesPerSec/);
    assert.throws(() => srv.setFaults([{ status: 500, attempts: 'x' }]), /attempts/);
    assert.throws(() => srv.setFaults({}), /array/);
    srv.setFaults([{ status: 500, times: 1 }]);
    assert.deepEqual(srv.getFaults()[0].counters, {});
  });
});

describe('control endpoint', () => {
  test('POST/GET/DELETE /__control/faults, GET /__control/stats, POST /__control/reset', async () => {
    let res = await fetch(`${U}/__control/faults`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, signal: T(),
      body: JSON.stringify({ faults: [{ path: CFG, status: 429, retryAfter: 2, times: 1 }] }),
    });
    assert.equal(res.status, 200);
    assert.equal((await res.json()).faults.length, 1);
    res = await fetch(resolveUrl(CFG), { signal: T() });
    assert.equal(res.status, 429); await res.arrayBuffer();
    res = await fetch(`${U}/__control/faults`, { signal: T() });
    assert.deepEqual((await res.json()).faults[0].counters, { [`${REPO}/${CFG}`]: 1 });
    res = await fetch(`${U}/__control/stats`, { signal: T() });
    const st = await res.json();
    assert.equal(st.files[`${REPO}/${CFG}`].statuses['429'], 1);
    assert.equal(st.log.at(-1).fault, 'status');
    assert.equal(st.log.at(-1).attempt, 1);
    res = await fetch(`${U}/__control/reset`, { method: 'POST', signal: T() });
    assert.equal(res.status, 200); await res.arrayBuffer();
    assert.equal(srv.stats().requests, 0);
    res = await fetch(`${U}/__control/faults`, { method: 'DELETE', signal: T() });
    assert.deepEqual(await res.json(), { faults: [] });
    res = await fetch(`${U}/__control/faults`, { method: 'POST', body: '[{"fault":"nope"}]', signal: T() });
    assert.equal(res.status, 400);
    assert.match((await res.json()).error, /unknown fault/);
    res = await fetch(`${U}/__control/faults`, { method: 'POST', body: '{not json', signal: T() });
    assert.equal(res.status, 400); await res.arrayBuffer();
    assert.equal(srv.stats().requests, 0, 'control requests are not counted');
  });
});

test('resume scenario: stats show the resumed offset and no re-downloaded bytes', async () => {
  const K = 1_000_000;
  srv.setFaults([{ path: BIG, fault: 'reset', afterBytes: K, times: 1 }]);
  const first = await getBody(resolveUrl(BIG));
  assert.ok(first.error);
  const have = first.body.length;
  const second = await getBody(resolveUrl(BIG), { headers: { Range: `bytes=${have}-` } });
  assert.equal(second.res.status, 206);
  assert.equal(sha(Buffer.concat([first.body, second.body])), sha(bytes(BIG)));
  const st = srv.stats().files[`${REPO}/${BIG}`];
  assert.deepEqual(st.ranges, [null, { header: `bytes=${have}-`, start: have, end: bytes(BIG).length - 1 }]);
  assert.equal(st.bytesSent, K + bytes(BIG).length - have);
  assert.equal(st.faults, 1);
});

test('separate CDN origin: the redirect crosses origins', async () => {
  const s2 = await startMockHf({ repos: { [REPO]: spec }, cdnOrigin: true });
  try {
    assert.notEqual(s2.cdnUrl, s2.url);
    const res = await fetch(`${s2.url}/${REPO}/resolve/main/${VAE}`, { redirect: 'manual', signal: T() });
    assert.ok(res.headers.get('location').startsWith(`${s2.cdnUrl}/cdn/`));
    await res.arrayBuffer();
    const { res: r2, body } = await getBody(`${s2.url}/${REPO}/resolve/main/${VAE}`);
    assert.ok(r2.url.startsWith(s2.cdnUrl));
    assert.equal(sha(body), sha(bytes(VAE)));
    const r3 = await fetch(`${s2.cdnUrl}/${REPO}/resolve/main/${VAE}`, { signal: T() });
    assert.equal(r3.status, 404); await r3.arrayBuffer();
  } finally { await s2.close(); }
});

test('close() ends a slow download in flight promptly', async () => {
  const s2 = await startMockHf({ repos: { [REPO]: spec }, faults: [{ path: VAE, fault: 'slow', bytesPerSec: 100, maxMs: 60_000 }] });
  const res = await fetch(`${s2.url}/${REPO}/resolve/main/${VAE}`, { signal: T() });
  const reader = res.body.getReader();
  await reader.read();
  const t0 = Date.now();
  await s2.close();
  assert.ok(Date.now() - t0 < 1000);
  await assert.rejects(async () => { for (let i = 0; i < 10_000; i++) if ((await reader.read()).done) throw new Error('ended cleanly'); });
});

describe('test model generator', () => {
  test('deterministic, exact sizes, seed-dependent', () => {
    const a = makeTestModelRepo({ seed: 3 });
    const b = makeTestModelRepo({ seed: 3 });
    const c = makeTestModelRepo({ seed: 4 });
    for (const p of Object.keys(a.files)) assert.deepEqual(a.files[p], b.files[p], p);
    assert.notDeepEqual(a.files[BIG], c.files[BIG]);
    assert.equal(a.files[BIG].length, 3 * 1024 * 1024);
    assert.deepEqual(pseudoRandomBytes(37, 1, 'x'), pseudoRandomBytes(37, 1, 'x'));
    assert.equal(pseudoRandomBytes(37, 1, 'x').length, 37);
    assert.equal(sha256Hex(Buffer.from('abc')), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });

  test('safetensors blobs are valid: header length, JSON, data offsets fill the file', () => {
    for (const size of [160, 161, 1001, 3 * 1024 * 1024]) {
      const buf = makeSafetensors(size, 1, 'x');
      assert.equal(buf.length, size);
      const n = Number(buf.readBigUInt64LE(0));
      assert.equal(n % 8, 0);
      const hdr = JSON.parse(buf.subarray(8, 8 + n).toString());
      assert.equal(8 + n + hdr.weight.data_offsets[1], size);
      assert.deepEqual(hdr.weight.shape, [hdr.weight.data_offsets[1]]);
    }
    assert.equal(makeSafetensors(60).length, 60);   // too small for a header: plain bytes
  });

  test('sharded transformer with an index', () => {
    const r = makeTestModelRepo({ transformerShards: 3, transformerSize: 300_001 });
    const idx = JSON.parse(r.files['transformer/diffusion_pytorch_model.safetensors.index.json']);
    const shards = [...new Set(Object.values(idx.weight_map))];
    assert.deepEqual(shards, [1, 2, 3].map((i) => `diffusion_pytorch_model-0000${i}-of-00003.safetensors`));
    assert.equal(shards.reduce((s, n) => s + r.files[`transformer/${n}`].length, 0), 300_001);
    assert.equal(idx.metadata.total_size, 300_001);
  });
});

describe('folders and CLI', () => {
  let dir;
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'mock-hf-'));
    mkdirSync(path.join(dir, 'acme/model/sub'), { recursive: true });
    writeFileSync(path.join(dir, 'acme/model/config.json'), '{"a":1}\n');
    writeFileSync(path.join(dir, 'acme/model/sub/w.safetensors'), pseudoRandomBytes(70_000, 9));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('loadRepoFromDir / loadReposFromRoot serve files from disk', async () => {
    const repos = loadReposFromRoot(dir);
    assert.deepEqual(Object.keys(repos), ['acme/model']);
    const one = loadRepoFromDir(path.join(dir, 'acme/model'), { revision: 'a'.repeat(40) });
    const s2 = await startMockHf({ repos: { 'acme/model': one } });
    try {
      const { res, body } = await getBody(`${s2.url}/acme/model/resolve/main/sub/w.safetensors`, { headers: { Range: 'bytes=69990-' } });
      assert.equal(res.status, 206);
      assert.deepEqual(body, pseudoRandomBytes(70_000, 9).subarray(69_990));
      assert.equal(s2.fileInfo('acme/model', 'sub/w.safetensors').revision, 'a'.repeat(40));
      const tree = await (await fetch(`${s2.url}/api/models/acme/model/tree/main?recursive=1`, { signal: T() })).json();
      assert.deepEqual(tree.map((e) => e.path), ['config.json', 'sub', 'sub/w.safetensors']);
    } finally { await s2.close(); }
  });

  test('CLI serves a folder as a repo and prints its URL', async () => {
    const child = spawn(process.execPath, [path.join(HERE, 'server.mjs'), '--root', path.join(dir, 'acme/model'), '--repo', 'acme/model', '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      const url = await new Promise((resolve, reject) => {
        let out = '';
        const timer = setTimeout(() => reject(new Error(`no URL printed: ${out}`)), 5000);
        child.stdout.on('data', (d) => {
          out += d;
          const m = /^(http:\/\/127\.0\.0\.1:\d+)$/m.exec(out);
          if (m) { clearTimeout(timer); resolve(m[1]); }
        });
        child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`exited ${code}`)); });
      });
      const res = await fetch(`${url}/acme/model/resolve/main/config.json`, { signal: T() });
      assert.equal(await res.text(), '{"a":1}\n');
    } finally {
      child.kill('SIGTERM');
    }
  });
});

describe('units', () => {
  test('parseRange', () => {
    assert.deepEqual(parseRange(undefined, 10), { kind: 'none' });
    assert.deepEqual(parseRange('bytes=0-4', 10), { kind: 'range', start: 0, end: 4 });
    assert.deepEqual(parseRange('bytes=5-', 10), { kind: 'range', start: 5, end: 9 });
    assert.deepEqual(parseRange('bytes=-3', 10), { kind: 'range', start: 7, end: 9 });
    assert.deepEqual(parseRange('bytes=-30', 10), { kind: 'range', start: 0, end: 9 });
    assert.deepEqual(parseRange('bytes=10-', 10), { kind: 'unsatisfiable' });
    assert.deepEqual(parseRange('bytes=-0', 10), { kind: 'unsatisfiable' });
    assert.deepEqual(parseRange('bytes=0-1,3-4', 10), { kind: 'multi' });
    assert.deepEqual(parseRange('bytes=4-2', 10), { kind: 'ignore' });
    assert.deepEqual(parseRange('lines=1-2', 10), { kind: 'ignore' });
  });

  test('globs', () => {
    const g = (p, s) => globToRegExp(p).test(s);
    assert.ok(g('transformer/*.safetensors', 'transformer/a.safetensors'));
    assert.ok(!g('*.safetensors', 'transformer/a.safetensors'));
    assert.ok(g('**/*.safetensors', 'a.safetensors'));
    assert.ok(g('**/*.safetensors', 'x/y/a.safetensors'));
    assert.ok(g('**', 'x/y'));
    assert.ok(g('model-0000?.bin', 'model-00001.bin'));
    assert.ok(!g('a.json', 'aXjson'));
    assert.equal(compileFaults([{ status: 500 }])[0].stage, 'body');
    assert.equal(compileFaults([{ fault: 'redirect-loop' }])[0].stage, 'resolve');
  });
});
