// The extension's settings and the language server's view of them. No `vscode` import here, so the
// mapping is tested with plain Node.

/** What the user sets under `codeAssistant.*` in VS Code. */
export interface ExtensionSettings {
  enable: boolean;
  maxTokens: number;
  temperature: number;
  multiline: boolean;
  /** null: the server adapts it to the typing speed and its latency. */
  debounceMs: number | null;
  remoteUrl: string | null;
  /** The HTTP dialect of the server at remoteUrl. */
  backend: Backend;
  /** The model name a remote server wants (Ollama, vLLM); null: its own. */
  remoteModel: string | null;
  /** Globs (gitignore syntax) of files that never get completions. */
  exclude: string[];
  typedAheadReuse: boolean;
  prefetch: boolean;
  model: string | null;
  serverPath: string;
  serverArgs: string[];
  languages: string[];
}

/** What the server reads from `initializationOptions` and `workspace/didChangeConfiguration`
 * (the names are the server's contract). `remoteUrl` and `apiKey` are left out rather than sent as
 * null, so that a `--remote URL` given in serverArgs is not overridden. */
export interface ServerSettings {
  enable: boolean;
  maxTokens: number;
  temperature: number;
  multiline: boolean;
  debounceMs: number | null;
  exclude: string[];
  typedAheadReuse: boolean;
  prefetch: boolean;
  remoteUrl?: string;
  backend?: Backend;
  model?: string | null;
  /** Sent whenever `remoteUrl` is: null after the key is cleared, so the server forgets the old one. */
  apiKey?: string | null;
}

export const BACKENDS = ["code-assistant", "openai", "llama.cpp", "ollama"] as const;
export type Backend = (typeof BACKENDS)[number];

// The server's defaults, repeated so that a setting the user never touched still says what it means.
export const DEFAULT_SETTINGS: Readonly<ExtensionSettings> = Object.freeze({
  enable: true,
  maxTokens: 48,
  temperature: 0.0,
  multiline: false,
  debounceMs: null,
  remoteUrl: null,
  backend: "code-assistant",
  remoteModel: null,
  exclude: [],
  typedAheadReuse: true,
  prefetch: true,
  model: null,
  serverPath: "code-assistant",
  serverArgs: [],
  languages: ["python"],
});

export const CONFIG_SECTION = "codeAssistant";

/** Reads one setting by its name under `codeAssistant.`; `undefined` when unset. */
export type SettingReader = (key: keyof ExtensionSettings) => unknown;

function asBoolean(value: unknown, fallback: boolean): boolean {
  return typeof value === "boolean" ? value : fallback;
}

function asNumber(value: unknown, fallback: number, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isFinite(value)) return fallback;
  return Math.min(max, Math.max(min, value));
}

function asInteger(value: unknown, fallback: number, min: number, max: number): number {
  return Math.round(asNumber(value, fallback, min, max));
}

function asOptionalString(value: unknown): string | null {
  if (typeof value !== "string") return null;
  const trimmed = value.trim();
  return trimmed === "" ? null : trimmed;
}

function asStringList(value: unknown, fallback: readonly string[]): string[] {
  if (!Array.isArray(value)) return [...fallback];
  return value.filter((item): item is string => typeof item === "string");
}

/** Settings as the user wrote them, with wrong types replaced by defaults and numbers clamped to
 * the ranges the server accepts (a typo in settings.json must not stop completions). */
export function readSettings(get: SettingReader): ExtensionSettings {
  const d = DEFAULT_SETTINGS;
  const languages = asStringList(get("languages"), d.languages).map((l) => l.trim()).filter((l) => l !== "");
  return {
    enable: asBoolean(get("enable"), d.enable),
    maxTokens: asInteger(get("maxTokens"), d.maxTokens, 1, 512),
    temperature: asNumber(get("temperature"), d.temperature, 0, 2),
    multiline: asBoolean(get("multiline"), d.multiline),
    debounceMs: Number.isFinite(get("debounceMs")) ? asInteger(get("debounceMs"), 0, 0, 2000) : null,
    remoteUrl: asOptionalString(get("remoteUrl")),
    backend: BACKENDS.find((name) => name === get("backend")) ?? d.backend,
    remoteModel: asOptionalString(get("remoteModel")),
    exclude: asStringList(get("exclude"), d.exclude).filter((glob) => glob.trim() !== ""),
    typedAheadReuse: asBoolean(get("typedAheadReuse"), d.typedAheadReuse),
    prefetch: asBoolean(get("prefetch"), d.prefetch),
    model: asOptionalString(get("model")),
    serverPath: asOptionalString(get("serverPath")) ?? d.serverPath,
    serverArgs: asStringList(get("serverArgs"), d.serverArgs),
    languages: languages.length > 0 ? languages : [...d.languages],
  };
}

/** The server's settings. The API key comes from VS Code's secret storage and is sent only with a
 * remote URL: a local server has no use for it. */
export function toServerSettings(settings: ExtensionSettings, apiKey: string | undefined): ServerSettings {
  const server: ServerSettings = {
    enable: settings.enable,
    maxTokens: settings.maxTokens,
    temperature: settings.temperature,
    multiline: settings.multiline,
    debounceMs: settings.debounceMs,
    exclude: settings.exclude,
    typedAheadReuse: settings.typedAheadReuse,
    prefetch: settings.prefetch,
  };
  if (settings.remoteUrl !== null) {
    server.remoteUrl = settings.remoteUrl;
    server.backend = settings.backend;
    server.model = settings.remoteModel;
    server.apiKey = apiKey ? apiKey : null;
  }
  return server;
}

/** The `workspace/didChangeConfiguration` params the server expects. */
export function configurationParams(settings: ServerSettings): { settings: { codeAssistant: ServerSettings } } {
  return { settings: { codeAssistant: settings } };
}

/** Settings that change how the server process is started (or which documents it sees); the others
 * are sent to the running server. */
const RESTART_KEYS = ["remoteUrl", "model", "serverPath", "serverArgs", "languages"] as const;

export function needsRestart(before: ExtensionSettings, after: ExtensionSettings): boolean {
  return RESTART_KEYS.some((key) => JSON.stringify(before[key]) !== JSON.stringify(after[key]));
}

/** The documents the client sends to the server: saved files and untitled buffers of each language. */
export function documentSelector(settings: ExtensionSettings): { scheme: string; language: string }[] {
  return settings.languages.flatMap((language) => [
    { scheme: "file", language },
    { scheme: "untitled", language },
  ]);
}

/** What `codeAssistant.enable` looks like at each level (VS Code's `inspect`). */
export interface EnableInspection {
  defaultValue?: boolean;
  globalValue?: boolean;
  workspaceValue?: boolean;
}

/**
 * How to turn completions off or on: at the level the effective value comes from (a user-level
 * change would not override a workspace's), and by removing the key where the new value is what
 * the level below gives anyway, so that toggling twice leaves settings.json as it was.
 */
export function toggleUpdate(inspection: EnableInspection | undefined, current: boolean):
{ target: "workspace" | "global"; value: boolean | undefined } {
  const wanted = !current;
  if (inspection?.workspaceValue !== undefined) {
    const below = inspection.globalValue ?? inspection.defaultValue ?? true;
    return { target: "workspace", value: wanted === below ? undefined : wanted };
  }
  const below = inspection?.defaultValue ?? true;
  return { target: "global", value: wanted === below ? undefined : wanted };
}
