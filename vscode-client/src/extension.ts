// The VS Code side: starts `code-assistant lsp`, keeps its settings in step with VS Code's, and
// shows its state in the status bar. Inline completions themselves come from vscode-languageclient's
// LSP 3.18 inline completion feature; the server puts `codeAssistant.accept` on every item, and VS
// Code runs that command when the user accepts the item.
import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  type LanguageClientOptions,
  RevealOutputChannelOn,
  type ServerOptions,
  State,
} from "vscode-languageclient/node";

import { buildServerLaunch } from "./serverLaunch";
import {
  CONFIG_SECTION,
  configurationParams,
  documentSelector,
  type ExtensionSettings,
  needsRestart,
  readSettings,
  toServerSettings,
} from "./settings";
import { formatStats, isServerStats } from "./stats";
import { nextServerState, type ServerState, statusView } from "./status";

const API_KEY_SECRET = "codeAssistant.apiKey";
const ACCEPT_COMMAND = "codeAssistant.accept";
const STATS_COMMAND = "codeAssistant.stats";

class CodeAssistant implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private settings: ExtensionSettings;
  private serverState: ServerState = "stopped";
  private lastError: string | undefined;
  private acceptFallback: vscode.Disposable | undefined;

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
    this.log.info(`starting ${launch.command} ${launch.args.join(" ")}`);
    const serverOptions: ServerOptions = launch;
    const initialSettings = toServerSettings(this.settings, await this.apiKey());
    const clientOptions: LanguageClientOptions = {
      documentSelector: documentSelector(this.settings),
      initializationOptions: initialSettings,
      outputChannel: this.log,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      middleware: {
        // The server also answers textDocument/completion for editors without inline completion;
        // in VS Code the same text would show twice (ghost text and the suggest list).
        provideCompletionItem: () => undefined,
        // Turned off: answer at once instead of a round trip to a server that returns nothing.
        provideInlineCompletionItems: (document, position, context, token, next) =>
          this.settings.enable ? next(document, position, context, token) : undefined,
      },
    };
    const client = new LanguageClient("codeAssistant", "Code Assistant", serverOptions, clientOptions);
    this.client = client;
    client.onDidChangeState((event) => {
      const happened = event.newState === State.Running ? "running"
        : event.newState === State.Starting ? "starting" : "stopped";
      this.setServerState(nextServerState(this.serverState, happened));
    });
    this.setServerState("starting");
    try {
      await client.start();
      this.ensureAcceptCommand(client);
    } catch (error) {
      this.lastError = error instanceof Error ? error.message : String(error);
      this.log.error(`the language server did not start: ${this.lastError}. Check that '${launch.command}' runs ` +
        "(setting codeAssistant.serverPath) and that the model directory exists (codeAssistant.model).");
      this.setServerState("error");
    }
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
    // Where the effective value comes from: a user-level change would not override a workspace's.
    const target = config.inspect<boolean>("enable")?.workspaceValue !== undefined
      ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
    // The onDidChangeConfiguration listener sends the new value to the server.
    await config.update("enable", !this.settings.enable, target);
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
