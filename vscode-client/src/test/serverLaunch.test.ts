import assert from "node:assert/strict";
import * as path from "node:path";
import { describe, it } from "node:test";

import { buildServerLaunch } from "../serverLaunch";
import { DEFAULT_SETTINGS, type ExtensionSettings } from "../settings";

const settings = (change: Partial<ExtensionSettings>): ExtensionSettings => ({ ...DEFAULT_SETTINGS, ...change });
const root = path.resolve("/home/me/project");

describe("buildServerLaunch", () => {
  it("runs `code-assistant lsp` from PATH by default", () => {
    assert.deepEqual(buildServerLaunch(settings({})), { command: "code-assistant", args: ["lsp"], options: {} });
  });

  it("passes the model directory, relative to the workspace", () => {
    const launch = buildServerLaunch(settings({ model: "models/default" }), root);
    assert.deepEqual(launch.args, ["lsp", "--model", path.join(root, "models/default")]);
    assert.deepEqual(launch.options, { cwd: root });
  });

  it("sets no transport, so that the client adds no --stdio the server would reject", () => {
    assert.equal(buildServerLaunch(settings({}), root).transport, undefined);
    assert.ok(!buildServerLaunch(settings({}), root).args.includes("--stdio"));
  });

  it("uses the remote server instead of a model and keeps the API key off the command line", () => {
    const launch = buildServerLaunch(settings({ remoteUrl: "https://ca.example.com", model: "ignored" }), root);
    assert.deepEqual(launch.args, ["lsp", "--remote", "https://ca.example.com"]);
    assert.ok(!launch.args.includes("--api-key"));
  });

  it("appends extra arguments and expands ${workspaceFolder}", () => {
    const launch = buildServerLaunch(settings({
      serverPath: "${workspaceFolder}/.venv/bin/code-assistant",
      serverArgs: ["--tcp", "0", "--log=${workspaceFolder}/lsp.log"],
    }), root);
    assert.equal(launch.command, path.join(root, ".venv/bin/code-assistant"));
    assert.deepEqual(launch.args, ["lsp", "--tcp", "0", `--log=${root}/lsp.log`]);
  });

  it("takes a relative executable path from the workspace folder and a bare name from PATH", () => {
    assert.equal(buildServerLaunch(settings({ serverPath: ".venv/bin/code-assistant" }), root).command,
      path.join(root, ".venv/bin/code-assistant"));
    assert.equal(buildServerLaunch(settings({ serverPath: "code-assistant" }), root).command, "code-assistant");
    assert.equal(buildServerLaunch(settings({ serverPath: "/opt/ca/bin/code-assistant" }), root).command,
      "/opt/ca/bin/code-assistant");
  });
});
