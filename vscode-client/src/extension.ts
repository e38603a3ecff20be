// The VS Code side: starts `code-assistant lsp`, keeps its settings in step with VS Code's, and
// shows its state in the status bar. Inline completions come from the server's LSP 3.18
// textDocument/inlineCompletion through our InlineProvider; the server puts `codeAssistant.accept`
// on every item, and VS Code runs that command when the user accepts the item.
import { type ChildProcess, spawn } from "node:child_process";
import * as readline from "node:readline";

import * as vscode from "vscode";
import {
  CloseAction,
  DidChangeConfigurationNotification,
  ErrorAction,
  ExecuteCommandRequest,
  LanguageClient,
  type LanguageClientOptions,
  RevealOutputChannelOn,
  type ServerOptions,
  State,
} from "vscode-languageclient/node";

import { InlineProvider, registerInlineProvider } from "./inlineProvider";
import { classifyServerLine, failureReason, shouldRestart } from "./serverLog";

import { buildServerLaunch } from "./serverLaunch";
import {
  CONFIG_SECTION,
  configurationParams,
  documentSelector,
  type ExtensionSettings,
  needsRestart,
  readSettings,
  toggleUpdate,
  toServerSettings,
} from "./settings";
import { formatStats, isServerStats } from "./stats";
import { nextServerState, type ServerState, statusView } from "./status";

const API_KEY_SECRET = "codeAssistant.apiKey";
const ACCEPT_COMMAND = "codeAssistant.accept";
const STATS_COMMAND = "codeAssistant.stats";
const RESTART_WINDOW_MS = 3 * 60 * 1000;
const STDERR_TAIL = 20;

/** vscode-languageclient shows some failures as popups of its own, whatever the error handler
 * says (a start failure: "couldn't create connection to server ... -32097"). This extension shows
 * one notification with the server's reason instead; the client's messages go to the log. */
class CodeAssistantClient extends LanguageClient {
  override error(message: string, data?: unknown): void {
    super.error(message, data, false);
  }
}

