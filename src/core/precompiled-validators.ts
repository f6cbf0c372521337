/**
 * JSON Schema validators generated ahead of time (Ajv's standalone code),
 * so that a start compiles no schema: compiling the config schema took
 * about 30 ms of it. Keyed by the schema's JSON; a schema that is not here
 * exactly as it was generated is compiled at run time, as before.
 *
 * This source holds none. `npm run build` replaces its compiled output,
 * dist/src/core/precompiled-validators.js, with the generated code
 * (scripts/precompile-validators.mjs); after a `tsc -b` alone, every schema
 * is compiled at run time, which checks the same, only later.
 */
import type { ValidateFunction } from 'ajv';

export const PRECOMPILED_VALIDATORS: ReadonlyMap<string, ValidateFunction> = new Map();
