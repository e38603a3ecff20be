// End to end: the real `code-assistant lsp` process, started with the command line the extension
// builds, driven over stdio by vscode-languageserver-protocol (the library inside
// vscode-languageclient) the way VS Code drives it: initialize, didOpen, inline completion, the
// accept command the item carries, a settings change, shutdown.
import assert from "node:assert/strict";
import { type ChildProcessWithoutNullStreams, execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";

import {
  createProtocolConnection,
  DidChangeConfigurationNotification,
  DidOpenTextDocumentNotification,
  ExecuteCommandRequest,
  ExitNotification,
  type InitializeResult,
  InitializedNotification,
  InitializeRequest,
  type InlineCompletionItem,
  type InlineCompletionList,
  InlineCompletionRequest,
  InlineCompletionTriggerKind,
  type ProtocolConnection,
  ShutdownRequest,
  StreamMessageReader,
  StreamMessageWriter,
} from "vscode-languageserver-protocol/node";

import { buildServerLaunch } from "../serverLaunch";
import { configurationParams, DEFAULT_SETTINGS, type ExtensionSettings, toServerSettings } from "../settings";

const REPO_ROOT = path.resolve(__dirname, "..", "..", "..");
const SERVER_BIN = process.env.CODE_ASSISTANT_BIN ?? path.join(REPO_ROOT, ".venv", "bin", "code-assistant");
const PYTHON = process.env.CODE_ASSISTANT_PYTHON ?? path.join(path.dirname(SERVER_BIN), "python");
const ACCEPT_COMMAND = "codeAssistant.accept";

// CI must run this test; a developer without the Python environment gets a skip that says why.
const missing = fs.existsSync(SERVER_BIN) ? undefined : `no language server at ${SERVER_BIN} (set CODE_ASSISTANT_BIN)`;
if (missing !== undefined && process.env.CI === "true") throw new Error(missing);

/** A tiny random-weight model made by the project's own test fixture, unless one is given. */
function testModelDir(): string {
  const given = process.env.CODE_ASSISTANT_TEST_MODEL;
  if (given) return given;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ca-vscode-model-"));
  const script = "import sys; from pathlib import Path; sys.path.insert(0, '.');"
    + "from tests.conftest import make_model_dir; make_model_dir(Path(sys.argv[1]))";
  execFileSync(PYTHON, ["-c", script, dir], { cwd: REPO_ROOT, stdio: ["ignore", "ignore", "inherit"] });
  return dir;
}

const DOCUMENT_URI = "file:///workspace/example.py";
const DOCUMENT = [
  "import json",
  "",
  "",
  "def load_config(path):",
  "    with open(path) as handle:",
  "        return json.load(handle)",
  "",
  "",
  "def save_config(path, config):",
  "    with open(path, \"w\") as handle:",
  "        json.",
  "",
  "",
  "class Encoder(json.JSONEncoder):",
  "    def default(self, value):",
  "        ",
  "",
].join("\n");

// Cursor positions where an editor would ask: after `json.`, on an empty indented line, after `def `.
const POSITIONS = [
  { line: 10, character: 13 },
  { line: 15, character: 8 },
  { line: 4, character: 30 },
  { line: 13, character: 0 },
];

describe("code-assistant lsp driven by the VS Code protocol client", { skip: missing, timeout: 180_000 }, () => {
  let server: ChildProcessWithoutNullStreams;
  let connection: ProtocolConnection;
  let stderr = "";
  let exited: Promise<number | null>;
  let initializeResult: InitializeResult;
  const settings: ExtensionSettings = { ...DEFAULT_SETTINGS, serverPath: SERVER_BIN, debounceMs: 0, maxTokens: 16 };

  before(async () => {
    const launch = buildServerLaunch({ ...settings, model: testModelDir() });
    // The extension's command line, run as vscode-languageclient runs an Executable without transport.
    server = spawn(launch.command, launch.args, { cwd: REPO_ROOT, stdio: "pipe" });
    server.stderr.on("data", (chunk: Buffer) => { stderr += chunk.toString(); });
    exited = new Promise((resolve) => server.on("exit", (code) => { resolve(code); }));
    connection = createProtocolConnection(new StreamMessageReader(server.stdout), new StreamMessageWriter(server.stdin));
    connection.listen();
    initializeResult = await connection.sendRequest(InitializeRequest.type, {
      processId: process.pid,
      // eslint-disable-next-line @typescript-eslint/no-deprecated -- still a required field of InitializeParams
      rootUri: null,
      workspaceFolders: [{ uri: "file:///workspace", name: "workspace" }],
      capabilities: {
        textDocument: {
          inlineCompletion: { dynamicRegistration: false },
          synchronization: { dynamicRegistration: false },
        },
        workspace: { executeCommand: { dynamicRegistration: false } },
      },
      initializationOptions: toServerSettings(settings, undefined),
    });
    await connection.sendNotification(InitializedNotification.type, {});
    await connection.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri: DOCUMENT_URI, languageId: "python", version: 1, text: DOCUMENT },
    });
  });

  after(async () => {
    if (server.exitCode === null) server.kill();
    await exited;
    connection.dispose();
  });

  async function inlineCompletion(position: { line: number; character: number }): Promise<InlineCompletionItem[]> {
    const result: InlineCompletionList | InlineCompletionItem[] | null = await connection.sendRequest(
      InlineCompletionRequest.type, {
        textDocument: { uri: DOCUMENT_URI },
        position,
        context: { triggerKind: InlineCompletionTriggerKind.Invoked, selectedCompletionInfo: undefined },
      });
    if (result === null) return [];
    return Array.isArray(result) ? result : result.items;
  }

  it("advertises inline completion and the accept command the client registers", () => {
    const capabilities = initializeResult.capabilities;
    assert.ok(capabilities.inlineCompletionProvider, "inlineCompletionProvider missing");
    assert.ok(capabilities.executeCommandProvider?.commands.includes(ACCEPT_COMMAND),
      `executeCommandProvider lacks ${ACCEPT_COMMAND}: ${JSON.stringify(capabilities.executeCommandProvider)}`);
  });

  let accepted: InlineCompletionItem | undefined;

  it("answers inline completion requests with items that insert at the cursor and carry the accept command",
    async () => {
      const answered: { position: { line: number; character: number }; item: InlineCompletionItem }[] = [];
      for (const position of POSITIONS) {
        for (const item of await inlineCompletion(position)) answered.push({ position, item });
      }
      assert.ok(answered.length > 0, `no completion at any of ${JSON.stringify(POSITIONS)}; server log:\n${stderr}`);
      for (const { position, item } of answered) {
        const text = typeof item.insertText === "string" ? item.insertText : item.insertText.value;
        assert.ok(text.trim() !== "", `blank completion ${JSON.stringify(item)}`);
        assert.deepEqual(item.range?.start, position);
        assert.equal(item.range.end.line, position.line);
        assert.equal(item.command?.command, ACCEPT_COMMAND);
        const argument: unknown = item.command.arguments?.[0];
        assert.equal((argument as { language?: unknown }).language, "python");
      }
      accepted = answered[0]?.item;
    });

  it("counts an accepted item when the client runs the item's command", async () => {
    assert.ok(accepted?.command, "no item to accept");
    await connection.sendRequest(ExecuteCommandRequest.type,
      { command: accepted.command.command, arguments: accepted.command.arguments });
    const stats = await connection.sendRequest(ExecuteCommandRequest.type,
      { command: "codeAssistant.stats", arguments: [] }) as { shown: Partial<Record<string, number>>; accepted: Partial<Record<string, number>> };
    assert.equal(stats.accepted.python, 1);
    assert.ok((stats.shown.python ?? 0) >= 1);
  });

  it("stops completing when the extension turns completions off", async () => {
    const off = toServerSettings({ ...settings, enable: false }, undefined);
    await connection.sendNotification(DidChangeConfigurationNotification.type, configurationParams(off));
    for (const position of POSITIONS) assert.deepEqual(await inlineCompletion(position), []);
  });

  it("shuts down and exits cleanly", async () => {
    await connection.sendRequest(ShutdownRequest.type);
    await connection.sendNotification(ExitNotification.type);
    assert.equal(await exited, 0, stderr);
  });
});