class CodeAssistant implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private settings: ExtensionSettings;
  private serverState: ServerState = "stopped";
  private lastError: string | undefined;
  private acceptFallback: vscode.Disposable | undefined;
  private inlineProvider: vscode.Disposable | undefined;
  private process: ChildProcess | undefined;
  private stderrTail: string[] = [];
  private everRunning = false;
  private restarts: number[] = [];

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly log: vscode.LogOutputChannel,
    private readonly statusItem: vscode.StatusBarItem,
  ) {
    this.settings = currentSettings();
  }

  /** Whether the server is (being) started; it starts on the first document of a chosen language. */
  started = false;

  wants(document: vscode.TextDocument): boolean {
    return (document.uri.scheme === "file" || document.uri.scheme === "untitled")
      && this.settings.languages.includes(document.languageId);
  }

  private async apiKey(): Promise<string | undefined> {
    return this.context.secrets.get(API_KEY_SECRET);
  }

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    const workspaceFolder = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
    const launch = buildServerLaunch(this.settings, workspaceFolder);
    this.stderrTail = [];
    this.everRunning = false;
    // Spawned here, not by the client, to keep the exit code; stderr goes through `stdioOptions`.
    const serverOptions: ServerOptions = () => {
      this.log.info(`starting ${launch.command} ${launch.args.join(" ")}`);
      const child = spawn(launch.command, launch.args, { cwd: launch.options.cwd, stdio: "pipe" });
      child.on("error", (error) => { this.stderrTail.push(`code-assistant: ${error.message}`); });
      this.process = child;
      return Promise.resolve(child);
    };
    const initialSettings = toServerSettings(this.settings, await this.apiKey());
    const clientOptions: LanguageClientOptions = {
      documentSelector: documentSelector(this.settings),
      initializationOptions: initialSettings,
      outputChannel: this.log,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      stdioOptions: {
        stdout: (input) => { readline.createInterface({ input }).on("line", (line) => { this.log.info(line); }); },
        stderr: (input) => {
          readline.createInterface({ input }).on("line", (line) => { this.serverLine(line); });
        },
      },
      // One clear notification (ours) instead of the client's restarts and "-32097" popups.
      initializationFailedHandler: () => false,
      errorHandler: {
        error: () => ({ action: ErrorAction.Shutdown, handled: true }),
        closed: () => this.onServerClosed(),
      },
      middleware: {
        // The server also answers textDocument/completion for editors without inline completion;
        // in VS Code the same text would show twice (ghost text and the suggest list).
        provideCompletionItem: () => undefined,
        // InlineProvider asks the server instead (it also reports partial accepts).
        provideInlineCompletionItems: () => undefined,
      },
    };
    const client = new CodeAssistantClient("codeAssistant", "Code Assistant", serverOptions, clientOptions);
    this.client = client;
    this.inlineProvider ??= registerInlineProvider(documentSelector(this.settings),
      new InlineProvider(() => this.client, () => this.settings.enable, this.log), this.log);
    client.onDidChangeState((event) => {
      const happened = event.newState === State.Running ? "running"
        : event.newState === State.Starting ? "starting" : "stopped";
      this.setServerState(nextServerState(this.serverState, happened));
    });
    this.setServerState("starting");
    try {
      await client.start();
      this.everRunning = true;
      this.ensureAcceptCommand(client);
    } catch (error) {
      const reason = await this.exitReason() ?? (error instanceof Error ? error.message : String(error));
      this.lastError = reason;
      this.log.error(`the language server did not start: ${reason}. Check that '${launch.command}' runs ` +
        "(setting codeAssistant.serverPath) and that the model directory exists (codeAssistant.model).");
      this.setServerState("error");
      void this.notifyFailure(reason);
    }
  }

  private serverLine(line: string): void {
    const { level, text } = classifyServerLine(line);
    this.stderrTail.push(text);
    if (this.stderrTail.length > STDERR_TAIL) this.stderrTail.shift();
    this.log[level](text);
  }

  /** The server's own reason, once its process has exited (its stderr may trail the closed pipe). */
  private async exitReason(): Promise<string | undefined> {
    const child = this.process;
    if (child !== undefined && child.exitCode === null && child.signalCode === null) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 2000);
        child.once("exit", () => { clearTimeout(timer); setTimeout(resolve, 50); });
      });
    }
    return failureReason(this.stderrTail);
  }

  private onServerClosed(): { action: CloseAction; handled: true } {
    const now = Date.now();
    this.restarts = this.restarts.filter((time) => now - time < RESTART_WINDOW_MS);
    const reason = failureReason(this.stderrTail);
    if (shouldRestart({ everRunning: this.everRunning, reason, recentRestarts: this.restarts.length })) {
      this.restarts.push(now);
      this.log.warn("the language server stopped; starting it again");
      return { action: CloseAction.Restart, handled: true };
    }
    if (this.everRunning) {
      // It ran and then stopped for good: say so once (a failed start is reported by start()).
      const why = reason ?? "it stopped repeatedly";
      this.lastError = why;
      this.setServerState("error");
      void this.notifyFailure(why);
    }
    return { action: CloseAction.DoNotRestart, handled: true };
  }

  private async notifyFailure(reason: string): Promise<void> {
    const choice = await vscode.window.showErrorMessage(
      `Code Assistant: the language server stopped: ${reason}`, "Show Log", "Open Settings");
    if (choice === "Show Log") this.log.show();
    if (choice === "Open Settings") await vscode.commands.executeCommand("workbench.action.openSettings", CONFIG_SECTION);
  }

  /** VS Code runs `codeAssistant.accept` when an item is accepted; the client registers it for the
   * server when the server lists it under executeCommandProvider. A server that does not list it
   * still gets the call, so that accepting never fails with "command not found". */
  private ensureAcceptCommand(client: LanguageClient): void {
    const listed = client.initializeResult?.capabilities.executeCommandProvider?.commands ?? [];
    if (listed.includes(ACCEPT_COMMAND) || this.acceptFallback !== undefined) return;
    this.acceptFallback = vscode.commands.registerCommand(ACCEPT_COMMAND, async (...args: unknown[]) => {
      if (this.client?.isRunning()) {
        await this.client.sendRequest(ExecuteCommandRequest.type, { command: ACCEPT_COMMAND, arguments: args });
      }
    });
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.started = false;
    this.statusItem.hide();
    this.acceptFallback?.dispose();
    this.acceptFallback = undefined;
    this.inlineProvider?.dispose();  // registered again for the languages of the next start
    this.inlineProvider = undefined;
    if (client === undefined) return;
    try {
      if (client.needsStop()) await client.stop();
    } catch (error) {
      this.log.warn(`stopping the language server: ${String(error)}`);
    }
    this.setServerState("stopped");
  }

  async restart(): Promise<void> {
    this.lastError = undefined;
    await this.stop();
    await this.start();
  }

  /** Settings or the API key changed: restart for what changes the process, else tell the server. */
  async onSettingsChanged(): Promise<void> {
    const before = this.settings;
    this.settings = currentSettings();
    if (!this.started) {
      if (vscode.workspace.textDocuments.some((document) => this.wants(document))) await this.start();
      return;
    }
    if (needsRestart(before, this.settings)) {
      await this.restart();
      return;
    }
    await this.pushSettings();
    this.render();
  }

  async pushSettings(): Promise<void> {
    if (!this.client?.isRunning()) return;
    const settings = toServerSettings(this.settings, await this.apiKey());
    await this.client.sendNotification(DidChangeConfigurationNotification.type, configurationParams(settings));
  }

  /** Shown and accepted suggestions per language since the server started. */
  async showStats(): Promise<void> {
    if (!this.client?.isRunning()) {
      void vscode.window.showWarningMessage("Code Assistant: the language server is not running.");
      return;
    }
    const stats: unknown = await this.client.sendRequest(ExecuteCommandRequest.type, { command: STATS_COMMAND });
    const line = isServerStats(stats) ? formatStats(stats) : `unexpected answer: ${JSON.stringify(stats)}`;
    this.log.info(`stats: ${line}`);
    void vscode.window.showInformationMessage(`Code Assistant: ${line}`);
  }

  async toggle(): Promise<void> {
    const config = vscode.workspace.getConfiguration(CONFIG_SECTION);
    const { target, value } = toggleUpdate(config.inspect<boolean>("enable"), this.settings.enable);
    // The onDidChangeConfiguration listener sends the new value to the server.
    await config.update("enable", value, target === "workspace"
      ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global);
  }

  private setServerState(state: ServerState): void {
    this.serverState = state;
    this.render();
  }

  private render(): void {
    if (!this.started) return;
    const view = statusView({
      server: this.serverState,
      enabled: this.settings.enable,
      remoteUrl: this.settings.remoteUrl,
      error: this.lastError,
    });
    this.statusItem.text = view.text;
    this.statusItem.tooltip = view.tooltip;
    this.statusItem.backgroundColor = view.severity === "normal" ? undefined
      : new vscode.ThemeColor(`statusBarItem.${view.severity}Background`);
    this.statusItem.show();
  }

  dispose(): void {
    this.acceptFallback?.dispose();
    this.inlineProvider?.dispose();
  }
}

