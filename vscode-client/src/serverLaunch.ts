// How the extension starts `code-assistant lsp`. No `vscode` import: tested with plain Node, and the
// end-to-end test starts the real server with the same command line.
import * as path from "node:path";

import type { Executable } from "vscode-languageclient/node";

import type { ExtensionSettings } from "./settings";

/** vscode-languageclient's `Executable`, always without `transport`: with `TransportKind.stdio` the
 * client appends `--stdio` to the arguments, which `code-assistant lsp` does not take (stdio is its
 * default). A type-only import: this module still runs without VS Code. */
export interface ServerLaunch extends Executable {
  args: string[];
  options: { cwd?: string };
  transport?: undefined;
}

const WORKSPACE_FOLDER = /\$\{workspaceFolder\}/g;

/** `${workspaceFolder}` in a setting means the first workspace folder (as in tasks.json). */
function expand(value: string, workspaceFolder: string | undefined): string {
  if (workspaceFolder === undefined) return value;
  return value.replace(WORKSPACE_FOLDER, workspaceFolder);
}

/** A relative path with a separator (`.venv/bin/code-assistant`) is taken from the workspace
 * folder; a bare name (`code-assistant`) is looked up on PATH by the OS. */
function resolveExecutable(serverPath: string, workspaceFolder: string | undefined): string {
  const expanded = expand(serverPath, workspaceFolder);
  const hasSeparator = expanded.includes("/") || expanded.includes("\\");
  if (!hasSeparator || path.isAbsolute(expanded) || workspaceFolder === undefined) return expanded;
  return path.resolve(workspaceFolder, expanded);
}

/**
 * The server's command line. With a remote URL the server forwards requests to a team's
 * `code-assistant serve` and loads no model; otherwise it runs the model in its own process.
 * The API key is never put on the command line (other users on the machine can read it there);
 * it travels in the server settings instead.
 */
export function buildServerLaunch(settings: ExtensionSettings, workspaceFolder?: string): ServerLaunch {
  const args = ["lsp"];
  if (settings.remoteUrl !== null) {
    args.push("--remote", settings.remoteUrl);
  } else if (settings.model !== null) {
    const model = expand(settings.model, workspaceFolder);
    args.push("--model", workspaceFolder !== undefined ? path.resolve(workspaceFolder, model) : model);
  }
  args.push(...settings.serverArgs.map((arg) => expand(arg, workspaceFolder)));
  return {
    command: resolveExecutable(settings.serverPath, workspaceFolder),
    args,
    options: workspaceFolder !== undefined ? { cwd: workspaceFolder } : {},
  };
}
