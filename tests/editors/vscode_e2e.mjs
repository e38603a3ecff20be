// Drives the real VS Code (code-server) in headless Chromium as a user would: opens files, types,
// waits for ghost text, presses Tab, runs commands, clicks the status bar. Run by code_server.py
// with CA_SCENARIO = main | missing-model | latency. Writes a screenshot per step and result.json to
// $CA_OUT; always exits (a step that fails records its error and the screenshot of the moment).
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";

const require = createRequire(path.join(process.env.CA_CLIENT_DIR, "package.json"));
const { chromium } = require("playwright-core");

const OUT = process.env.CA_OUT;
const WORKSPACE = process.env.CA_WORKSPACE;
const SCENARIO = process.env.CA_SCENARIO;
const OPTIONS = JSON.parse(process.env.CA_OPTIONS || "{}");
const result = { scenario: SCENARIO, steps: [], ghosts: [], screenshots: [] };
const started = Date.now();

function note(step, data = {}) {
  result.steps.push({ step, at_ms: Date.now() - started, ...data });
}

async function shot(page, name) {
  const file = path.join(OUT, `${String(result.screenshots.length + 1).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file });
  result.screenshots.push(file);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- what is on the screen ------------------------------------------------------------------
// Ghost text: the first line is `.ghost-text-decoration` inside the cursor's line, further lines
// are `.ghost-text` view zones below it.
async function ghostText(page) {
  return page.evaluate(() => {
    const inline = [...document.querySelectorAll(".monaco-editor .view-line .ghost-text-decoration")]
      .map((e) => e.textContent.replace(/\u00a0/g, " ")).join("");
    const blocks = [...document.querySelectorAll(".monaco-editor .ghost-text .view-line")]
      .map((e) => e.textContent.replace(/\u00a0/g, " "));
    return blocks.length ? [inline, ...blocks].join("\n") : inline;
  });
}

async function waitForGhost(page, timeoutMs = 6000) {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    const text = await ghostText(page);
    if (text.trim()) return { text, ms: Date.now() - t0 };
    await sleep(20);
  }
  return { text: "", ms: Date.now() - t0 };
}

async function statusItem(page) {
  return page.evaluate(() => {
    const item = document.getElementById("code-assistant.code-assistant");
    if (!item) return null;
    const icon = item.querySelector(".codicon");
    return { label: item.getAttribute("aria-label"), icon: icon ? [...icon.classList].find((c) => c.startsWith("codicon-") && c !== "codicon-modifier-spin") : null };
  });
}

async function waitForStatus(page, icon, timeoutMs) {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    const status = await statusItem(page);
    if (status?.icon === `codicon-${icon}`) return { ...status, ms: Date.now() - t0 };
    await sleep(50);
  }
  return { ...(await statusItem(page)), ms: null };
}

async function notifications(page) {
  return page.evaluate(() => [...document.querySelectorAll(".notifications-toasts .notification-list-item-message, .notifications-center .notification-list-item-message")]
    .map((e) => e.textContent));
}

// ---- what a user does -----------------------------------------------------------------------
async function openWorkbench(page) {
  await page.goto(`${process.env.CA_URL}/?folder=${encodeURIComponent(WORKSPACE)}`);
  await page.waitForSelector(".monaco-workbench .part.statusbar", { timeout: 60000 });
  await sleep(1500); // the workbench restores its layout and starts the extension host
}

// Quick Open with the absolute path: it finds git-ignored files too (its search skips them).
async function quickOpen(page, file) {
  const name = path.basename(file);
  for (let attempt = 0; attempt < 3; attempt++) {
    await page.keyboard.press("Control+P");
    await page.waitForSelector(".quick-input-widget input", { state: "visible" });
    await page.keyboard.type(path.join(WORKSPACE, file));
    try {
      await page.waitForSelector(`.quick-input-list .monaco-list-row[aria-label*="${name}"]`, { timeout: 10000 });
    } catch {
      await page.keyboard.press("Escape");
      continue;
    }
    await page.keyboard.press("Enter");
    try {
      await page.waitForSelector(`.tab.active[aria-label*="${name}"]`, { timeout: 10000 });
      await sleep(300);
      return;
    } catch {
      await page.keyboard.press("Escape");
    }
  }
  throw new Error(`Quick Open did not open ${file}`);
}

async function command(page, title) {
  await page.keyboard.press("F1");
  await page.waitForSelector(".quick-input-widget input", { state: "visible" });
  await page.keyboard.type(title);
  await sleep(500);
  await page.keyboard.press("Enter");
}

async function goTo(page, line, column) {
  await page.keyboard.press("Control+G");
  await page.waitForSelector(".quick-input-widget input", { state: "visible" });
  await page.keyboard.type(`${line}:${column}`);
  await page.keyboard.press("Enter");
  await sleep(200);
}

async function save(page) {
  await page.keyboard.press("Control+S");
  await sleep(400);
}

// The line after `anchor` in the file as saved now (1-based): edits earlier in the run move lines.
async function lineAfter(page, file, anchor) {
  await save(page);
  const index = fs.readFileSync(path.join(WORKSPACE, file), "utf8").split("\n").indexOf(anchor);
  if (index < 0) throw new Error(`no line ${JSON.stringify(anchor)} in ${file}`);
  return index + 2;
}

async function typeSlowly(page, text, delay = 70) {
  for (const char of text) {
    await page.keyboard.type(char);
    await sleep(delay);
  }
}

// ---- scenarios ------------------------------------------------------------------------------
async function mainScenario(page) {
  const file = path.join(WORKSPACE, "stats.py");
  const original = fs.readFileSync(file, "utf8");
  await openWorkbench(page);
  note("workbench");
  const opened = Date.now();
  await quickOpen(page, "stats.py");
  const ready = await waitForStatus(page, "check", 60000);
  result.ready = { ...ready, ms_after_open: Date.now() - opened };
  note("ready", ready);
  await shot(page, "ready");

  // 1. Typing inside a function: ghost text appears.
  const { after, prefix } = OPTIONS.type_at;
  await goTo(page, await lineAfter(page, "stats.py", after), 1);
  await page.keyboard.press("End");
  const typedAt = Date.now();
  await typeSlowly(page, prefix);
  const ghost = await waitForGhost(page);
  result.first_ghost = { ...ghost, ms_after_last_key: Date.now() - typedAt - prefix.length * 70 };
  result.ghosts.push(ghost.text);
  note("ghost", ghost);
  await shot(page, "ghost-text");

  // 2. Tab inserts it.
  await page.keyboard.press("Tab");
  await sleep(300);
  await shot(page, "accepted");
  await save(page);
  result.after_accept = fs.readFileSync(file, "utf8");

  // 3. Tab-Tab: Enter, the next suggestion (prefetched while the first one showed), Tab again.
  const enterAt = Date.now();
  await page.keyboard.press("Enter");
  const next = await waitForGhost(page, 4000);
  result.next_ghost = { ...next, ms_after_enter: Date.now() - enterAt };
  result.ghosts.push(next.text);
  note("next ghost", next);
  await shot(page, "next-ghost");
  if (next.text.trim()) {
    await page.keyboard.press("Tab");
    await sleep(300);
  }

  // 4. Partial accept: Ctrl+Right takes the next word of a suggestion.
  const { after: pAfter, prefix: pPrefix } = OPTIONS.partial_at;
  await goTo(page, await lineAfter(page, "stats.py", pAfter), 1);
  await page.keyboard.press("End");
  await typeSlowly(page, pPrefix);
  const partial = await waitForGhost(page);
  result.ghosts.push(partial.text);
  if (partial.text.trim()) {
    await page.keyboard.press("Control+ArrowRight");
    await sleep(400);
    result.after_partial_ghost = await ghostText(page);
  }
  note("partial", partial);
  await shot(page, "partial-accept");
  await page.keyboard.press("Escape");

  // 5. On demand ("Trigger Inline Suggestion", Alt+\) in an empty body: a block may come.
  await goTo(page, await lineAfter(page, "stats.py", OPTIONS.multiline_at.after), 1);
  await page.keyboard.press("End");
  await command(page, "Trigger Inline Suggestion");
  const block = await waitForGhost(page);
  await sleep(500); // the view zone with the further lines follows the first
  block.text = await ghostText(page) || block.text;
  result.multiline_ghost = block;
  result.ghosts.push(block.text);
  note("multiline", block);
  await shot(page, "multiline");
  await page.keyboard.press("Escape");

  // 6. The counts, as the user sees them.
  await save(page);
  result.final_text = fs.readFileSync(file, "utf8");
  await command(page, "Code Assistant: Show Accepted Suggestions");
  await sleep(1500);
  result.stats_notifications = (await notifications(page)).filter((t) => t.includes("shown"));
  note("stats", { notifications: result.stats_notifications });
  await shot(page, "stats");
  await page.keyboard.press("Escape");

  // 7. A git-ignored file gets nothing, even on demand.
  await quickOpen(page, "build/generated.py");
  const { after: xAfter, prefix: xPrefix } = OPTIONS.excluded_at;
  await goTo(page, await lineAfter(page, "build/generated.py", xAfter), 1);
  await page.keyboard.press("End");
  await typeSlowly(page, xPrefix);
  await command(page, "Trigger Inline Suggestion");
  const excluded = await waitForGhost(page, 2500);
  result.excluded_ghost = excluded.text;
  note("excluded", excluded);
  await shot(page, "excluded-file");

  // 8. The status bar item toggles completions off and on; settings.json ends as it began.
  const settingsFile = OPTIONS.settings_file;
  result.settings_before = fs.readFileSync(settingsFile, "utf8");
  await page.click("#code-assistant\\.code-assistant");
  result.status_off = await waitForStatus(page, "circle-slash", 5000);
  result.settings_off = fs.readFileSync(settingsFile, "utf8");
  await shot(page, "toggled-off");
  await page.click("#code-assistant\\.code-assistant");
  result.status_on = await waitForStatus(page, "check", 5000);
  await sleep(300);
  result.settings_after = fs.readFileSync(settingsFile, "utf8");
  await shot(page, "toggled-on");
  fs.writeFileSync(file, original);
}

async function missingModelScenario(page) {
  await openWorkbench(page);
  await quickOpen(page, "stats.py");
  result.status = await waitForStatus(page, "error", 30000);
  await sleep(OPTIONS.watch_ms ?? 6000); // long enough for the restarts the client used to make
  result.notifications = await notifications(page);
  result.status_later = await statusItem(page);
  note("missing model", { notifications: result.notifications });
  await shot(page, "missing-model");
}

// Keystroke to ghost text: a keydown listener and a MutationObserver in the page time each key
// and each change of the ghost text with the same clock (performance.now()).
async function latencyScenario(page) {
  await openWorkbench(page);
  await quickOpen(page, "stats.py");
  result.ready = await waitForStatus(page, "check", 60000);
  await page.evaluate(() => {
    window.__keys = [];
    window.__ghosts = [];
    window.addEventListener("keydown", () => { window.__keys.push(performance.now()); }, true);
    const text = () => [...document.querySelectorAll(".monaco-editor .ghost-text-decoration")].map((e) => e.textContent).join("");
    let last = "";
    new MutationObserver(() => {
      const now = text();
      if (now !== last) { last = now; window.__ghosts.push([performance.now(), now]); }
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  const { after, lines, keystrokes, char_delay_ms: charDelay, pause_ms: pause, follow_chars: follow } = OPTIONS;
  await goTo(page, await lineAfter(page, "stats.py", after), 1);
  await page.keyboard.press("End");
  let pressed = 0;
  const press = async (key) => { await page.keyboard.press(key); pressed++; };
  for (let i = 0; pressed < keystrokes; i++) {
    await press("Enter");
    for (const char of lines[i % lines.length]) {
      if (pressed >= keystrokes) break;
      await press(char === " " ? "Space" : char);
      await sleep(charDelay);
    }
    // The pause: a suggestion appears; type its first characters (typed ahead), then take the rest.
    const shown = await waitForGhost(page, pause);
    result.ghosts.push(shown.text);
    const ahead = shown.text.replace(/^\s+/, "").slice(0, follow).replace(/[()[\]{}"'`]/g, "");
    for (const char of ahead) {
      if (pressed >= keystrokes) break;
      await press(char === " " ? "Space" : char);
      await sleep(charDelay * 2);
    }
    if (pressed < keystrokes && (await ghostText(page)).trim()) {
      await press("Tab");
      await sleep(pause / 2);
    }
    await page.keyboard.press("Escape");
    await page.keyboard.press("End");
  }
  await sleep(pause);
  const { keys, ghosts } = await page.evaluate(() => ({ keys: window.__keys, ghosts: window.__ghosts }));
  result.keys = keys.length;
  result.latencies_ms = keys.map((t, i) => {
    const until = keys[i + 1] ?? Infinity;
    const shown = ghosts.find(([at, text]) => at >= t && at < until && text.trim());
    return shown ? shown[0] - t : null;
  });
  await shot(page, "latency-end");
}

const SCENARIOS = { main: mainScenario, "missing-model": missingModelScenario, latency: latencyScenario };

const browser = await chromium.launch({
  executablePath: process.env.CA_CHROMIUM,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } }); // a fresh, empty profile
const page = await context.newPage();
try {
  await SCENARIOS[SCENARIO](page);
} catch (error) {
  result.error = String(error?.stack ?? error);
  try { await shot(page, "failure"); } catch { /* the page is gone */ }
} finally {
  result.elapsed_ms = Date.now() - started;
  fs.writeFileSync(path.join(OUT, "result.json"), JSON.stringify(result, null, 2));
  await browser.close();
}
