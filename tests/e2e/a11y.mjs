// Accessibility checks of the served app by an independent checker: axe-core (Deque's rules
// for WCAG 2.x A and AA, and their best practices), run inside the page as it stands.
//
// axe is put into the page by the DevTools protocol (`page.evaluate` of its source), which the
// page's Content-Security-Policy does not apply to, so the app's CSP stays as visitors get it.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
let source;

/**
 * Every axe violation on the page as it is now, one line each:
 * `rule (impact): what it asks | selector: why, …`. Empty when the page passes. Only what
 * is rendered counts (axe skips hidden elements), so call it in each state worth checking.
 */
export async function axeViolations(page) {
  source ??= await readFile(require.resolve("axe-core/axe.min.js"), "utf8");
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.evaluate(source);
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, {
      runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"] },
      resultTypes: ["violations"],
    });
    return result.violations.map((v) => ({
      rule: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => `${n.target.join(" ")}: ${n.failureSummary.replace(/\s*\n\s*/g, " ")}`),
    }));
  });
  return violations.map((v) => `${v.rule} (${v.impact}): ${v.help} | ${v.nodes.join(" | ")}`);
}
