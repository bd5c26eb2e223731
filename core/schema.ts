import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { ValueErrorType, type ValueError } from '@sinclair/typebox/errors';
import { NeonError } from './errors.js';

/**
 * REST input schemas. They are JSON Schema objects (TypeBox builds them and derives the TypeScript types from the
 * same declaration), so the REST reference can publish them as OpenAPI as they are. Every schema's
 * `description` says what a valid value is: it is the second half of the one-line error a client gets.
 */
export { Type, type Static, type TSchema };

/**
 * The one rule for every name a client gives (computes, branches, snapshots, safekeepers): 1-63 letters, digits,
 * `.`, `_`, `-`, starting with a letter or digit, no `..`. No name can be a path, and `__proto__` is refused;
 * `constructor` or `toString` are fine names, which is why every lookup by name is an own-property or Map lookup.
 */
export const NAME_PATTERN = '^(?!.*\\.\\.)[A-Za-z0-9][A-Za-z0-9._-]{0,62}$';

/** A name following {@link NAME_PATTERN}. */
export function Name(what: string) {
  return Type.String({
    pattern: NAME_PATTERN,
    maxLength: 63,
    description: `a ${what} name: 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit`,
  });
}

/** A point of history as a user writes it: a snapshot name, an LSN or a time (printable, at most 100 characters). */
export const Target = Type.String({
  pattern: '^[\\x20-\\x7e]{1,100}$',
  description: 'a snapshot name, an LSN (like 0/16B3748) or a time (like 2026-11-21T10:00:00Z)',
});

/** One of a few words, with a description that lists them. */
export function OneOf<T extends string>(words: readonly T[]) {
  return Type.Union(
    words.map((word) => Type.Literal(word)),
    { description: `one of ${words.join(', ')}` },
  );
}

/** An object that refuses fields it does not know (a typo is an error, not a silent default). */
export function Strict<P extends Parameters<typeof Type.Object>[0]>(properties: P, description?: string) {
  return Type.Object(properties, { additionalProperties: false, ...(description ? { description } : {}) });
}

/** A compiled schema: `check` returns the value typed, or throws a 400 naming the first thing wrong. */
export class Validator<T extends TSchema> {
  private readonly compiled: TypeCheck<T>;

  constructor(
    readonly schema: T,
    /** What is checked, for the message: "request body", "path". */
    private readonly where: string,
    private readonly code = 'bad_request',
  ) {
    this.compiled = TypeCompiler.Compile(schema);
  }

  check(value: unknown): Static<T> {
    if (this.compiled.Check(value)) return value;
    const first = this.compiled.Errors(value).First();
    throw new NeonError(this.code, `invalid ${this.where}: ${first ? explain(first) : 'does not match its schema'}`, { status: 400 });
  }
}

/** One line for a schema error: the field, what it must be (the schema's description), what it was. */
function explain(error: ValueError): string {
  const field = error.path.split('/').filter(Boolean).map(unescapePointer).join('.');
  if (error.type === ValueErrorType.ObjectAdditionalProperties) return `unknown field "${field}"`;
  const what = error.schema.description ?? error.message.replace(/^Expected /, '');
  const label = field ? `"${field}"` : 'the value';
  if (error.type === ValueErrorType.ObjectRequiredProperty) return `${label} is required: ${what}`;
  return `${label} must be ${what} (got ${show(error.value)})`;
}

function unescapePointer(part: string): string {
  return part.replace(/~1/g, '/').replace(/~0/g, '~');
}

function show(value: unknown): string {
  const text = typeof value === 'number' ? String(value) : (JSON.stringify(value) ?? String(value));
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}
