#!/usr/bin/env node
// Mock Hugging Face host (hub + "CDN") for download tests. Node >= 20, standard library only.
// Binds to 127.0.0.1 only. See README.md in this folder.
import http from 'node:http';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { prepareRepos, treeListing, loadRepoFromDir, loadReposFromRoot } from './repo.mjs';
import { compileFaults, pickFault, describeFaults, MAX_DELAY_MS } from './faults.mjs';
import { makeTestModelRepo } from './testmodel.mjs';

export { loadRepoFromDir, loadReposFromRoot, makeTestModelRepo };

const HOST = '127.0.0.1';
const EXPOSE = ['Content-Range', 'Content-Length', 'Content-Type', 'Accept-Ranges', 'ETag',
  'X-Linked-Etag', 'X-Linked-Size', 'X-Repo-Commit', 'Retry-After', 'X-Error-Code',
  'X-Error-Message', 'Location'].join(', ');
const ALLOW_HEADERS = 'Range, If-Range, If-None-Match, Authorization, Content-Type, Cache-Control, X-Requested-With';
const LOG_CAP = 5000;
const RESET_GRACE_MS = 20;   // lets the bytes already written reach the client before an RST
const SLOW_TICK_MS = 50;
const CONTROL_BODY_MAX = 1 << 20;

const quote = (s) => `"${s}"`;

function contentTypeFor(p) {
  if (p.endsWith('.json')) return 'application/json; charset=utf-8';
  if (/\.(txt|md|jinja|py)$/.test(p)) return 'text/plain; charset=utf-8';
  return 'application/octet-stream';
}

