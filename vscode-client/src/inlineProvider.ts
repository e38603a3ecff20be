// Ghost text from the server's textDocument/inlineCompletion, through a provider of our own rather
// than vscode-languageclient's: VS Code tells only the provider that registered an item when the
// user accepts part of it (next word, next line), and the server counts those partial accepts.
import * as vscode from "vscode";
import { ExecuteCommandRequest, InlineCompletionRequest, type LanguageClient } from "vscode-languageclient/node";

export const PARTIAL_ACCEPT_COMMAND = "codeAssistant.partialAccept";

/** VS Code's `PartialAcceptInfo` (proposal `inlineCompletionsAdditions`; not in @types/vscode 1.91). */
interface PartialAcceptInfo {
  kind: number;            // PartialAcceptTriggerKind: 0 unknown, 1 word, 2 line, 3 suggest
  acceptedLength: number;
}

const KINDS: Record<number, string> = { 1: "word", 2: "line" };

export class InlineProvider implements vscode.InlineCompletionItemProvider {
  constructor(
    private readonly client: () => LanguageClient | undefined,
    private readonly enabled: () => boolean,
    private readonly log: vscode.LogOutputChannel,
  ) {}

  async provideInlineCompletionItems(document: vscode.TextDocument, position: vscode.Position,
    context: vscode.InlineCompletionContext, token: vscode.CancellationToken):
    Promise<vscode.InlineCompletionList | vscode.InlineCompletionItem[] | undefined> {
    const client = this.client();
    if (client?.isRunning() !== true || !this.enabled()) return undefined;
    const params = client.code2ProtocolConverter.asInlineCompletionParams(document, position, context);
    try {
      const result = await client.sendRequest(InlineCompletionRequest.type, params, token);
      return await client.protocol2CodeConverter.asInlineCompletionResult(result, token);
    } catch (error) {
      if (!token.isCancellationRequested) this.log.warn(`inline completion failed: ${String(error)}`);
      return undefined;
    }
  }

  /** The user took part of an item (Ctrl+Right: next word; next line): tell the server. */
  handleDidPartiallyAcceptCompletionItem(item: vscode.InlineCompletionItem, info: PartialAcceptInfo | number): void {
    if (typeof info === "number") return; // VS Code calls both overloads; the object one says more
    const client = this.client();
    const argument: unknown = item.command?.arguments?.[0];
    if (client?.isRunning() !== true || typeof argument !== "object" || argument === null) return;
    const { id, language } = argument as { id?: unknown; language?: unknown };
    const report = { id, language, kind: KINDS[info.kind] ?? "other", acceptedLength: info.acceptedLength };
    client.sendRequest(ExecuteCommandRequest.type, { command: PARTIAL_ACCEPT_COMMAND, arguments: [report] })
      .catch((error: unknown) => { this.log.warn(`reporting a partial accept: ${String(error)}`); });
  }
}

/** Registers the provider with partial-accept reports where VS Code allows them (the API is a
 * proposal: code-server and VS Code started with --enable-proposed-api allow it; elsewhere the
 * registration throws and ghost text works without the reports). */
export function registerInlineProvider(selector: vscode.DocumentSelector, provider: InlineProvider,
  log: vscode.LogOutputChannel): vscode.Disposable {
  try {
    return vscode.languages.registerInlineCompletionItemProvider(selector, provider);
  } catch (error) {
    log.info(`partial accepts are not reported (${String(error)})`);
    const plain: vscode.InlineCompletionItemProvider = {
      provideInlineCompletionItems: (...args) => provider.provideInlineCompletionItems(...args),
    };
    return vscode.languages.registerInlineCompletionItemProvider(selector, plain);
  }
}
