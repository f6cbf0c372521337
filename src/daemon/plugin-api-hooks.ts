/**
 * Module resolution hooks (node:module register): every import of
 * `vmdevd/plugin-api` in the daemon's process, a plugin's included, resolves
 * to the daemon's own copy, as VS Code gives each extension its `vscode`.
 * A plugin directory needs nothing of vmdevd installed, and every plugin
 * shares the daemon's inversify and BackendError.
 *
 * These hooks run on Node's loader thread: this module imports nothing.
 */
interface HookData {
  readonly pluginApiUrl: string;
}

interface ResolveContext {
  readonly parentURL?: string | undefined;
}

type NextResolve = (specifier: string, context: ResolveContext) => Promise<{ url: string }>;

let pluginApiUrl: string | undefined;

export function initialize(data: HookData): void {
  pluginApiUrl = data.pluginApiUrl;
}

export async function resolve(
  specifier: string,
  context: ResolveContext,
  next: NextResolve,
): Promise<{ url: string; shortCircuit?: boolean }> {
  if (specifier === 'vmdevd/plugin-api' && pluginApiUrl !== undefined) {
    return { url: pluginApiUrl, shortCircuit: true };
  }
  return next(specifier, context);
}