/** Range header → { kind: "none"|"ignore"|"multi"|"unsatisfiable"|"range", start, end (inclusive) }. */
export function parseRange(header, size) {
  if (header === undefined) return { kind: 'none' };
  const m = /^\s*bytes\s*=\s*(.+)$/i.exec(header);
  if (!m) return { kind: 'ignore' };
  const specs = m[1].split(',');
  if (specs.length !== 1) return { kind: 'multi' };
  const s = /^\s*(\d*)\s*-\s*(\d*)\s*$/.exec(specs[0]);
  if (!s || (s[1] === '' && s[2] === '')) return { kind: 'ignore' };
  if (s[1] === '') {
    const n = Number(s[2]);
    if (n === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'range', start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(s[1]);
  if (s[2] !== '' && Number(s[2]) < start) return { kind: 'ignore' };
  if (start >= size) return { kind: 'unsatisfiable' };
  const end = s[2] === '' ? size - 1 : Math.min(Number(s[2]), size - 1);
  return { kind: 'range', start, end };
}

/**
 * Starts the mock host.
 * @param {object} opts
 * @param {object} opts.repos  { "owner/name": { revision?, files: { path: Buffer | filePath }, lfs? } }
 * @param {Array}  [opts.faults]  fault rules (see faults.mjs / README)
 * @param {number} [opts.port]  0 (default) = any free port
 * @param {boolean|number} [opts.cdnOrigin]  serve /cdn/ on a second port (true = any free port)
 *        so the resolve redirect crosses origins as on the real hub
 * @returns {Promise<{url, cdnUrl, port, close, stats, resetStats, setFaults, getFaults, fileInfo}>}
 */
export async function startMockHf({ repos = {}, faults = [], port = 0, cdnOrigin = false } = {}) {
  const repoMap = await prepareRepos(repos);
  const bySha = new Map();
  for (const r of repoMap.values()) for (const f of r.files.values()) if (f.lfs && !bySha.has(f.sha256)) bySha.set(f.sha256, { repo: r, file: f });

  let rules = compileFaults(faults);
  let closing = false;
  const sleepers = new Set();
  let stats = freshStats();
  let seq = 0;
  let hubBase = '';
  let hubPort = 0;
  let cdnPort = 0;
  let cdnBase = '';

  function freshStats() { return { requests: 0, bytesSent: 0, files: {}, paths: {}, log: [] }; }

  function sleep(ms, res) {
    return new Promise((resolve) => {
      if (closing || ms <= 0) return resolve();
      const e = { done: () => { clearTimeout(e.t); sleepers.delete(e); res?.off('close', e.done); resolve(); } };
      e.t = setTimeout(e.done, ms);
      sleepers.add(e);
      res?.once('close', e.done);
    });
  }

  // ---------- stats ----------
  function record(req, url, ctx) {
    stats.requests++;
    const p = (stats.paths[url.pathname] ??= { requests: 0, bytesSent: 0 });
    p.requests++;
    const entry = {
      seq: ++seq, method: req.method, url: url.pathname + url.search, stage: ctx.stage, key: ctx.key ?? null,
      range: req.headers.range ?? null, status: null, bytesSent: 0, fault: null, attempt: null,
    };
    if (stats.log.length >= LOG_CAP) stats.log.shift();
    stats.log.push(entry);
    let f = null;
    if (ctx.key && ctx.stage !== 'api') {
      f = (stats.files[ctx.key] ??= { requests: 0, get: 0, head: 0, resolve: 0, raw: 0, cdn: 0, bytesSent: 0, ranges: [], statuses: {}, faults: 0 });
      f.requests++;
      if (req.method === 'GET') f.get++; else if (req.method === 'HEAD') f.head++;
      if (f[ctx.stage] !== undefined) f[ctx.stage]++;
    }
    return {
      entry,
      status(code) { entry.status = code; if (f) f.statuses[code] = (f.statuses[code] ?? 0) + 1; },
      fault(hit) { entry.fault = hit.rule.fault; entry.attempt = hit.attempt; if (f) f.faults++; },
      range(r) { if (f) f.ranges.push(r); },
      bytes(n) { entry.bytesSent += n; p.bytesSent += n; stats.bytesSent += n; if (f) f.bytesSent += n; },
    };
  }

  // ---------- response helpers ----------
  function cors(headers, ctx) {
    if (ctx.hit && !ctx.hit.rule.cors) return headers;
    headers['Access-Control-Allow-Origin'] = '*';
    headers['Access-Control-Expose-Headers'] = EXPOSE;
    return headers;
  }

  function send(res, ctx, status, headers, body = '') {
    const buf = Buffer.isBuffer(body) ? body : Buffer.from(body);
    headers['Content-Length'] = String(buf.length);
    ctx.rec?.status(status);
    res.writeHead(status, cors(headers, ctx));
    if (ctx.method === 'HEAD') return res.end();
    res.end(buf);
  }

  function hubError(res, ctx, status, code, message) {
    const cdn = ctx.stage === 'cdn';
    const headers = cdn
      ? { 'Content-Type': 'application/xml' }
      : { 'Content-Type': 'application/json; charset=utf-8', 'X-Error-Code': code, 'X-Error-Message': message };
    const body = cdn
      ? `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>\n`
      : JSON.stringify({ error: message });
    send(res, ctx, status, headers, body);
  }

  function json(res, ctx, obj, status = 200) {
    send(res, ctx, status, { 'Content-Type': 'application/json; charset=utf-8' }, JSON.stringify(obj));
  }

  const STATUS_TEXT = {
    400: ['BadRequest', 'Bad request'], 401: ['Unauthorized', 'Invalid credentials'],
    403: ['AccessDenied', 'Access denied'], 404: ['EntryNotFound', 'Entry not found'],
    429: ['RateLimited', 'You have been rate-limited; retry later'],
    500: ['InternalError', 'Internal Error'], 502: ['BadGateway', 'Bad Gateway'],
    503: ['ServiceUnavailable', 'Service Unavailable'], 504: ['GatewayTimeout', 'Gateway Timeout'],
  };

  function statusFault(res, ctx, rule) {
    const [code, msg] = STATUS_TEXT[rule.status] ?? ['Error', http.STATUS_CODES[rule.status] ?? 'Error'];
    const cdn = ctx.stage === 'cdn';
    const headers = cdn ? { 'Content-Type': 'application/xml' }
      : { 'Content-Type': 'application/json; charset=utf-8', 'X-Error-Code': code, 'X-Error-Message': msg };
    if (rule.retryAfter !== undefined) headers['Retry-After'] = String(rule.retryAfter);
    let body = rule.body;
    if (body === undefined) {
      body = cdn ? `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${msg}</Message></Error>\n`
        : JSON.stringify({ error: msg });
    } else headers['Content-Type'] = 'text/plain; charset=utf-8';
    send(res, ctx, rule.status, headers, body);
  }

  function resetSocket(res) {
    const s = res.socket;
    if (!s || s.destroyed) return;
    if (typeof s.resetAndDestroy === 'function') s.resetAndDestroy(); else s.destroy();
  }

  function writeChunk(res, chunk) {
    if (res.destroyed || closing) return Promise.resolve(false);
    if (res.write(chunk)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (v) => { res.off('drain', onDrain); res.off('close', onClose); resolve(v); };
      const onDrain = () => done(true); const onClose = () => done(false);
      res.on('drain', onDrain); res.on('close', onClose);
    });
  }

  async function flushed(res) {
    // waits (bounded) until everything written so far has been handed to the kernel
    const s = res.socket;
    for (let i = 0; i < 40 && s && !s.destroyed && s.writableLength > 0; i++) await sleep(5, res);
  }

  /**
   * Serves file bytes (200/206/416) with the fault-injection hooks for body faults.
   * etag: the ETag to advertise; extra: additional headers.
   */
  async function serveBytes(req, res, ctx, file, etag, extra) {
    const rule = ctx.hit?.rule;
    const f = rule?.fault;
    const size = file.size;
    let range = parseRange(req.headers.range, size);
    if (range.kind === 'range' && req.headers['if-range'] !== undefined && req.headers['if-range'] !== etag) range = { kind: 'none' };
    if (f === 'ignore-range') range = { kind: 'none' };
    const headers = {
      ...extra, 'Accept-Ranges': 'bytes', ETag: etag, 'Cache-Control': 'public, max-age=31536000, immutable',
      'Last-Modified': 'Thu, 01 Jan 2026 00:00:00 GMT',
    };
    if (range.kind === 'unsatisfiable') {
      ctx.rec.range({ header: req.headers.range, start: null, end: null, unsatisfiable: true });
      headers['Content-Range'] = `bytes */${size}`;
      headers['Content-Type'] = 'text/plain; charset=utf-8';
      return send(res, ctx, 416, headers, 'Requested Range Not Satisfiable');
    }
    let start = 0, end = size - 1, status = 200;
    if (range.kind === 'range') {
      ({ start, end } = range); status = 206;
      headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
    }
    if (req.method === 'GET') ctx.rec.range(range.kind === 'range' ? { header: req.headers.range, start, end } : null);
    const length = Math.max(0, end - start + 1);
    let declared = length;
    if (f === 'wrong-length') declared = rule.contentLength ?? Math.max(0, length + rule.delta);
    headers['Content-Length'] = String(declared);
    const bodyFault = req.method === 'GET' && ['reset', 'truncate', 'wrong-length'].includes(f);
    if (bodyFault) headers.Connection = 'close';
    ctx.rec.status(status);
    res.writeHead(status, cors(headers, ctx));
    if (req.method === 'HEAD') return res.end();

    let limit = length;   // bytes of the body we will actually send
    if (f === 'reset' || f === 'truncate') limit = Math.min(length, rule.afterBytes ?? Math.floor(length / 2));
    const corruptAt = f === 'corrupt' ? (rule.at ?? [start]) : null;
    const started = Date.now();
    const slow = f === 'slow' ? rule : null;
    let sent = 0;
    let pos = start;
    outer: for await (const raw of file.source.read(start, start + limit)) {
      let chunk = raw;
      if (corruptAt) {
        const hits = corruptAt.filter((o) => o >= pos && o < pos + chunk.length);
        if (hits.length) { chunk = Buffer.from(chunk); for (const o of hits) chunk[o - pos] ^= 0xff; }
      }
      pos += raw.length;
      while (chunk.length) {
        let piece = chunk;
        if (slow && Date.now() - started < slow.maxMs) piece = chunk.subarray(0, Math.max(1, Math.ceil(slow.bytesPerSec * SLOW_TICK_MS / 1000)));
        chunk = chunk.subarray(piece.length);
        ctx.rec.bytes(piece.length);
        sent += piece.length;
        if (!(await writeChunk(res, piece))) break outer;
        if (slow && chunk.length + (start + limit - pos) > 0 && Date.now() - started < slow.maxMs) await sleep(SLOW_TICK_MS, res);
        if (res.destroyed || closing) break outer;
      }
    }
    if (res.destroyed || closing) return;
    if (f === 'reset') {
      await flushed(res);
      await sleep(RESET_GRACE_MS, res);
      return resetSocket(res);
    }
    if (f === 'truncate' || (f === 'wrong-length' && declared > sent)) {
      await flushed(res);
      res.socket?.end();
      return;
    }
    res.end();
    if (f === 'wrong-length') res.socket?.end();
  }

  // ---------- routing ----------
  function lookupRepo(res, ctx, owner, name, rev) {
    const repo = repoMap.get(`${owner}/${name}`);
    if (!repo) { hubError(res, ctx, 404, 'RepoNotFound', 'Repository not found'); return null; }
    if (rev !== undefined && rev !== 'main' && rev !== repo.revision) {
      hubError(res, ctx, 404, 'RevisionNotFound', `Invalid rev id: ${rev}`); return null;
    }
    return repo;
  }

  async function handle(req, res) {
    const url = new URL(req.url, hubBase);
    let segs;
    try { segs = url.pathname.split('/').slice(1).map(decodeURIComponent); } catch { segs = []; }
    const method = req.method;
    const ctx = { method, stage: 'other' };

    if (method === 'OPTIONS') {
      const h = {
        'Access-Control-Allow-Origin': '*',
        'Access-Control-Allow-Methods': 'GET, HEAD, POST, PUT, DELETE, OPTIONS',
        'Access-Control-Allow-Headers': req.headers['access-control-request-headers'] || ALLOW_HEADERS,
        'Access-Control-Max-Age': '86400', 'Content-Length': '0',
      };
      res.writeHead(204, h);
      return res.end();
    }
    if (segs[0] === '__control') return control(req, res, url, segs, ctx);

    // Classify the request.
    const isCdnServer = req.socket.localPort === cdnPort && cdnPort !== hubPort;
    let route = null;
    if (segs[0] === 'cdn' && segs.length === 2) route = { stage: 'cdn', sha: segs[1] };
    else if (isCdnServer) route = null;
    else if (segs[0] === 'api' && segs[1] === 'models' && segs.length >= 4) route = { stage: 'api' };
    else if (segs.length >= 5 && (segs[2] === 'resolve' || segs[2] === 'raw')) {
      route = { stage: segs[2], owner: segs[0], name: segs[1], rev: segs[3], path: segs.slice(4).join('/') };
    }
    if (!route) {
      ctx.rec = record(req, url, ctx);
      return hubError(res, ctx, 404, 'NotFound', 'Not Found');
    }
    ctx.stage = route.stage;

    // Work out which file (if any) the request is about, for stats and fault matching.
    let repo = null, file = null;
    if (route.stage === 'cdn') {
      const byQuery = repoMap.get(url.searchParams.get('repo') ?? '')?.files.get(url.searchParams.get('path') ?? '');
      const found = bySha.get(route.sha);
      if (byQuery && byQuery.sha256 === route.sha) { repo = repoMap.get(url.searchParams.get('repo')); file = byQuery; }
      else if (found) ({ repo, file } = found);
      ctx.key = file ? `${repo.id}/${file.path}` : `cdn/${route.sha}`;
      ctx.repo = repo?.id; ctx.path = file?.path ?? route.sha; ctx.isBody = !!file;
    } else if (route.stage === 'api') {
      ctx.key = url.pathname; ctx.path = url.pathname; ctx.repo = `${segs[2]}/${segs[3]}`; ctx.isBody = false;
    } else {
      repo = repoMap.get(`${route.owner}/${route.name}`) ?? null;
      file = repo?.files.get(route.path) ?? null;
      ctx.repo = `${route.owner}/${route.name}`; ctx.path = route.path; ctx.key = `${ctx.repo}/${route.path}`;
      ctx.isBody = route.stage === 'resolve' && !!file && !file.lfs;
    }
    ctx.rec = record(req, url, ctx);
    if (method !== 'GET' && method !== 'HEAD') {
      return send(res, ctx, 405, { Allow: 'GET, HEAD, OPTIONS', 'Content-Type': 'text/plain' }, 'Method Not Allowed');
    }

    // Faults.
    ctx.hit = pickFault(rules, ctx);
    const rule = ctx.hit?.rule;
    if (rule) {
      ctx.rec.fault(ctx.hit);
      if (rule.delayMs) await sleep(rule.delayMs, res);
      if (res.destroyed || closing) return;
      if (rule.fault === 'status') return statusFault(res, ctx, rule);
      if (rule.fault === 'reset' && rule.raw.headers === false) return resetSocket(res);
    }

    if (route.stage === 'cdn') {
      if (!file) return hubError(res, ctx, 404, 'NoSuchKey', 'The specified key does not exist.');
      const fname = path.posix.basename(file.path);
      return serveBytes(req, res, ctx, file, quote(file.sha256), {
        'Content-Type': 'application/octet-stream',
        'Content-Disposition': `inline; filename*=UTF-8''${encodeURIComponent(fname)}; filename="${fname}";`,
      });
    }
    if (route.stage === 'api') return api(req, res, url, segs, ctx);

    repo = lookupRepo(res, ctx, route.owner, route.name, route.rev);
    if (!repo) return;
    if (!file) return hubError(res, ctx, 404, 'EntryNotFound', 'Entry not found');
    const common = { 'X-Repo-Commit': repo.revision };
    if (route.stage === 'raw') {
      const body = file.lfs ? file.pointer : await file.source.readAll();
      return send(res, ctx, 200, { ...common, 'Content-Type': 'text/plain; charset=utf-8', ETag: quote(file.oid) }, body);
    }
    // resolve
    if (!file.lfs) return serveBytes(req, res, ctx, file, quote(file.oid), { ...common, 'Content-Type': contentTypeFor(file.path) });
    if (rule?.fault === 'no-redirect') {
      return serveBytes(req, res, ctx, file, quote(file.sha256), {
        ...common, 'Content-Type': 'application/octet-stream', 'X-Linked-Etag': quote(file.sha256), 'X-Linked-Size': String(file.size),
      });
    }
    const location = rule?.fault === 'redirect-loop'
      ? hubBase + url.pathname + url.search
      : `${cdnBase}/cdn/${file.sha256}?repo=${encodeURIComponent(repo.id)}&path=${encodeURIComponent(file.path)}`
        + `&revision=${repo.revision}&Expires=4102444800&Signature=mock`;
    return send(res, ctx, 302, {
      ...common, Location: location, ETag: quote(file.sha256), 'X-Linked-Etag': quote(file.sha256),
      'X-Linked-Size': String(file.size), 'Content-Type': 'text/plain; charset=utf-8', Vary: 'Origin, Accept',
    }, `Found. Redirecting to ${location}`);
  }

  function api(req, res, url, segs, ctx) {
    // /api/models/{owner}/{name}[/revision/{rev} | /tree/{rev}[/{subpath}]]
    const [, , owner, name, kind, rev, ...rest] = segs;
    if (kind === undefined || kind === 'revision') {
      if (kind === 'revision' && rev === undefined) return hubError(res, ctx, 404, 'NotFound', 'Not Found');
      const repo = lookupRepo(res, ctx, owner, name, rev);
      if (!repo) return;
      const siblings = [...repo.files.keys()].sort().map((rfilename) => ({ rfilename }));
      return json(res, ctx, {
        _id: repo.revision.slice(0, 24), id: repo.id, modelId: repo.id, author: owner, sha: repo.revision,
        lastModified: repo.lastModified, createdAt: repo.lastModified, private: false, disabled: false, gated: false,
        downloads: 0, likes: 0, tags: [], library_name: 'diffusers', siblings,
        usedStorage: [...repo.files.values()].reduce((a, f) => a + f.size, 0),
      });
    }
    if (kind === 'tree' && rev !== undefined) {
      const repo = lookupRepo(res, ctx, owner, name, rev);
      if (!repo) return;
      const recursive = ['true', '1'].includes(url.searchParams.get('recursive') ?? '');
      const entries = treeListing(repo, rest.join('/'), recursive);
      if (!entries) return hubError(res, ctx, 404, 'EntryNotFound', `${rest.join('/')} does not exist on "${rev}"`);
      return json(res, ctx, entries);
    }
    return hubError(res, ctx, 404, 'NotFound', 'Not Found');
  }

  // ---------- control endpoint ----------
  async function control(req, res, url, segs, ctx) {
    const reply = (status, obj) => {
      res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Access-Control-Allow-Origin': '*', 'Cache-Control': 'no-store' });
      res.end(JSON.stringify(obj));
    };
    const what = segs[1];
    if (what === 'stats' && req.method === 'GET') return reply(200, snapshot());
    if (what === 'reset' && req.method === 'POST') { resetAll(); return reply(200, { ok: true }); }
    if (what === 'health') return reply(200, { ok: true, url: hubBase, cdnUrl: cdnBase, repos: [...repoMap.keys()] });
    if (what === 'faults') {
      if (req.method === 'GET') return reply(200, { faults: describeFaults(rules) });
      if (req.method === 'DELETE') { rules = []; return reply(200, { faults: [] }); }
      if (req.method === 'POST' || req.method === 'PUT') {
        let body = '';
        try {
          for await (const c of req) { body += c; if (body.length > CONTROL_BODY_MAX) throw new Error('body too large'); }
          rules = compileFaults(JSON.parse(body || '[]'));
        } catch (e) { return reply(400, { error: String(e.message) }); }
        return reply(200, { faults: describeFaults(rules) });
      }
    }
    return reply(404, { error: 'unknown control endpoint' });
  }

  function snapshot() { return JSON.parse(JSON.stringify(stats)); }
  function resetAll() { stats = freshStats(); for (const r of rules) r.counters.clear(); }

  // ---------- servers ----------
  const onRequest = (req, res) => {
    handle(req, res).catch((e) => {
      if (!res.headersSent) { res.writeHead(500, { 'Content-Type': 'text/plain', 'Access-Control-Allow-Origin': '*' }); res.end(String(e?.stack ?? e)); }
      else res.destroy();
    });
  };
  const servers = [];
  const listen = (p) => new Promise((resolve, reject) => {
    const s = http.createServer(onRequest);
    s.keepAliveTimeout = 2000;
    s.on('error', reject);
    s.listen(p, HOST, () => { s.off('error', reject); servers.push(s); resolve(s.address().port); });
  });
  hubPort = await listen(port);
  cdnPort = hubPort;
  if (cdnOrigin) cdnPort = await listen(cdnOrigin === true ? 0 : cdnOrigin);
  hubBase = `http://${HOST}:${hubPort}`;
  cdnBase = `http://${HOST}:${cdnPort}`;

  async function close() {
    closing = true;
    for (const e of [...sleepers]) e.done();
    await Promise.all(servers.map((s) => new Promise((resolve) => { s.close(() => resolve()); s.closeAllConnections(); })));
  }

  return {
    url: hubBase,
    cdnUrl: cdnBase,
    port: hubPort,
    close,
    stats: snapshot,
    resetStats: resetAll,
    setFaults(spec) { rules = compileFaults(spec); },
    getFaults: () => describeFaults(rules),
    /** { sha256, size, oid, lfs, revision } of one file, for assertions. */
    fileInfo(repoId, p) {
      const r = repoMap.get(repoId); const f = r?.files.get(p);
      return f ? { sha256: f.sha256, size: f.size, oid: f.oid, lfs: f.lfs, revision: r.revision } : null;
    },
  };
}

// ---------- CLI ----------
function parseArgs(argv) {
  const a = {};
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    if (!k.startsWith('--')) throw new Error(`unexpected argument ${k}`);
    const key = k.slice(2);
    if (key === 'help') { a[key] = true; continue; }
    if (!['root', 'repo', 'revision', 'generate', 'port', 'cdn-port', 'faults'].includes(key)) throw new Error(`unknown option ${k}`);
    if (i + 1 >= argv.length) throw new Error(`${k} needs a value`);
    a[key] = argv[++i];
  }
  return a;
}

