// package.json is what VS Code reads; settings.ts and extension.ts are what the code does. These
// checks keep the two from drifting apart (a setting with another default, a command never registered).
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, it } from "node:test";

import { CONFIG_SECTION, DEFAULT_SETTINGS } from "../settings";

const ROOT = path.resolve(__dirname, "..", "..");

interface Manifest {
  main: string;
  engines: { vscode: string };
  activationEvents: string[];
  contributes: {
    commands: { command: string; title: string }[];
    keybindings: { key: string; command: string; when: string }[];
    configuration: { properties: Partial<Record<string, { default: unknown; type: string | string[] }>> };
  };
  dependencies: Record<string, string>;
  devDependencies: Partial<Record<string, string>>;
}

const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8")) as Manifest;
const extensionSource = fs.readFileSync(path.join(ROOT, "src", "extension.ts"), "utf8");

describe("package.json", () => {
  it("declares every setting the code reads, with the same default", () => {
    const declared = manifest.contributes.configuration.properties;
    const expected = Object.fromEntries(Object.entries(DEFAULT_SETTINGS).map(([key, value]) => [`${CONFIG_SECTION}.${key}`, value]));
    assert.deepEqual(Object.keys(declared).sort(), Object.keys(expected).sort());
    for (const [key, value] of Object.entries(expected)) assert.deepEqual(declared[key]?.default, value, key);
  });

  it("keeps the API key out of settings", () => {
    assert.ok(!Object.keys(manifest.contributes.configuration.properties).some((key) => /apikey/i.test(key)));
  });

  it("contributes exactly the commands the extension registers", () => {
    const registered = [...extensionSource.matchAll(/registerCommand\("([^"]+)"/g)].map((match) => match[1]);
    assert.deepEqual(manifest.contributes.commands.map((c) => c.command).sort(), registered.sort());
  });

  it("lets Tab take the ghost text while the suggest widget is open, in the languages it completes", () => {
    const binding = manifest.contributes.keybindings.find((b) => b.key === "tab");
    assert.ok(binding !== undefined);
    assert.equal(binding.command, "editor.action.inlineSuggest.commit");
    const when = binding.when.split(" && ");
    assert.ok(when.includes("inlineSuggestionVisible") && when.includes("suggestWidgetVisible"), binding.when);
    const languages = /editorLangId in (\S+)/.exec(binding.when)?.[1];
    assert.ok(languages !== undefined && extensionSource.includes(`"${languages}"`), "the context key is never set");
  });

  it("points at the compiled entry point and an editor the language client supports", () => {
    assert.equal(manifest.main, "./out/extension.js");
    assert.ok(fs.existsSync(path.join(ROOT, "out", "extension.js")), "npm run compile has not run");
    const client = JSON.parse(fs.readFileSync(
      path.join(ROOT, "node_modules", "vscode-languageclient", "package.json"), "utf8")) as Manifest;
    assert.equal(manifest.engines.vscode, client.engines.vscode);
    assert.ok(manifest.devDependencies["@types/vscode"]?.replace(/^[~^]/, "").startsWith(
      client.engines.vscode.replace(/^[~^]/, "").replace(/\.0$/, "")));
  });
});
