// The server's `codeAssistant.stats` answer, as a line for the user. No `vscode` import.

export interface ServerStats {
  shown: Partial<Record<string, number>>;
  accepted: Partial<Record<string, number>>;
  /** Suggestions the user took part of (next word, next line); absent from older servers. */
  partlyAccepted?: Partial<Record<string, number>>;
}

function isCounts(value: unknown): value is Partial<Record<string, number>> {
  return typeof value === "object" && value !== null
    && Object.values(value).every((count) => typeof count === "number");
}

export function isServerStats(value: unknown): value is ServerStats {
  if (typeof value !== "object" || value === null) return false;
  const { shown, accepted, partlyAccepted } = value as { shown?: unknown; accepted?: unknown; partlyAccepted?: unknown };
  return isCounts(shown) && isCounts(accepted) && (partlyAccepted === undefined || isCounts(partlyAccepted));
}

/** "python: 12 shown, 4 accepted (33%), 2 partly; go: 1 shown, 0 accepted (0%)", languages by most
 * shown; "partly" only where the user took part of a suggestion. */
export function formatStats(stats: ServerStats): string {
  const languages = [...new Set([...Object.keys(stats.shown), ...Object.keys(stats.accepted)])];
  if (languages.length === 0) return "no suggestions shown yet";
  const rows = languages.map((language) => {
    const shown = stats.shown[language] ?? 0;
    const accepted = stats.accepted[language] ?? 0;
    const partly = stats.partlyAccepted?.[language] ?? 0;
    return { language, shown, accepted, partly };
  }).sort((a, b) => b.shown - a.shown || a.language.localeCompare(b.language));
  return rows.map(({ language, shown, accepted, partly }) => {
    const rate = shown > 0 ? ` (${Math.round((100 * accepted) / shown)}%)` : "";
    return `${language}: ${shown} shown, ${accepted} accepted${rate}${partly > 0 ? `, ${partly} partly` : ""}`;
  }).join("; ");
}