function currentSettings(): ExtensionSettings {
  const config = vscode.workspace.getConfiguration(CONFIG_SECTION);
  return readSettings((key) => config.get(key));
}

let assistant: CodeAssistant | undefined;

export function activate(context: vscode.ExtensionContext): void {
  const log = vscode.window.createOutputChannel("Code Assistant", { log: true });
  const statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  statusItem.command = "codeAssistant.toggle";
  const instance = new CodeAssistant(context, log, statusItem);
  assistant = instance;
  context.subscriptions.push(
    log,
    statusItem,
    instance,
    vscode.commands.registerCommand("codeAssistant.toggle", () => instance.toggle()),
    vscode.commands.registerCommand("codeAssistant.restart", () => instance.restart()),
    vscode.commands.registerCommand("codeAssistant.showLog", () => { log.show(); }),
    vscode.commands.registerCommand("codeAssistant.showStats", () => instance.showStats()),
    vscode.commands.registerCommand("codeAssistant.setApiKey", async () => {
      const key = await vscode.window.showInputBox({
        prompt: "API key for the team code-assistant server (kept in VS Code's secret storage)",
        password: true,
        ignoreFocusOut: true,
      });
      if (key !== undefined && key.trim() !== "") await context.secrets.store(API_KEY_SECRET, key.trim());
    }),
    vscode.commands.registerCommand("codeAssistant.clearApiKey", () => context.secrets.delete(API_KEY_SECRET)),
    context.secrets.onDidChange((event) => {
      if (event.key === API_KEY_SECRET) void instance.pushSettings();
    }),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (event.affectsConfiguration(CONFIG_SECTION)) void instance.onSettingsChanged();
    }),
    vscode.workspace.onDidOpenTextDocument((document) => {
      if (!instance.started && instance.wants(document)) void instance.start();
    }),
  );
  // Activation is cheap; the server (and its model) starts with the first document that needs it,
  // without holding up activation while the model loads.
  if (vscode.workspace.textDocuments.some((document) => instance.wants(document))) void instance.start();
}

export async function deactivate(): Promise<void> {
  await assistant?.stop();
  assistant = undefined;
}
