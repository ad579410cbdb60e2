// Fault rules: parsing, validation, matching and per-rule attempt counters.
//
// A rule (all fields optional except the fault itself):
//   { path: "transformer/*.safetensors",  // glob on the file path in the repo (api stage: URL pathname)
//     repo: "owner/name",                  // glob on the repo id
//     stage: "body" | "resolve" | "raw" | "cdn" | "api" | "any",
//     method: "GET" | "HEAD" | "*",
//     attempts: 2 | [1, 2] | "1-2" | "3-" | "*",  or  times: 2  (= attempts "1-2"),
//     fault: "status" | "reset" | "truncate" | "wrong-length" | "corrupt" | "ignore-range"
//            | "slow" | "delay" | "redirect-loop" | "no-redirect",
//     status, retryAfter, body, afterBytes, contentLength, delta, at, bytesPerSec, maxMs,
//     delayMs, cors: false }
// The attempt number is the count of requests that matched the rule's path/repo/stage/method
// filters so far (1-based), counted separately for each file the glob matches.

export const FAULTS = ['status', 'reset', 'truncate', 'wrong-length', 'corrupt', 'ignore-range',
  'slow', 'delay', 'redirect-loop', 'no-redirect'];
const STAGES = ['body', 'resolve', 'raw', 'cdn', 'api', 'any'];
export const MAX_DELAY_MS = 30_000;
export const MAX_SLOW_MS = 60_000;

export function globToRegExp(glob) {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*') {
      if (glob[i + 1] === '*') {
        i++;
        if (glob[i + 1] === '/') { i++; re += '(?:.*/)?'; } else re += '.*';
      } else re += '[^/]*';
    } else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

function parseAttempts(a, times) {
  if (times !== undefined) {
    if (!Number.isInteger(times) || times < 0) throw new Error(`times must be a non-negative integer`);
    return (n) => n <= times;
  }
  if (a === undefined || a === '*' || a === null) return () => true;
  if (Number.isInteger(a)) return (n) => n === a;
  if (Array.isArray(a)) {
    if (!a.every(Number.isInteger)) throw new Error(`attempts array must hold integers`);
    const s = new Set(a); return (n) => s.has(n);
  }
  if (typeof a === 'string') {
    const m = /^(\d+)?-(\d+)?$/.exec(a.trim());
    if (m) {
      const lo = m[1] ? +m[1] : 1, hi = m[2] ? +m[2] : Infinity;
      return (n) => n >= lo && n <= hi;
    }
    if (/^\d+$/.test(a)) return (n) => n === +a;
  }
  throw new Error(`bad attempts: ${JSON.stringify(a)}`);
}

const num = (v, name, { min = 0, max = Infinity, int = true } = {}) => {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (int && !Number.isInteger(v))) {
    throw new Error(`${name} must be ${int ? 'an integer' : 'a number'} in [${min}, ${max}], got ${JSON.stringify(v)}`);
  }
  return v;
};

export function compileRule(raw, index) {
  if (!raw || typeof raw !== 'object') throw new Error(`fault #${index}: expected an object`);
  const fault = raw.fault ?? (raw.status !== undefined ? 'status' : raw.delayMs !== undefined ? 'delay' : undefined);
  if (!FAULTS.includes(fault)) throw new Error(`fault #${index}: unknown fault ${JSON.stringify(raw.fault)} (one of ${FAULTS.join(', ')})`);
  const defaultStage = fault === 'redirect-loop' || fault === 'no-redirect' ? 'resolve' : 'body';
  const stage = raw.stage ?? defaultStage;
  if (!STAGES.includes(stage)) throw new Error(`fault #${index}: bad stage ${JSON.stringify(stage)}`);
  const method = (raw.method ?? '*').toUpperCase();
  if (!['GET', 'HEAD', '*'].includes(method)) throw new Error(`fault #${index}: bad method ${raw.method}`);
  const rule = {
    index, raw, fault, stage, method,
    pathRe: globToRegExp(raw.path ?? '**'),
    repoRe: raw.repo ? globToRegExp(raw.repo) : null,
    fires: parseAttempts(raw.attempts, raw.times),
    delayMs: raw.delayMs === undefined ? 0 : num(raw.delayMs, 'delayMs', { max: MAX_DELAY_MS }),
    cors: raw.cors !== false,
    counters: new Map(),
  };
  switch (fault) {
    case 'status':
      rule.status = num(raw.status, 'status', { min: 400, max: 599 });
      if (raw.retryAfter !== undefined) rule.retryAfter = num(raw.retryAfter, 'retryAfter', { max: 86400 });
      if (raw.body !== undefined) rule.body = String(raw.body);
      break;
    case 'reset': case 'truncate':
      rule.afterBytes = raw.afterBytes === undefined ? null : num(raw.afterBytes, 'afterBytes');
      break;
    case 'wrong-length':
      if (raw.contentLength !== undefined) rule.contentLength = num(raw.contentLength, 'contentLength');
      else rule.delta = raw.delta === undefined ? -1 : num(raw.delta, 'delta', { min: -Infinity });
      break;
    case 'corrupt':
      rule.at = raw.at === undefined ? null : [].concat(raw.at).map((v) => num(v, 'at'));
      break;
    case 'slow':
      rule.bytesPerSec = num(raw.bytesPerSec, 'bytesPerSec', { min: 1 });
      rule.maxMs = raw.maxMs === undefined ? 10_000 : num(raw.maxMs, 'maxMs', { max: MAX_SLOW_MS });
      break;
    default:
  }
  return rule;
}

export function compileFaults(spec) {
  const list = spec == null ? [] : Array.isArray(spec) ? spec : Array.isArray(spec.faults) ? spec.faults : null;
  if (!list) throw new Error('faults must be an array of rules (or { faults: [...] })');
  return list.map(compileRule);
}

/**
 * Counts the request against every rule whose filters match and returns the first rule that
 * fires on this attempt (or null), with the attempt number.
 * req: { stage: "resolve"|"cdn"|"api", isBody: bool, method, repo, path, key }
 */
export function pickFault(rules, req) {
  let hit = null;
  for (const r of rules) {
    if (r.method !== '*' && r.method !== req.method) continue;
    if (r.stage === 'body' ? !req.isBody : r.stage !== 'any' && r.stage !== req.stage) continue;
    if (r.repoRe && !(req.repo && r.repoRe.test(req.repo))) continue;
    if (!r.pathRe.test(req.path ?? '')) continue;
    const n = (r.counters.get(req.key) ?? 0) + 1;
    r.counters.set(req.key, n);
    if (!hit && r.fires(n)) hit = { rule: r, attempt: n };
  }
  return hit;
}

/** JSON view of the rules with their counters (for GET /__control/faults). */
export function describeFaults(rules) {
  return rules.map((r) => ({ ...r.raw, counters: Object.fromEntries(r.counters) }));
}
