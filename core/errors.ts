/**
 * Errors the user is meant to read. An expected failure (bad input, a missing binary, a daemon that is not
 * running) is a `NeonError`: the CLI prints its message on one line and exits non-zero. Anything else is a bug
 * and is printed with its stack.
 */
export class NeonError extends Error {
  /** A stable, machine-readable code, also used as the `code` of REST error bodies. */
  readonly code: string;
  /** HTTP status the REST API answers with when this error reaches it. */
  readonly status: number;

  constructor(code: string, message: string, options: { status?: number; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = 'NeonError';
    this.code = code;
    this.status = options.status ?? 400;
  }
}

/**
 * An error raised inside a plugin, stamped with the plugin's name and the hook it ran in, so that the user
 * knows whom to blame. An expected error stays expected (one line), an unexpected one keeps its stack.
 */
export class PluginError extends NeonError {
  readonly plugin: string;
  readonly hook: string | undefined;
  readonly expected: boolean;

  private constructor(plugin: string, hook: string | undefined, cause: unknown) {
    const inner = cause instanceof Error ? cause.message : String(cause);
    const where = hook ? `[plugin ${plugin}, hook ${hook}]` : `[plugin ${plugin}]`;
    super(cause instanceof NeonError ? cause.code : 'plugin_error', `${where} ${inner}`, {
      cause,
      status: cause instanceof NeonError ? cause.status : 500,
    });
    this.name = 'PluginError';
    this.plugin = plugin;
    this.hook = hook;
    this.expected = cause instanceof NeonError && !(cause instanceof PluginError && !cause.expected);
    if (cause instanceof Error && cause.stack) this.stack = `${this.name}: ${this.message}\n${cause.stack}`;
  }

  /** Stamp `error` with the plugin's name, unless a plugin already stamped it. */
  static wrap(plugin: string, hook: string | undefined, error: unknown): PluginError {
    return error instanceof PluginError ? error : new PluginError(plugin, hook, error);
  }
}

/**
 * No plugin claimed a URL scheme, format or component kind (after webpack's `UnhandledSchemeError`): the
 * message names what was asked for and the plugin that would handle it.
 */
export class UnhandledSchemeError extends NeonError {
  constructor(what: 'storage' | 'format' | 'launcher', key: string, request: string, suggestion?: string) {
    const noun = { storage: 'URL scheme', format: 'snapshot format', launcher: 'component kind' }[what];
    const shown = what === 'storage' ? `${key}://` : key;
    const hint = suggestion
      ? `add ${suggestion} to \`plugins\` in neon.config.ts`
      : `add a plugin that handles it to \`plugins\` in neon.config.ts`;
    super('unhandled_' + what, `no plugin handles the ${noun} "${shown}" (${request}): ${hint}`);
    this.name = 'UnhandledSchemeError';
  }
}

/** True when `error` should be shown as one line without a stack. */
export function isExpected(error: unknown): boolean {
  if (error instanceof PluginError) return error.expected;
  return error instanceof NeonError;
}

/** The message of anything thrown. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
