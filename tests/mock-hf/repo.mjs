// Repository model for the mock Hugging Face host: file sources, hashes, git/LFS object ids,
// folder loading and the hub's tree listing. Node standard library only.
import { createHash } from 'node:crypto';
import { createReadStream, readdirSync, statSync } from 'node:fs';
import path from 'node:path';

const CHUNK = 64 * 1024;
const HEX40 = /^[0-9a-f]{40}$/;

// Extensions that the hub's default .gitattributes stores in LFS (subset that matters here),
// plus the hub rule that any file over 10 MB must be LFS.
const LFS_EXT = [
  '.safetensors', '.bin', '.pt', '.pth', '.ckpt', '.h5', '.onnx', '.msgpack', '.model',
  '.gguf', '.npy', '.npz', '.pkl', '.zip', '.gz', '.tar', '.tgz', '.zst', '.arrow',
  '.parquet', '.ot', '.tflite', '.pb', '.joblib', '.wasm', '.png', '.jpg', '.jpeg', '.webp',
];
export const LFS_SIZE_THRESHOLD = 10 * 1024 * 1024;

export function defaultIsLfs(filePath, size) {
  const lower = filePath.toLowerCase();
  return size >= LFS_SIZE_THRESHOLD || LFS_EXT.some((e) => lower.endsWith(e));
}

/** The text of a Git LFS pointer file, as stored in git and returned by `/raw/`. */
export function lfsPointer(sha256, size) {
  return `version https://git-lfs.github.com/spec/v1\noid sha256:${sha256}\nsize ${size}\n`;
}

/** git's object id of a blob: sha1("blob <len>\0" + content). */
export function gitBlobOid(buf) {
  return createHash('sha1').update(`blob ${buf.length}\0`).update(buf).digest('hex');
}

/** A byte source: an in-memory Buffer or a file on disk, read by absolute offsets. */
class BufferSource {
  constructor(buf) { this.buf = buf; this.size = buf.length; }
  async *read(start, endExcl) {
    for (let o = start; o < endExcl; o += CHUNK) yield this.buf.subarray(o, Math.min(endExcl, o + CHUNK));
  }
  async readAll() { return this.buf; }
}

class FileSource {
  constructor(file, size) { this.file = file; this.size = size; }
  async *read(start, endExcl) {
    if (endExcl <= start) return;
    // for-await with an early exit destroys the stream, so aborted responses close the fd.
    yield* createReadStream(this.file, { start, end: endExcl - 1, highWaterMark: CHUNK });
  }
  async readAll() {
    const parts = [];
    for await (const c of this.read(0, this.size)) parts.push(c);
    return Buffer.concat(parts);
  }
}

async function sha256Of(source) {
  const h = createHash('sha256');
  for await (const c of source.read(0, source.size)) h.update(c);
  return h.digest('hex');
}

/**
 * Normalises the user's `repos` option into the server's internal form, hashing every file.
 * repos: { "owner/name": { revision?: "<40 hex>", files: { "path": Buffer | filePath },
 *          lfs?: "auto" | "all" | "none" | string[] (paths) | (path, size) => boolean } }
 */
export async function prepareRepos(repos) {
  const out = new Map();
  for (const [id, spec] of Object.entries(repos || {})) {
    if (!/^[^/\s]+\/[^/\s]+$/.test(id)) throw new Error(`repo id must be "owner/name": ${id}`);
    const files = new Map();
    for (const [p, v] of Object.entries(spec.files || {})) {
      const rel = p.replace(/^\/+/, '');
      let source;
      if (Buffer.isBuffer(v) || v instanceof Uint8Array) source = new BufferSource(Buffer.from(v.buffer, v.byteOffset, v.byteLength));
      else if (typeof v === 'string') source = new FileSource(v, statSync(v).size);
      else throw new Error(`file ${id}/${rel}: expected a Buffer or a file path`);
      files.set(rel, { path: rel, source, size: source.size });
    }
    const isLfs = lfsPredicate(spec.lfs);
    for (const f of files.values()) {
      f.sha256 = await sha256Of(f.source);
      f.lfs = isLfs(f.path, f.size);
      if (f.lfs) {
        const ptr = Buffer.from(lfsPointer(f.sha256, f.size));
        f.pointer = ptr;
        f.oid = gitBlobOid(ptr);
      } else {
        f.oid = gitBlobOid(await f.source.readAll());
      }
    }
    const revision = (spec.revision || revisionFor(files)).toLowerCase();
    if (!HEX40.test(revision)) throw new Error(`repo ${id}: revision must be 40 hex digits`);
    out.set(id, { id, revision, files, lastModified: spec.lastModified || '2026-01-01T00:00:00.000Z' });
  }
  return out;
}

