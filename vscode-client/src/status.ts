// What the status bar item shows. No `vscode` import: the extension copies a `StatusView` onto its
// `StatusBarItem`, and the tests check the views directly.

export type ServerState = "starting" | "ready" | "error" | "stopped";

export interface StatusInput {
  server: ServerState;
  enabled: boolean;
  remoteUrl: string | null;
  /** The last error's message, shown in the tooltip. */
  error?: string | undefined;
}

export interface StatusView {
  /** Text with VS Code codicons (`$(name)`); `~spin` animates the icon. */
  text: string;
  tooltip: string;
  /** `error` and `warning` map to the status bar's theme colours. */
  severity: "normal" | "warning" | "error";
}

const NAME = "Code Assistant";

function where(remoteUrl: string | null): string {
  return remoteUrl === null ? "model on this machine" : `team server ${remoteUrl}`;
}

export function statusView(input: StatusInput): StatusView {
  const clickHint = input.enabled ? "Click to turn completions off." : "Click to turn completions on.";
  switch (input.server) {
    case "starting":
      return {
        text: `$(sync~spin) ${NAME}`,
        tooltip: input.remoteUrl === null
          ? `${NAME}: starting the language server and loading the model…`
          : `${NAME}: starting the language server (${where(input.remoteUrl)})…`,
        severity: "normal",
      };
    case "error":
      return {
        text: `$(error) ${NAME}`,
        tooltip: `${NAME}: the language server failed${input.error ? `: ${input.error}` : ""}. ` +
          "See the output channel; run 'Code Assistant: Restart Server' to try again.",
        severity: "error",
      };
    case "stopped":
      return {
        text: `$(debug-stop) ${NAME}`,
        tooltip: `${NAME}: the language server is not running. Run 'Code Assistant: Restart Server'.`,
        severity: "warning",
      };
    case "ready":
      return input.enabled
        ? { text: `$(check) ${NAME}`, tooltip: `${NAME}: ready (${where(input.remoteUrl)}). ${clickHint}`,
            severity: "normal" }
        : { text: `$(circle-slash) ${NAME}`, tooltip: `${NAME}: completions are off. ${clickHint}`,
            severity: "warning" };
  }
}

/**
 * The server's life as the client reports it. `stopped` after `starting` without ever getting ready,
 * or after an error, stays an error: the user must see that the server did not come up, not a
 * quiet "stopped".
 */
export function nextServerState(previous: ServerState, event: "starting" | "running" | "stopped" | "failed"): ServerState {
  switch (event) {
    case "starting":
      return "starting";
    case "running":
      return "ready";
    case "failed":
      return "error";
    case "stopped":
      return previous === "starting" || previous === "error" ? "error" : "stopped";
  }
}
