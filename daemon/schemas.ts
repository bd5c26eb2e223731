import { Name, OneOf, Strict, Target, Type } from '../core/schema.js';

/**
 * The input of every REST route, as JSON Schema (TypeBox). Routes whose path parameters are all names need no
 * `params` schema (that is RestServer's default); bodies are strict objects: an unknown field is a 400.
 */

/** WAL file names a client may ask for: segments and timeline history files, nothing that could be a path. */
export const WAL_FILE = '^[0-9A-F]{24}$|^[0-9A-F]{8}\\.history$';

/** An empty body (or none): routes that take no input refuse fields rather than ignore them. */
export const NoBody = Strict({}, 'no fields');

/** The seed spells a replica `"is_replica": "replica"`; `true` means the same. */
const IsReplica = Type.Union([Type.Boolean(), Type.Literal('replica')], { description: 'true, false or "replica"' });

/** `is_replica` as a yes or no, whichever way it was spelled. */
export const isReplica = (value: unknown): boolean => value === true || value === 'replica';

/** `POST /pgs/:name/actions`. */
export const PgAction = Strict({
  action: OneOf(['start', 'stop', 'promote'] as const),
  is_replica: Type.Optional(IsReplica),
});

/** `POST /safekeepers/:name/actions`. */
export const SafekeeperAction = Strict({ action: OneOf(['start', 'stop'] as const) });

/** `GET /wal/:branch/:file`. */
export const WalParams = Type.Object({
  branch: Name('branch'),
  file: Type.String({ pattern: WAL_FILE, description: 'a WAL segment or timeline history file name' }),
});

/** `POST /snapshots`. */
export const CreateSnapshot = Strict({ name: Type.Optional(Name('snapshot')) });

/** `POST /branches`. */
export const CreateBranch = Strict({
  name: Name('branch'),
  parent: Type.Optional(Name('branch')),
  at: Type.Optional(Target),
});

/** `POST /images`. */
export const TakeImage = Strict({ compute: Type.Optional(Name('compute')) });

/** `POST /checkout`. */
export const Checkout = Strict({
  target: Target,
  /** true: answer 202 with an operation at once (GET /operations/:id shows its steps and bytes), as the CLI does. */
  background: Type.Optional(Type.Boolean({ description: 'true or false' })),
});

/** `PUT /pgs` (the seed's `{ name, storage_name }`, plus branch, point and kind). */
export const CreatePg = Strict({
  name: Name('compute'),
  storage_name: Type.Optional(Name('storage')),
  branch: Type.Optional(Name('branch')),
  at: Type.Optional(Target),
  read_only: Type.Optional(Type.Boolean({ description: 'true or false' })),
  is_replica: Type.Optional(IsReplica),
});

/** `POST /verify`. */
export const Verify = Strict({
  snapshots: Type.Optional(Type.Array(Name('snapshot'), { minItems: 1, maxItems: 10_000, description: 'a list of one or more snapshot names' })),
});

/** `POST /gc`: at most a hundred years of WAL kept. */
export const Gc = Strict({
  keep_wal_days: Type.Optional(Type.Number({ minimum: 0, maximum: 36_500, description: 'a number of days from 0 to 36500' })),
});