function lfsPredicate(lfs) {
  if (lfs === undefined || lfs === 'auto') return defaultIsLfs;
  if (lfs === 'all') return () => true;
  if (lfs === 'none') return (p, size) => size >= LFS_SIZE_THRESHOLD;
  if (Array.isArray(lfs)) { const s = new Set(lfs); return (p) => s.has(p); }
  if (typeof lfs === 'function') return lfs;
  throw new Error(`bad lfs option: ${lfs}`);
}

/** A deterministic 40-hex "commit sha" derived from the file list and contents. */
function revisionFor(files) {
  const h = createHash('sha1');
  for (const p of [...files.keys()].sort()) h.update(`${p}\0${files.get(p).size}\0${files.get(p).sha256}\n`);
  return h.digest('hex');
}

function walk(dir, base = dir, acc = []) {
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    if (ent.name === '.git') continue;
    const full = path.join(dir, ent.name);
    if (ent.isDirectory()) walk(full, base, acc);
    else if (ent.isFile()) acc.push(path.relative(base, full).split(path.sep).join('/'));
  }
  return acc.sort();
}

/** One folder → one repo spec ({ revision?, files: { relPath: absPath } }), for `repos`. */
export function loadRepoFromDir(dir, { revision, lfs } = {}) {
  const files = {};
  for (const rel of walk(dir)) files[rel] = path.join(dir, rel);
  const spec = { files };
  if (revision) spec.revision = revision;
  if (lfs) spec.lfs = lfs;
  return spec;
}

/** A root folder laid out as ROOT/<owner>/<name>/... → { "owner/name": spec }. */
export function loadReposFromRoot(root, opts = {}) {
  const repos = {};
  for (const owner of readdirSync(root, { withFileTypes: true })) {
    if (!owner.isDirectory() || owner.name.startsWith('.')) continue;
    for (const name of readdirSync(path.join(root, owner.name), { withFileTypes: true })) {
      if (!name.isDirectory() || name.name.startsWith('.')) continue;
      repos[`${owner.name}/${name.name}`] = loadRepoFromDir(path.join(root, owner.name, name.name), opts);
    }
  }
  return repos;
}

/**
 * The hub's tree listing: GET /api/models/{repo}/tree/{rev}[/{subpath}][?recursive=true].
 * Directories first-class entries (type "directory", size 0); LFS files carry
 * lfs: { oid: sha256, size, pointerSize } and their `oid` is the pointer blob's git oid.
 */
export function treeListing(repo, subpath, recursive) {
  const prefix = subpath ? subpath.replace(/\/+$/, '') + '/' : '';
  const dirs = new Set();
  for (const p of repo.files.keys()) {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
  }
  if (subpath && !dirs.has(subpath.replace(/\/+$/, ''))) return null;
  const entries = [];
  const within = (p) => p.startsWith(prefix) && (recursive || !p.slice(prefix.length).includes('/'));
  for (const d of dirs) {
    if (within(d)) entries.push({ type: 'directory', oid: dirOid(repo, d), size: 0, path: d });
  }
  for (const f of repo.files.values()) {
    if (!within(f.path)) continue;
    const e = { type: 'file', oid: f.oid, size: f.size, path: f.path };
    if (f.lfs) e.lfs = { oid: f.sha256, size: f.size, pointerSize: f.pointer.length };
    entries.push(e);
  }
  entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return entries;
}

// Not git's real tree hash (that would need git's tree encoding); stable and unique enough.
function dirOid(repo, d) {
  const h = createHash('sha1').update(`tree ${d}\0`);
  for (const f of repo.files.values()) if (f.path.startsWith(d + '/')) h.update(`${f.path}\0${f.oid}\0`);
  return h.digest('hex');
}
