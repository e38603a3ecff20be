// What the server writes on stderr, sorted for the output channel. vscode-languageclient logs every
// stderr line as an error; the server's stderr is its log: one JSON line per request, warnings as
// plain lines, and a one-line reason before it exits when it cannot start. No `vscode` import.

export type LogLevel = "info" | "warn" | "error";

export interface ServerLogLine {
  level: LogLevel;
  text: string;
}

// `code-assistant lsp: cannot load model: ...` and the like: the server's own last word.
const FATAL = /^code-assistant(?: lsp)?: /;
const ERROR_WORDS = /^(Traceback \(most recent call last\)|\w*(Error|Exception)\b)/;

/** The level a stderr line deserves: routine request lines are info, a request that failed is a
 * warning, the server's last word before it exits and tracebacks are errors. */
export function classifyServerLine(line: string): ServerLogLine {
  const text = line.replace(/\s+$/, "");
  if (text.startsWith("{")) {
    try {
      const record = JSON.parse(text) as { event?: unknown; outcome?: unknown; level?: unknown };
      if (record.level === "error") return { level: "error", text };
      if (record.level === "warning" || record.outcome === "error") return { level: "warn", text };
      return { level: "info", text };
    } catch {
      // not JSON after all: fall through
    }
  }
  if (FATAL.test(text) || ERROR_WORDS.test(text)) return { level: "error", text };
  return { level: "info", text };
}

/** Why the server stopped, from its last stderr lines: its own one-line reason when it gave one,
 * else the last line of a traceback. */
export function failureReason(lines: readonly string[]): string | undefined {
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]?.trim() ?? "";
    if (FATAL.test(line)) return line.replace(FATAL, "");
  }
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]?.trim() ?? "";
    if (/^\w+(Error|Exception)\b/.test(line)) return line;
  }
  return undefined;
}

/** Whether a server that stopped should be started again: not when it never got ready (a bad
 * model directory or command line fails the same way every time) or said why it exits; a server
 * that ran and crashed gets a few more tries, as vscode-languageclient's default does. */
export function shouldRestart(history: { everRunning: boolean; reason: string | undefined; recentRestarts: number },
  maxRestarts = 3): boolean {
  return history.everRunning && history.reason === undefined && history.recentRestarts < maxRestarts;
}