const USAGE = `usage: node tests/mock-hf/server.mjs [--root DIR [--repo owner/name] [--revision SHA]]
         [--generate owner/name] [--port 8090] [--cdn-port N] [--faults JSON|@file.json]
  --root DIR            serve DIR as repo --repo (default: DIR/<owner>/<name>/ folders, one repo each)
  --generate ID         also serve the generated test model repo as ID (default when no --root:
                        test/qwen-image-layered-tiny)
  --cdn-port N          serve /cdn/ from a second origin (port N; 0 = any free port)
  --faults              initial fault rules (JSON array, or @path to a JSON file)`;

async function main() {
  const a = parseArgs(process.argv.slice(2));
  if (a.help) { console.log(USAGE); return; }
  const repos = {};
  if (a.root) {
    const root = path.resolve(a.root);
    if (a.repo) repos[a.repo] = loadRepoFromDir(root, { revision: a.revision });
    else Object.assign(repos, loadReposFromRoot(root, { revision: a.revision }));
  }
  if (a.generate || !a.root) repos[a.generate || 'test/qwen-image-layered-tiny'] = makeTestModelRepo();
  let faults = [];
  if (a.faults) faults = JSON.parse(a.faults.startsWith('@') ? readFileSync(a.faults.slice(1), 'utf8') : a.faults);
  const srv = await startMockHf({
    repos, faults, port: a.port === undefined ? 8090 : Number(a.port),
    cdnOrigin: a['cdn-port'] === undefined ? false : Number(a['cdn-port']) || true,
  });
  console.log(srv.url);
  if (srv.cdnUrl !== srv.url) console.log(`cdn: ${srv.cdnUrl}`);
  for (const id of Object.keys(repos)) console.log(`repo: ${srv.url}/${id}/resolve/main/  (tree: ${srv.url}/api/models/${id}/tree/main?recursive=true)`);
  const stop = () => { srv.close().then(() => process.exit(0)); };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  main().catch((e) => { console.error(String(e?.message ?? e)); console.error(USAGE); process.exit(2); });
}
